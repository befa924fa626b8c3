//! The database worker's keeping of watched migrations, after each sample: the sample is
//! recorded with every watch it belongs to, each look that falls due is judged and
//! recorded with its evidence, and the watch moves on (complete, held, its rollback run
//! forward as new phases of the migration, the recovery watched in turn). Every step in a
//! transaction of its own; a restart resumes from what was recorded.

use super::gate::{self, Look, Point};
use super::sample::{self, Sample};
use crate::migration::status::{LookVerdict, OnRegression, Status, WatchState};
use crate::pg::{process, simple_query};
use pgrx::datum::DatumWithOid;

/// A watch as the worker reads it.
#[derive(Debug, Clone)]
struct Open {
    version: String,
    state: WatchState,
    on_regression: OnRegression,
    watch_s: f64,
    /// Seconds since the migration took effect (since its rollback did, when recovering).
    elapsed_s: Option<f64>,
    baseline: Vec<Sample>,
    looks: usize,
    /// Where its looks fall, as fractions of the watch (migrate.watch_looks when applied).
    look_at: Vec<f64>,
    failing: u32,
    status: Status,
    rollback_script: Option<String>,
    rollback_phase: Option<i32>,
    /// The submitter's standard_conforming_strings: the rollback splits as it did when it
    /// was applied.
    standard_strings: Option<String>,
    /// The rollback ran to its end once (its recovery began): a later failure is the
    /// recovery's, not the rollback's.
    recovery_began: bool,
}

impl Open {
    fn stage(&self) -> &'static str {
        match self.state {
            WatchState::Recovering => "recovery",
            _ => "watch",
        }
    }

    /// A rollback may run: declared, and the migration destroyed no data (a dropped table
    /// or column is not brought back by re-creating it). Read before the rollback adds drops
    /// of its own.
    fn may_roll_back(&self) -> bool {
        self.rollback_script.is_some() && !destroys_data(&dropped_kinds(&self.version))
    }
}

/// The kinds of object (as the DDL log names them) whose drop destroys data: re-creating
/// them brings back their shape, not their rows.
const HOLD_DATA: [&str; 4] = ["table", "table column", "sequence", "materialized view"];

/// Whether a migration dropped something that held data, by the kinds of the objects its
/// statements dropped (the DDL log's `sql_drop` rows). A rename is no drop.
pub fn destroys_data(dropped: &[String]) -> bool {
    dropped
        .iter()
        .any(|kind| HOLD_DATA.contains(&kind.as_str()))
}

/// The kinds of object migration `version` dropped.
pub fn dropped_kinds(version: &str) -> Vec<String> {
    crate::pg::spi::pinned_column(
        // From the migration's start on, by the log's index on logged_at: not a scan of the
        // whole log (every DDL since the install) under the applier lock.
        "SELECT DISTINCT d.object_type FROM migrate.ddl_log d \
         WHERE d.logged_at >= (SELECT h.started_at FROM migrate.history h WHERE h.version = $1) \
           AND d.migration_version = $1 AND d.event = 'sql_drop' AND d.object_type IS NOT NULL",
        &[version.into()],
    )
    .unwrap_or_default()
}

/// Keeps every open watch of this database, once a sample was taken.
pub fn keep(sample: &Sample) {
    let open = match transaction(open_versions) {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            simple_query::log(&format!("could not read the watches: {e}"));
            return;
        }
        Err(e) => {
            // A database whose pg_migrate predates watches has nothing to keep.
            if e.code != pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE {
                simple_query::log(&format!("could not read the watches: {}", e.message));
            }
            return;
        }
    };
    for (version, state) in open {
        if let Err(e) = transaction(|| keep_one(&version, state, sample)) {
            simple_query::log(&format!(
                "could not keep the watch of migration {version}: {}",
                e.message
            ));
        }
    }
}

/// The open watches' versions and states: each is read in full (its baseline) once, by
/// `keep_one`.
fn open_versions() -> Result<Vec<(String, WatchState)>, pgrx::spi::Error> {
    crate::pg::spi::pinned_rows(
        "SELECT w.version, w.state FROM migrate.watch_records w \
         JOIN migrate.history h USING (version) \
         WHERE w.state IN ('waiting', 'watching', 'rolling back', 'recovering') \
            OR (w.state IN ('rollback failed', 'held') AND w.rollback_phase IS NOT NULL \
                AND w.recovery_started_at IS NULL \
                AND h.status IN ('pending', 'running', 'applied')) \
         ORDER BY h.version_key",
        &[],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                WatchState::from_column(r.get(2)?)?,
            ))
        },
    )
}

