//! `migrate.backfill`: a data change over a whole table, run by the background worker in
//! short batches instead of one long UPDATE. Checked completely when submitted (nothing is
//! queued for input that would fail later), then walked in key order with its progress
//! committed with each batch. `migrate.pause`, `migrate.resume` and `migrate.cancel` steer a
//! job; `migrate.backfill_progress` shows them all.
//!
//! Inside `migrate.apply`, `SELECT migrate.backfill(...)` as a statement of its own is a
//! phase of the migration: the worker submits it when the phases before it are done, and the
//! phases after it run once its final check has found no row left to fill.

mod batch;
pub mod clauses;
pub mod job;
mod throttle;
mod walk;

pub use batch::{turn, Turn};
pub use job::{cancel_with_migration, of_migration};

/// The final check's query: rows the where clause still matches.
pub fn remaining_sql(table: &str, where_clause: &str) -> String {
    Walk::remaining_sql(table, where_clause)
}

use crate::errors::{OrBookkeeping, OrRaise, Problem};
use crate::gucs;
use crate::migration::status::JobState;
use crate::pg::nodes::StmtTree;
use crate::pg::shmem;
use crate::pg::subxact::{self, Caught};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use walk::Walk;

thread_local! {
    /// The migration phase the worker is submitting a backfill for.
    static PHASE: RefCell<Option<(String, i32)>> = const { RefCell::new(None) };
}

/// Runs a migration's backfill phase (`sql`: its `SELECT migrate.backfill(...)`), linking the
/// job it submits to the phase. In the caller's transaction.
pub fn submit_phase(version: &str, phase: i32, sql: &str) {
    struct InPhase;
    impl Drop for InPhase {
        // Also when the statement raises: nothing after it may pass for the phase.
        fn drop(&mut self) {
            PHASE.set(None);
        }
    }
    PHASE.set(Some((version.to_string(), phase)));
    let in_phase = InPhase;
    let id = Spi::get_one::<i64>(sql);
    drop(in_phase);
    let id = id
        .or_bookkeeping("submit a backfill phase")
        .unwrap_or_else(|| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "the backfill phase returned no job",
                "Its statement is SELECT migrate.backfill(...), which returns the job's id.",
                "Cancel the migration and submit it again.",
            )
            .raise()
        });
    job::link_to_phase(id, version, phase);
}

/// A retried migration resumes the backfill it stopped at, from its last committed batch.
pub fn resume_for_retry(id: i64) {
    job::set_state(id, JobState::Running, None);
}

/// Checks, when a migration is applied, the literal clauses of a backfill phase, so that a
/// clause that cannot parse fails the apply rather than the phase, hours later. Clauses
/// passed as expressions, and the table and its columns (which earlier phases may create),
/// are checked when the phase runs.
///
pub fn check_phase(what: &str, line: usize, tree: StmtTree) -> Result<(), Problem> {
    let Some(call) = crate::migration::parse::backfill_call(tree) else {
        return Ok(());
    };
    let checked = match (&call.set_clause, &call.where_clause) {
        (Some(set), _) => clauses::check_set(set).map(|_| ()),
        _ => Ok(()),
    }
    .and_then(|()| {
        call.where_clause
            .as_deref()
            .map_or(Ok(()), clauses::check_where)
    });
    checked.map_err(|p| Problem {
        message: format!("{what}: backfill at line {line}: {}", p.message),
        ..p
    })
}

/// Options of one job, after defaults and checks.
struct Options {
    batch_size: i32,
    min_batch_size: i32,
    max_batch_size: i32,
    batch_time_ms: i64,
    pause_ms: i64,
    max_lag: i64,
}