/// Whether any watch is open here: the worker stays while one is.
pub fn any_open() -> bool {
    transaction(|| {
        crate::pg::spi::pinned_row(
            // Held is open (a decision is due); a watch still waiting for a migration that
            // failed is not, until it is retried.
            "SELECT EXISTS (SELECT FROM migrate.watch_records w JOIN migrate.history h \
                            USING (version) \
             WHERE w.state IN ('watching', 'held', 'rolling back', 'recovering') \
                OR (w.state = 'waiting' AND h.status IN ('pending', 'running', 'applied')))",
            &[],
            |r| r.get::<bool>(1),
        )
        .ok()
        .flatten()
        .flatten()
        .unwrap_or(false)
    })
    .unwrap_or(false)
}

/// A transaction of the worker's, its statements left out of pg_stat_statements.
fn transaction<T>(f: impl FnOnce() -> T) -> Result<T, crate::pg::subxact::Caught> {
    simple_query::transaction(|| {
        super::sampler::untracked();
        f()
    })
}

/// The watch of `version`, whatever its state.
fn read_watch(version: &str) -> Result<Option<Open>, pgrx::spi::Error> {
    crate::pg::spi::pinned_rows(
        "SELECT w.version, w.state, w.on_regression, \
                extract(epoch FROM w.watch)::float8, \
                extract(epoch FROM clock_timestamp() - CASE WHEN w.state = 'recovering' \
                    THEN w.recovery_started_at ELSE w.started_at END)::float8, \
                w.baseline::text, w.looks, w.failing_looks, h.status, h.rollback_script, \
                w.rollback_phase, h.settings ->> 'standard_conforming_strings', \
                w.recovery_started_at IS NOT NULL, w.look_at \
         FROM migrate.watch_records w JOIN migrate.history h USING (version) \
         WHERE w.version = $1",
        &[version.into()],
        |r| {
            let baseline: String = r.get(6)?.unwrap_or_default();
            Ok(Open {
                version: r.get(1)?.unwrap_or_default(),
                state: WatchState::from_column(r.get(2)?)?,
                on_regression: OnRegression::from_column(r.get(3)?)?,
                watch_s: r.get(4)?.unwrap_or(0.0),
                elapsed_s: r.get(5)?,
                baseline: serde_json::from_str(&baseline).unwrap_or_default(),
                looks: r.get::<i32>(7)?.unwrap_or(0).max(0) as usize,
                failing: r.get::<i32>(8)?.unwrap_or(0).max(0) as u32,
                status: Status::from_column(r.get(9)?)?,
                rollback_script: r.get(10)?,
                rollback_phase: r.get(11)?,
                standard_strings: r.get(12)?,
                recovery_began: r.get(13)?.unwrap_or(false),
                look_at: r
                    .get::<Vec<f64>>(14)?
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(crate::gucs::default_looks),
            })
        },
    )
    .map(|mut rows| rows.pop())
}

/// Keeps one watch, in a transaction of its own. Its sample is recorded whatever happens;
/// its looks and changes of state only under the applier lock (tried; taken by an applier,
/// they wait for the next sample), and only if its state is still the one read: a decision
/// (accept, reject, cancel) committed meanwhile stands.
fn keep_one(version: &str, read: WatchState, sample: &Sample) {
    let locked = crate::history::lock::try_lock_history();
    let watch = match read_watch(version) {
        Ok(Some(watch)) => watch,
        Ok(None) => return,
        Err(e) => {
            simple_query::log(&format!(
                "could not read the watch of migration {version}: {e}"
            ));
            return;
        }
    };
    if matches!(watch.state, WatchState::Watching | WatchState::Recovering) {
        record_sample(&watch, sample);
    }
    if !locked || watch.state != read {
        return;
    }
    let watch = &watch;
    match watch.state {
        WatchState::Waiting => match watch.status {
            Status::Applied => {
                change_state(watch, WatchState::Watching, "the migration took effect");
                write(
                    "UPDATE migrate.watch_records SET started_at = clock_timestamp(), \
                       checksum_failures_at_start = $2, objects_at_start = $3::jsonb \
                     WHERE version = $1",
                    &[
                        watch.version.as_str().into(),
                        checksum_failures().into(),
                        described_now(&watch.version).into(),
                    ],
                );
            }
            // A failed migration may be retried: its watch waits for it.
            Status::Cancelled => change_state(
                watch,
                WatchState::Rejected,
                "the migration was cancelled before it took effect",
            ),
            _ => {}
        },
        WatchState::Watching | WatchState::Recovering => look_if_due(watch),
        // Its failed phase was retried (migrate.retry) and ran: the recovery is watched as
        // if it had run the first time. A retry cancelled leaves it failed, as it was.
        // Or a rollback stopped part way (held) and then retried.
        WatchState::RollbackFailed | WatchState::Held
            if watch.rollback_phase.is_some()
                && !watch.recovery_began
                && watch.status == Status::Applied =>
        {
            begin_recovery(watch, "the rollback ran when retried; watching the recovery")
        }
        WatchState::RollingBack => match (watch.rollback_phase, watch.status) {
            (None, _) => start_rollback(watch),
            (Some(_), Status::Applied) => {
                begin_recovery(watch, "the rollback ran; watching the recovery")
            }
            (Some(_), Status::Failed) => change_state(
                watch,
                WatchState::RollbackFailed,
                "the rollback failed: see migrate.steps",
            ),
            // Someone stopped it: the change stays under the gate, for a decision.
            (Some(_), Status::Cancelled) => change_state(
                watch,
                WatchState::Held,
                "the rollback was cancelled: settle the watch with migrate.accept or migrate.reject",
            ),
            _ => {}
        },
        _ => {}
    }
}

fn begin_recovery(watch: &Open, why: &str) {
    change_state(watch, WatchState::Recovering, why);
    // The rollback changed what the migration changed: the recovery's looks compare with
    // what it left.
    write(
        "UPDATE migrate.watch_records SET recovery_started_at = clock_timestamp(), \
           looks = 0, failing_looks = 0, objects_at_start = $2::jsonb WHERE version = $1",
        &[
            watch.version.as_str().into(),
            described_now(&watch.version).into(),
        ],
    );
}

/// Data checksum failures counted in this database since the statistics were reset; None
/// when data checksums are off.
fn checksum_failures() -> Option<i64> {
    crate::pg::spi::pinned_row(
        "SELECT checksum_failures FROM pg_catalog.pg_stat_database WHERE datid = $1",
        &[process::database().into()],
        |r| r.get::<i64>(1),
    )
    .ok()
    .flatten()
    .flatten()
}

/// Commands the DDL log records that leave an object as it was: no drift.
const MAINTENANCE: &str = "'REINDEX', 'REFRESH MATERIALIZED VIEW', 'COMMENT', 'SECURITY LABEL'";

/// Which of the DDL log's object types each kind of a description (a migration's
/// `changes`) covers: an object's own DDL is counted by its kind, so a collation or a text
/// search configuration bearing a table's name is not that table.
const KIND_TYPES: &str = "(VALUES ('tables', 'table'), ('tables', 'foreign table'), \
     ('indexes', 'index'), ('sequences', 'sequence'), ('views', 'view'), \
     ('materialized_views', 'materialized view'), ('constraints', 'table constraint'), \
     ('constraints', 'domain constraint'), ('functions', 'function'), \
     ('functions', 'procedure'), ('functions', 'aggregate'), ('types', 'type'), \
     ('types', 'domain'), ('triggers', 'trigger'), ('policies', 'policy'), \
     ('schemas', 'schema'), ('extensions', 'extension')) AS k(kind, object_type)";

/// The DDL log's object types of what a table holds: DDL on them names the table.
const TABLE_TYPES: &str = "'table', 'foreign table', 'view', 'materialized view'";