// The table is a regclass taken as its oid: pgrx's PgRelation would open the relation
// before this function runs, and an oid naming none would fail without a word from us.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = r#"
CREATE FUNCTION migrate.backfill(
    "table" regclass,
    set_clause text,
    where_clause text DEFAULT NULL,
    batch_size integer DEFAULT NULL,
    min_batch_size integer DEFAULT NULL,
    max_batch_size integer DEFAULT NULL,
    batch_time interval DEFAULT NULL,
    pause interval DEFAULT NULL,
    max_replication_lag text DEFAULT NULL
) RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn backfill(
    table: Option<pg_sys::Oid>,
    set_clause: Option<&str>,
    where_clause: Option<&str>,
    batch_size: Option<i32>,
    min_batch_size: Option<i32>,
    max_batch_size: Option<i32>,
    batch_time: Option<Interval>,
    pause: Option<Interval>,
    max_replication_lag: Option<&str>,
) -> i64 {
    crate::pg::identity::require_admin("submit backfills").or_raise();
    let phase = PHASE.with_borrow(|p| p.clone());
    if phase.is_none() && crate::migration::running::running().is_some() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "inside a migration, migrate.backfill must be a statement of its own",
            "As its own statement, SELECT migrate.backfill(...) becomes a phase of the \
             migration, run by the background worker after the phases before it; called \
             from within another statement it would run in the migration's transaction.",
            "Write it as a separate statement: SELECT migrate.backfill('table', 'set ...', 'where ...');",
        )
        .raise();
    }
    if !shmem::available() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "backfills need the background worker, which is not running",
            "pg_migrate's background worker runs the batches; it exists only when pg_migrate \
             is in shared_preload_libraries.",
            "Add pg_migrate to shared_preload_libraries in postgresql.conf and restart the server.",
        )
        .raise();
    }
    let Some(table) = table else {
        null_argument("table", "the table to fill, e.g. 'public.orders'")
    };
    let Some(set_clause) = set_clause else {
        null_argument("set_clause", "what to set, e.g. 'total = price * quantity'")
    };
    let assigned = clauses::check_set(set_clause).or_raise();
    if let Some(w) = where_clause {
        clauses::check_where(w).or_raise();
    }
    let options = options(
        batch_size,
        min_batch_size,
        max_batch_size,
        batch_time,
        pause,
        max_replication_lag,
    )
    .or_raise();
    let target = target_table(table).or_raise();
    let walk = key_of(&target, where_clause.is_some(), &assigned).or_raise();
    prepare_batches(&walk, &target.name, set_clause, where_clause).or_raise();
    warn_policies(&target);

    let id = insert(&target, set_clause, where_clause, &walk, &options);
    shmem::wake_at_commit();
    if phase.is_none() {
        crate::errors::notice(format!(
            "backfill {id} of {} runs in the background worker once this transaction commits; \
             follow it in migrate.backfill_progress",
            target.name
        ));
    }
    id
}

/// A backfill's batches and its final check run as the submitter: row-level security
/// policies that apply to the submitter leave the rows they hide as they are, and the job
/// reports done. Said at once.
fn warn_policies(target: &Target) {
    let applies = crate::pg::spi::pinned_row(
        "SELECT relrowsecurity AND row_security_active(oid) FROM pg_class WHERE oid = $1",
        &[target.oid.into()],
        |r| r.get::<bool>(1),
    )
    .or_bookkeeping("read the table's row-level security")
    .flatten()
    .unwrap_or(false);
    if applies {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "the backfill of {} fills only the rows its row-level security policies let \
                 you see",
                target.name
            ),
            "Its batches and its final check run as you, with your policies.",
            "Submit it as the table's owner (without FORCE ROW LEVEL SECURITY) or a role with \
             BYPASSRLS; with row_security = off, a batch that a policy would filter fails \
             instead.",
        )
        .report(pgrx::PgLogLevel::WARNING);
    }
}

pub(crate) fn null_argument(name: &str, what: &str) -> ! {
    Problem::new(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{name} must not be NULL"),
        format!("migrate.backfill needs {what}."),
        "SELECT migrate.backfill('orders', 'total = price * quantity', 'total IS NULL');",
    )
    .raise()
}