/// What a look reads beside the samples (see `gate::with_context`).
fn context(watch: &Open) -> gate::Context {
    let since_start = crate::pg::spi::pinned_row(
        "SELECT checksum_failures_at_start FROM migrate.watch_records WHERE version = $1",
        &[watch.version.as_str().into()],
        |r| r.get::<i64>(1),
    )
    .ok()
    .flatten()
    .flatten();
    let checksum_failures =
        checksum_failures().map(|now| now - since_start.unwrap_or(now).min(now));
    if let Some(n) = checksum_failures.filter(|n| *n > 0) {
        crate::errors::Problem::new(
            pgrx::PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "{n} data checksum failures in this database since migration {} took effect",
                watch.version
            ),
            "A page read from disk did not match its checksum: a fault of the disk, the \
             kernel or memory, which no rollback of a schema change mends; the watch goes on.",
            "See pg_stat_database.checksum_failures and checksum_last_failure and the server \
             log for the relation; restore the damaged pages from a backup or a standby.",
        )
        .report(pgrx::PgLogLevel::WARNING);
    }
    // The migration's indexes (not unique ones, which enforce a rule unscanned) and objects,
    // from the changes recorded with it.
    let indexes = crate::pg::spi::pinned_row(
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE s.idx_scan = 0), \
                coalesce(sum(s.idx_scan), 0)::int8 \
         FROM {CHANGES} \
         JOIN pg_catalog.pg_stat_all_indexes s \
           ON s.indexrelid = pg_catalog.to_regclass(CASE WHEN c ->> 'kind' = 'indexes' \
                                                      THEN c ->> 'object' END) \
         JOIN pg_catalog.pg_index i ON i.indexrelid = s.indexrelid AND NOT i.indisunique \
         WHERE h.version = $1 AND c ->> 'kind' = 'indexes' AND c ->> 'change' = 'added' \
           AND c ->> 'attribute' IS NULL"
        ),
        &[watch.version.as_str().into()],
        |r| {
            Ok(gate::IndexUse {
                created: r.get::<i64>(1)?.unwrap_or(0),
                unused: r.get::<i64>(2)?.unwrap_or(0),
                scans: r.get::<i64>(3)?.unwrap_or(0),
            })
        },
    )
    .ok()
    .flatten();
    let drift = crate::pg::spi::pinned_column(
        // From the watch's start on, by the log's index on logged_at.
        &format!(
            "WITH mine AS ( \
             SELECT k.object_type, c ->> 'object' AS identity FROM {CHANGES} \
             JOIN {KIND_TYPES} ON k.kind = c ->> 'kind' WHERE h.version = $1 \
             UNION \
             SELECT t.object_type, c ->> 'relation' FROM {CHANGES}, \
                    unnest(ARRAY[{TABLE_TYPES}]) t(object_type) WHERE h.version = $1) \
         SELECT DISTINCT d.command_tag || ' ' || d.object_identity FROM migrate.ddl_log d \
         WHERE d.logged_at >= (SELECT w.started_at FROM migrate.watch_records w \
                               WHERE w.version = $1) \
           AND d.migration_version IS DISTINCT FROM $1 \
           AND d.event IN ('ddl_command_end', 'sql_drop') \
           AND d.command_tag NOT IN ({MAINTENANCE}) \
           AND (d.object_type, d.object_identity) IN (SELECT m.object_type, m.identity \
                                                      FROM mine m) \
         ORDER BY 1 LIMIT 5"
        ),
        &[watch.version.as_str().into()],
    )
    .unwrap_or_default();
    let mut drift: Vec<String> = drift;
    let unlogged: Vec<String> = unlogged_drift(&watch.version)
        .into_iter()
        .filter(|(identity, _)| {
            !drift
                .iter()
                .any(|logged| logged.ends_with(&format!(" {identity}")))
        })
        .map(|(_, change)| change)
        .take(5)
        .collect();
    drift.extend(unlogged);
    let disconnected = crate::pg::spi::pinned_row(
        &format!(
            "SELECT max(l.lag)::float8 FROM ({}) l",
            crate::pg::catalog::DISCONNECTED_SLOT_LAGS
        ),
        &[],
        |r| r.get::<f64>(1),
    )
    .ok()
    .flatten()
    .flatten();
    gate::Context {
        checksum_failures,
        indexes,
        drift,
        disconnected_slot_bytes: disconnected,
    }
}

/// The most objects of a migration a look describes again: a migration that renamed a schema
/// changed thousands, and a look runs under the applier lock.
const MAX_DESCRIBED: i64 = 1_000;

/// The objects migration `version` changed, and their tables, described now as (key, hash):
/// "kind identity" and the MD5 of the description without its privileges (a GRANT changes
/// nothing the gate judges, and the worker grants on windows' views on its own). Relations
/// are found by their identity, not an OID: `REINDEX CONCURRENTLY` gives an index a new one
/// and changes nothing else; the others by the OIDs the recorded schema has for them. NULL
/// when there are more than [`MAX_DESCRIBED`].
fn described_now_sql() -> String {
    const RELATIONS: &str = "'tables', 'views', 'materialized_views', 'sequences'";
    format!(
        "WITH mine AS ( \
             SELECT DISTINCT o.kind, \
                    CASE WHEN o.kind IN ({RELATIONS}, 'indexes') \
                         THEN pg_catalog.to_regclass(o.identity)::oid \
                         ELSE o.obj_oid END AS oid \
             FROM migrate.schema_objects o \
             JOIN (SELECT c ->> 'kind' AS kind, c ->> 'object' AS identity \
                   FROM {CHANGES} WHERE h.version = $1 \
                   UNION \
                   SELECT k.kind, c ->> 'relation' FROM {CHANGES}, \
                          unnest(ARRAY[{RELATIONS}]) k(kind) WHERE h.version = $1) m \
               ON o.kind = m.kind AND o.identity = m.identity), \
         wanted AS (SELECT * FROM mine WHERE (SELECT count(*) FROM mine) <= {MAX_DESCRIBED}) \
         SELECT CASE WHEN (SELECT count(*) FROM mine) <= {MAX_DESCRIBED} THEN \
                coalesce(pg_catalog.jsonb_object_agg(d.kind || ' ' || d.identity, \
                    pg_catalog.md5(((d.description - 'acl') || CASE \
                        WHEN pg_catalog.jsonb_typeof(d.description -> 'columns') = 'object' \
                        THEN pg_catalog.jsonb_build_object('columns', \
                            (SELECT pg_catalog.jsonb_object_agg(c.key, c.value - 'acl') \
                             FROM pg_catalog.jsonb_each(d.description -> 'columns') c)) \
                        ELSE '{{}}' END)::text)), '{{}}') END \
         FROM migrate.describe_objects(NULL, \
               ARRAY(SELECT oid FROM wanted WHERE kind IN ({RELATIONS}) AND oid IS NOT NULL), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'indexes' AND oid IS NOT NULL), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'constraints'), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'triggers'), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'policies'), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'types'), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'functions'), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'schemas'), \
               ARRAY(SELECT oid FROM wanted WHERE kind = 'extensions')) d"
    )
}