fn options(
    batch_size: Option<i32>,
    min_batch_size: Option<i32>,
    max_batch_size: Option<i32>,
    batch_time: Option<Interval>,
    pause: Option<Interval>,
    max_replication_lag: Option<&str>,
) -> Result<Options, Problem> {
    for (name, value) in [
        ("batch_size", batch_size),
        ("min_batch_size", min_batch_size),
        ("max_batch_size", max_batch_size),
    ] {
        if let Some(v) = value.filter(|v| *v <= 0) {
            return Err(invalid(
                format!("{name} must be positive, not {v}"),
                "A batch is a number of rows.",
                format!("Pass {name} => 1000, or leave it out for migrate.backfill_{name}."),
            ));
        }
    }
    let initial = batch_size.unwrap_or_else(|| gucs::BACKFILL_BATCH_SIZE.get());
    // A batch size given alone widens the configured bounds to include it.
    let min = min_batch_size.unwrap_or_else(|| gucs::BACKFILL_MIN_BATCH_SIZE.get().min(initial));
    let max = max_batch_size.unwrap_or_else(|| gucs::BACKFILL_MAX_BATCH_SIZE.get().max(initial));
    let initial = match batch_size {
        Some(size) => size,
        None => initial.clamp(min, max.max(min)),
    };
    if !(min <= initial && initial <= max) {
        return Err(invalid(
            format!("batch sizes must satisfy min_batch_size <= batch_size <= max_batch_size, not {min} <= {initial} <= {max}"),
            "The batch size adapts between its bounds, starting from batch_size.",
            "Pass consistent values, or leave them out for the migrate.backfill_* settings.",
        ));
    }
    let millis = |i: &Interval| i.as_micros() / 1000;
    let batch_time_ms = batch_time
        .as_ref()
        .map_or(gucs::BACKFILL_BATCH_TIME_MS.get() as i128, millis);
    if batch_time_ms <= 0 {
        return Err(invalid(
            "batch_time must be positive",
            "It is the duration each batch aims for; the batch size adapts to hold it.",
            "Pass batch_time => '200 ms'.",
        ));
    }
    let pause_ms = pause
        .as_ref()
        .map_or(gucs::BACKFILL_PAUSE_MS.get() as i128, millis);
    if pause_ms < 0 {
        return Err(invalid(
            "pause must not be negative",
            "It is the sleep between two batches.",
            "Pass pause => '50 ms', or '0' for none.",
        ));
    }
    let max_lag = match max_replication_lag {
        None => gucs::BACKFILL_MAX_REPLICATION_LAG_KB.get() as i64 * 1024,
        Some(size) => size_bytes(size)?,
    };
    Ok(Options {
        batch_size: initial,
        min_batch_size: min,
        max_batch_size: max,
        batch_time_ms: batch_time_ms.min(i64::MAX as i128) as i64,
        pause_ms: pause_ms.min(i64::MAX as i128) as i64,
        max_lag,
    })
}

/// A size such as '64MB', read by PostgreSQL's pg_size_bytes; '0' for no limit.
fn size_bytes(size: &str) -> Result<i64, Problem> {
    let parsed = subxact::run(|| {
        Spi::get_one_with_args::<i64>("SELECT pg_catalog.pg_size_bytes($1)", &[size.into()])
    });
    match parsed {
        Ok(Ok(Some(bytes))) if bytes >= 0 => Ok(bytes),
        Ok(_) => Err(invalid(
            format!("max_replication_lag must not be negative: {size}"),
            "It is how far behind (in WAL bytes) a streaming replica may fall before the backfill pauses.",
            "Pass max_replication_lag => '64MB', or '0' for no limit.",
        )),
        Err(Caught { message, .. }) => Err(invalid(
            format!("max_replication_lag is not a size: {size}"),
            message,
            "Pass max_replication_lag => '64MB', or '0' for no limit.",
        )),
    }
}

fn invalid(
    message: impl Into<String>,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        detail,
        hint,
    )
}

/// The table a job fills, as the catalogs describe it.
struct Target {
    oid: pg_sys::Oid,
    /// Schema-qualified and quoted.
    name: String,
    kind: String,
    persistence: String,
}

fn target_table(oid: pg_sys::Oid) -> Result<Target, Problem> {
    let target = crate::pg::spi::pinned_row(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind::text, \
                c.relpersistence::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
        |r| {
            Ok(Target {
                oid,
                name: r.get(1)?.unwrap_or_default(),
                kind: r.get(2)?.unwrap_or_default(),
                persistence: r.get(3)?.unwrap_or_default(),
            })
        },
    )
    .or_bookkeeping("read pg_class")
    .ok_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation {} does not exist", u32::from(oid)),
            "The oid names no relation; it may have been dropped.",
            "Pass the table by name, e.g. 'public.orders'.",
        )
    })?;
    if !matches!(target.kind.as_str(), "r" | "p") {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{} is not a table", target.name),
            "Only the rows of ordinary and partitioned tables can be backfilled.",
            "Pass the table the view or index is on.",
        ));
    }
    if target.persistence == "t" {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{} is a temporary table", target.name),
            "The background worker cannot see another session's temporary tables.",
            "Update it directly in this session.",
        ));
    }
    // Batches run with the submitter's rights; refuse now what they would be refused later.
    let allowed = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, 'SELECT') \
            AND pg_catalog.has_table_privilege($1, 'UPDATE')",
        &[oid.into()],
    )
    .or_bookkeeping("check table privileges")
    .unwrap_or(false);
    if !allowed {
        let user = crate::pg::identity::current_user_name();
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("role \"{user}\" may not update {}", target.name),
            "The backfill's batches run with the submitter's rights, which must include \
             SELECT and UPDATE on the table.",
            format!("GRANT SELECT, UPDATE ON {} TO \"{user}\";", target.name),
        ));
    }
    Ok(target)
}

/// The one schema (quoted) that holds the `>` and `<=` of the default btree operator class
/// of each of `table`'s key columns (quoted names), if there is one: pg_catalog when they are
/// all PostgreSQL's own types.
pub fn operator_schema(table: pg_sys::Oid, key_columns: &[String]) -> Option<String> {
    crate::pg::spi::pinned_row(
        "WITH k AS (SELECT a.atttypid AS t FROM pg_attribute a \
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                       AND quote_ident(a.attname) = ANY ($2)), \
              o AS (SELECT k.t, p.oprnamespace AS schema FROM k \
                     JOIN pg_opclass c ON c.opcmethod = (SELECT oid FROM pg_am \
                                                         WHERE amname = 'btree') \
                                      AND c.opcdefault AND c.opcintype = k.t \
                     JOIN pg_amop m ON m.amopfamily = c.opcfamily AND m.amoplefttype = k.t \
                                   AND m.amoprighttype = k.t AND m.amopstrategy IN (2, 5) \
                     JOIN pg_operator p ON p.oid = m.amopopr \
                                       AND p.oprname = CASE m.amopstrategy \
                                                       WHEN 2 THEN '<=' ELSE '>' END) \
         SELECT CASE \
             WHEN (SELECT bool_and(t < 16384) FROM k) THEN 'pg_catalog' \
             WHEN (SELECT count(*) FROM o) = 2 * (SELECT count(*) FROM k) \
                  AND (SELECT count(DISTINCT schema) FROM o) = 1 \
             THEN (SELECT quote_ident(n.nspname) FROM pg_namespace n \
                    WHERE n.oid = (SELECT min(schema) FROM o)) END",
        &[table.into(), key_columns.to_vec().into()],
        |r| r.get::<String>(1),
    )
    .or_bookkeeping("read the operators of the table's key")
    .flatten()
}