/// What migration `version` changed, described now (see [`described_now_sql`]), as JSON
/// text; None when it could not be read or was not (too many objects).
///
/// Printing a view or a default locks what it names: this waits at most a second for that
/// (less if `migrate.lock_timeout` is less), in a subtransaction rolled back at once, so
/// that the look (which holds the applier lock) neither hangs nor keeps those locks.
fn described_now(version: &str) -> Option<String> {
    let timeout = match crate::gucs::LOCK_TIMEOUT_MS.get() {
        ms if ms > 0 => ms.min(1_000),
        _ => 1_000,
    };
    let timeout = format!("{timeout}ms");
    let found = crate::pg::subxact::rolled_back(|| {
        let _limit = crate::pg::guc::SettingScope::set(&[("lock_timeout", &timeout)]);
        crate::pg::spi::pinned_row(
            &format!("SELECT d::text FROM ({}) x(d)", described_now_sql()),
            &[version.into()],
            |r| r.get::<String>(1),
        )
    });
    let why = match found {
        Ok(Ok(found)) => return found.flatten(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.message,
    };
    simple_query::log(&format!(
        "could not describe what migration {version} changed (drift is read from the DDL log \
         alone at this look): {why}"
    ));
    None
}

/// The objects migration `version` changed, and their tables, that are not as they were when
/// its watch began, as (identity, "identity (kind) changed/gone with no DDL logged"): changes
/// the DDL log cannot show, made with pg_migrate's event triggers disabled or under
/// `session_replication_role = replica` (and those it shows, which the caller leaves out).
fn unlogged_drift(version: &str) -> Vec<(String, String)> {
    let Some(now) = described_now(version) else {
        return Vec::new();
    };
    crate::pg::spi::pinned_pairs::<String, String>(
        "SELECT substr(s.key, position(' ' IN s.key) + 1), \
                substr(s.key, position(' ' IN s.key) + 1) || ' (' || split_part(s.key, ' ', 1) \
                || ') ' || CASE WHEN n.value IS NULL THEN 'gone' ELSE 'changed' END \
                || ' with no DDL logged' \
         FROM migrate.watch_records w, jsonb_each_text(w.objects_at_start) s \
         LEFT JOIN jsonb_each_text($2::jsonb) n ON n.key = s.key \
         WHERE w.version = $1 AND n.value IS DISTINCT FROM s.value \
         ORDER BY 2",
        &[version.into(), now.into()],
    )
    .unwrap_or_default()
}

fn settle_s() -> f64 {
    f64::from(crate::gucs::WATCH_SETTLE_S.get())
}

fn record_sample(watch: &Open, sample: &Sample) {
    // Only what the change can have caused: samples ending after it settled.
    let Some(elapsed) = watch.elapsed_s else {
        return;
    };
    let settled_for = elapsed - settle_s();
    if settled_for < sample.seconds.min(elapsed) || settled_for < 0.0 {
        return;
    }
    // Nor a restart's: caches are cold for a while after the server starts, whatever the
    // change did.
    let began = sample.at - (sample.seconds * 1e6) as i64;
    if began < process::server_started() + (settle_s() * 1e6) as i64 {
        return;
    }
    let reference = sample::reference(&watch.baseline);
    let index = sample::latency_index(sample, &reference);
    let added_ms = sample::worst_added_ms(sample, &reference);
    let (lock_wait_ms, lag_bytes) = gauges(&watch.version);
    write(
        "INSERT INTO migrate.watch_samples (version, stage, taken_at, seconds, latency, \
           coverage, calls, errors, lock_wait_ms, lag_bytes, added_ms) \
         VALUES ($1, $2, '2000-01-01 00:00:00+00'::timestamptz + make_interval(secs => $3), \
                 $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT DO NOTHING",
        &[
            watch.version.as_str().into(),
            watch.stage().into(),
            (sample.at as f64 / 1e6).into(),
            sample.seconds.into(),
            index.map(|i| i.0).into(),
            index.map(|i| i.1).into(),
            sample.statements.then(|| sample.calls()).into(),
            sample
                .errors
                .iter()
                .map(|e| *e as i64)
                .collect::<Vec<i64>>()
                .into(),
            lock_wait_ms.into(),
            lag_bytes.into(),
            added_ms.into(),
        ],
    );
}

/// The changes recorded with migration `$1`, one row each (none when the history holds no
/// list): every query over them starts from here.
const CHANGES: &str = "migrate.history h, \
     jsonb_array_elements(CASE jsonb_typeof(h.changes) WHEN 'array' THEN h.changes \
                          ELSE '[]' END) c";

/// The longest current wait for a lock on a relation migration `version` changed (a table,
/// index, sequence or view, or the table of a constraint, trigger or policy it changed),
/// and the replay lag of the connected replica furthest behind (a disconnected standby's slot
/// is a context alert: its lag grows whatever the change does).
fn gauges(version: &str) -> (f64, f64) {
    crate::pg::spi::pinned_row(
        // to_regclass raises on what is no relation's name (a constraint's identity): it is
        // given only names of relations, whatever order the rows are read in.
        &format!(
            "WITH touched AS ( \
                 SELECT pg_catalog.to_regclass(c ->> 'relation') AS oid FROM {CHANGES} \
                 WHERE h.version = $2 \
                 UNION \
                 SELECT pg_catalog.to_regclass(CASE WHEN c ->> 'kind' IN \
                            ('tables', 'indexes', 'sequences', 'views', 'materialized_views') \
                            THEN c ->> 'object' END) \
                 FROM {CHANGES} WHERE h.version = $2) \
             SELECT coalesce((SELECT max(extract(epoch FROM clock_timestamp() - l.waitstart)) \
                                     * 1000 \
                              FROM pg_locks l \
                              WHERE NOT l.granted AND l.database = $1 \
                                AND l.waitstart IS NOT NULL \
                                AND l.relation IN (SELECT t.oid FROM touched t)), 0)::float8, \
                    coalesce((SELECT max(l.lag) FROM ({lags}) l), 0)::float8",
            lags = crate::pg::catalog::STREAMING_LAGS
        ),
        &[process::database().into(), version.into()],
        |r| {
            Ok((
                r.get::<f64>(1)?.unwrap_or(0.0),
                r.get::<f64>(2)?.unwrap_or(0.0),
            ))
        },
    )
    .ok()
    .flatten()
    .unwrap_or((0.0, 0.0))
}

/// The baseline's samples as points, each with its latency index against the baseline as a
/// whole.
fn baseline_points(baseline: &[Sample]) -> Vec<Point> {
    let reference = sample::reference(baseline);
    baseline
        .iter()
        .map(|s| Point {
            seconds: s.seconds,
            latency: sample::latency_index(s, &reference).map(|i| i.0),
            added_ms: None,
            errors: s.errors,
            lock_wait_ms: 0.0,
            lag_bytes: 0.0,
        })
        .collect()
}

fn recorded_points(watch: &Open) -> Vec<Point> {
    crate::pg::spi::pinned_rows(
        "SELECT seconds, latency, errors, lock_wait_ms, lag_bytes, added_ms \
         FROM migrate.watch_samples \
         WHERE version = $1 AND stage = $2 ORDER BY taken_at",
        &[watch.version.as_str().into(), watch.stage().into()],
        |r| {
            let errors: Vec<Option<i64>> = r.get(3)?.unwrap_or_default();
            Ok(Point {
                seconds: r.get(1)?.unwrap_or(0.0),
                latency: r.get(2)?,
                added_ms: r.get(6)?,
                errors: std::array::from_fn(|i| {
                    errors.get(i).copied().flatten().unwrap_or(0).max(0) as u64
                }),
                lock_wait_ms: r.get(4)?.unwrap_or(0.0),
                lag_bytes: r.get(5)?.unwrap_or(0.0),
            })
        },
    )
    .unwrap_or_default()
}

fn look_if_due(watch: &Open) {
    let Some(elapsed) = watch.elapsed_s else {
        return;
    };
    let due = gate::looks_due(elapsed, watch.watch_s, &watch.look_at);
    if due <= watch.looks {
        return;
    }
    let look = gate::with_context(
        gate::judge(
            &baseline_points(&watch.baseline),
            &recorded_points(watch),
            &super::watch_limits(watch.look_at.len()),
        ),
        &context(watch),
    );
    record_look(watch, due, &look);
    let failing = if look.verdict == LookVerdict::Fail {
        watch.failing + 1
    } else {
        0
    };
    let last = due >= watch.look_at.len();
    let mut after = gate::after_look(watch.state, &look, failing, last, watch.on_regression, true);
    // The DDL log is read only when a rollback would run.
    if after.rollback && !watch.may_roll_back() {
        after = gate::after_look(
            watch.state,
            &look,
            failing,
            last,
            watch.on_regression,
            false,
        );
    }
    write(
        "UPDATE migrate.watch_records SET looks = $2, failing_looks = $3 WHERE version = $1",
        &[
            watch.version.as_str().into(),
            (due as i32).into(),
            (failing as i32).into(),
        ],
    );
    if after.state != watch.state {
        let mut why = why(watch, &look, failing, due);
        if after.state == WatchState::Held
            && look.verdict == LookVerdict::Fail
            && watch.on_regression == OnRegression::Rollback
        {
            why.push_str(if watch.rollback_script.is_none() {
                "; not rolled back: it has no rollback script"
            } else {
                "; not rolled back: it dropped a table, column or sequence, which its rollback \
                 cannot bring back with its rows"
            });
        }
        change_state(watch, after.state, &why);
    }
    if after.rollback {
        start_rollback(watch);
    }
}

/// The evidence of a change of state, in words.
fn why(watch: &Open, look: &Look, failing: u32, due: usize) -> String {
    let failed: Vec<String> = look
        .findings
        .iter()
        .filter(|f| f.verdict == LookVerdict::Fail)
        .map(|f| match (f.signal.as_str(), f.shift) {
            ("latency", Some(ratio)) => format!("latency {ratio:.2}x"),
            (signal, Some(excess)) if f.signal != "lock wait" => {
                format!("{signal}: {excess:.0} errors more than the baseline's rate")
            }
            (signal, _) => signal.to_string(),
        })
        .collect();
    let stage = watch.stage();
    if !look.drift.is_empty() && watch.state == WatchState::Watching {
        return format!(
            "{stage} look {due}: what the migration changed was changed again outside \
             migrations ({}); the workload's signals are no longer its alone, and its rollback \
             was written for the schema it left: settle the watch with migrate.accept or \
             migrate.reject",
            look.drift.join(", ")
        );
    }
    match look.verdict {
        LookVerdict::Pass => format!("{stage} look {due}: every signal within its bounds"),
        LookVerdict::Fail if look.brake => {
            format!(
                "{stage} look {due}: emergency brake ({})",
                failed.join(", ")
            )
        }
        LookVerdict::Fail => format!(
            "{stage} look {due}, failing {failing} looks in a row: {}",
            failed.join(", ")
        ),
        _ => {
            // Which signals could not be shown within bounds, and how far they were, so that
            // the person deciding sees it in the log.
            let open: Vec<String> = look
                .findings
                .iter()
                .filter(|f| matches!(f.verdict, LookVerdict::Inconclusive | LookVerdict::Fail))
                .map(|f| match (f.signal.as_str(), f.shift, f.upper) {
                    ("latency", Some(ratio), Some(upper)) => {
                        format!("latency {ratio:.2}x, up to {upper:.2}x")
                    }
                    ("latency", _, _) => "latency: too few samples".to_string(),
                    (signal, _, _) => signal.to_string(),
                })
                .collect();
            format!(
                "{stage} look {due}, the last: inconclusive ({})",
                if open.is_empty() {
                    "too few samples".to_string()
                } else {
                    open.join(", ")
                }
            )
        }
    }
}

fn record_look(watch: &Open, due: usize, look: &Look) {
    let overall = gate::Finding {
        signal: "look".into(),
        baseline: None,
        now: None,
        shift: None,
        upper: None,
        p_value: None,
        added_ms: None,
        verdict: look.verdict,
    };
    for f in look.findings.iter().chain(std::iter::once(&overall)) {
        write(
            "INSERT INTO migrate.watch_looks (version, stage, look, looked_at, signal, baseline, \
               now, shift, upper, p_value, added_ms, verdict) \
             VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT DO NOTHING",
            &[
                watch.version.as_str().into(),
                watch.stage().into(),
                (due as i32).into(),
                f.signal.as_str().into(),
                f.baseline.into(),
                f.now.into(),
                f.shift.into(),
                f.upper.into(),
                f.p_value.into(),
                f.added_ms.into(),
                f.verdict.as_str().into(),
            ],
        );
    }
}

/// Records a new state, logs it and notifies `migrate_watch` listeners (at commit).
fn change_state(watch: &Open, state: WatchState, why: &str) {
    set_state(&watch.version, state, None, why);
}

/// The one place a watch's state changes: recorded with its reason, logged, and notified.
pub fn set_state(version: &str, state: WatchState, decided_by: Option<&str>, why: &str) {
    write(
        "UPDATE migrate.watch_records SET state = $2, changed_at = clock_timestamp(), \
           reason = $3, decided_by = $4 WHERE version = $1",
        &[
            version.into(),
            state.as_str().into(),
            why.into(),
            decided_by.into(),
        ],
    );
    write(
        "SELECT pg_notify('migrate_watch', $1)",
        // The reason stays with the admins who read the watch: anyone may LISTEN.
        &[
            serde_json::json!({"version": version, "state": state.as_str()})
                .to_string()
                .into(),
        ],
    );
    pgrx::log!("pg_migrate: migration {version} is {state}: {why}");
}

/// Adds the rollback script's phases to the migration and queues it for the worker again,
/// under the applier lock (tried: taken by an applier, it is tried at the next sample).
fn start_rollback(watch: &Open) {
    let Some(script) = watch.rollback_script.as_deref() else {
        return;
    };
    if let Some(value) = &watch.standard_strings {
        crate::pg::guc::set_local("standard_conforming_strings", value);
    }
    let parsed = match crate::migration::parse::parse(script) {
        Ok(parsed) => parsed,
        Err(e) => {
            let problem = e.problem(&format!("the rollback of {}", watch.version), script);
            change_state(watch, WatchState::RollbackFailed, &problem.message);
            return;
        }
    };
    let statements: Vec<_> = parsed.into_iter().map(|(s, _)| s).collect();
    let plan = crate::migration::phases::plan(&statements);
    let first = crate::history::steps::insert_rollback(&watch.version, script, &plan);
    write(
        "UPDATE migrate.watch_records SET rollback_phase = $2 WHERE version = $1",
        &[watch.version.as_str().into(), first.into()],
    );
    crate::pg::shmem::wake_at_commit();
}

fn write(sql: &str, args: &[DatumWithOid]) {
    crate::pg::spi::write_as_owner("migrate.watch_records", sql, args);
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn only_what_held_data_counts_as_destroyed() {
        let kinds = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(destroys_data(&kinds(&["index", "table"])));
        assert!(destroys_data(&kinds(&["table column"])));
        assert!(!destroys_data(&kinds(&[
            "index",
            "table constraint",
            "default value"
        ])));
        assert!(!destroys_data(&[]));
    }
}