/// The key the job walks: the primary key, or else the narrowest unique index over NOT NULL
/// columns (valid, not partial, no expressions); pages when there is none.
fn key_of(target: &Target, has_where: bool, assigned: &[String]) -> Result<Walk, Problem> {
    let key = crate::pg::spi::pinned_row(
        "SELECT array_agg(quote_ident(a.attname) ORDER BY k.n), \
                array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n), \
                array_agg(a.attname::text ORDER BY k.n) \
         FROM (SELECT i.indkey::int2[] AS columns, i.indnkeyatts \
                 FROM pg_index i \
                WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate \
                  AND i.indpred IS NULL AND i.indexprs IS NULL \
                  AND NOT EXISTS (SELECT FROM pg_attribute a \
                                   WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                                     AND NOT a.attnotnull) \
                ORDER BY i.indisprimary DESC, i.indnkeyatts, i.indexrelid LIMIT 1) i \
         CROSS JOIN LATERAL unnest(i.columns) WITH ORDINALITY AS k(attnum, n) \
         JOIN pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum \
         WHERE k.n <= i.indnkeyatts",
        &[target.oid.into()],
        |r| {
            Ok((
                job::texts(r.get(1)?),
                job::texts(r.get(2)?),
                job::texts(r.get(3)?),
            ))
        },
    )
    .or_bookkeeping("read the table's keys")
    .unwrap_or((None, None, None));
    match key {
        (Some(columns), Some(types), Some(names)) if !columns.is_empty() => {
            if let Some(column) = names.iter().find(|n| assigned.contains(n)) {
                return Err(invalid(
                    format!("the set clause assigns {column}, which is part of the key the backfill walks"),
                    format!(
                        "The backfill walks {} in order of ({}); changing that key while walking it would skip or repeat rows.",
                        target.name,
                        columns.join(", ")
                    ),
                    "Backfill the other columns; change key values in a migration of their own.",
                ));
            }
            let operators = operator_schema(target.oid, &columns);
            Ok(Walk::Keyset {
                columns,
                types,
                operators,
            })
        }
        _ if target.kind == "p" => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("partitioned table {} has no unique NOT NULL key to walk", target.name),
            "Page ranges (ctid) are per partition, so a partitioned table needs a key.",
            "Backfill each partition, or add a primary key.",
        )),
        _ if !has_where => Err(invalid(
            format!("{} has no primary key or unique NOT NULL key, so the backfill needs a where clause", target.name),
            "Without a key the table is walked by page ranges, and an updated row can move to a \
             page not yet walked. A where clause that the set clause makes false (new_col IS \
             NULL) keeps such a row from being updated twice.",
            "Pass a where clause, e.g. 'new_col IS NULL', or add a primary key.",
        )),
        _ => Ok(Walk::Pages),
    }
}

/// Prepares the statements every batch runs, as the caller, so that unknown columns, type
/// mismatches and a where clause that is not boolean are refused now.
fn prepare_batches(
    walk: &Walk,
    table: &str,
    set_clause: &str,
    where_clause: Option<&str>,
) -> Result<(), Problem> {
    let text_array = PgOid::from(pg_sys::TEXTARRAYOID);
    let mut statements = vec![walk.update_sql(table, set_clause, where_clause, false)];
    if let (Walk::Keyset { .. }, Some(w)) = (walk, where_clause) {
        statements.push(walk.batch_end_sql(table, false, Some(w)));
    }
    for sql in statements {
        let prepared = subxact::rolled_back(|| {
            Spi::connect_mut(|c| {
                c.prepare_mut(
                    sql.as_str(),
                    &[text_array, text_array, PgOid::from(pg_sys::INT8OID)],
                )
                .map(|_| ())
            })
        });
        if let Err(e) = prepared.and_then(|r| {
            r.map_err(|e| Caught {
                code: PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                message: e.to_string(),
                detail: None,
                hint: None,
            })
        }) {
            return Err(Problem::new(
                e.code,
                format!("the backfill cannot run on {table}: {}", e.message),
                format!("Its batches would run: {sql}"),
                "Check the column names and types in the set and where clauses.",
            ));
        }
    }
    Ok(())
}

fn insert(
    target: &Target,
    set_clause: &str,
    where_clause: Option<&str>,
    walk: &Walk,
    o: &Options,
) -> i64 {
    let (columns, types) = match walk {
        Walk::Keyset { columns, types, .. } => (Some(columns.clone()), Some(types.clone())),
        Walk::Pages => (None, None),
    };
    let (names, values) = gucs::carried();
    let args: Vec<DatumWithOid> = vec![
        target.oid.into(),
        target.name.as_str().into(),
        set_clause.into(),
        where_clause.into(),
        columns.into(),
        types.into(),
        o.batch_size.into(),
        o.min_batch_size.into(),
        o.max_batch_size.into(),
        o.batch_time_ms.into(),
        o.pause_ms.into(),
        o.max_lag.into(),
        crate::pg::identity::current_user_name().into(),
        names.into(),
        values.into(),
    ];
    crate::pg::identity::as_owner(|| {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO migrate.backfill_jobs (table_oid, table_name, set_clause, where_clause, \
               key_columns, key_types, batch_size, min_batch_size, max_batch_size, batch_time, \
               pause, max_replication_lag, role, settings, submitted_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, make_interval(secs => $10 / 1000.0), \
               make_interval(secs => $11 / 1000.0), $12, $13, jsonb_object($14, $15), \
               session_user) \
             RETURNING id",
            &args,
        )
    })
    .or_bookkeeping("record a backfill")
    .unwrap_or_default()
}
