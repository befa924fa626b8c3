//! `migrate.history`: reading and writing the record of applied versions, and the SQL
//! functions that only read or annotate it (`baseline`, `validate`, `current_version`).

pub mod commit_lsn;
pub mod ddl_log;
pub mod lock;
pub mod record;
pub mod steps;
pub mod touched;

use crate::errors::{OrBookkeeping, OrRaise, Problem};
use crate::migration::checksum::{self, Checksums};
use crate::migration::status::{Status, Validity};
use crate::migration::version::Version;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde::Serialize;
use std::time::Duration;

/// One recorded version, as far as decisions about a new apply need it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub version: String,
    pub status: Status,
    pub checksum: Option<String>,
    pub algorithm: Option<i16>,
    pub finished_at: String,
    pub statements: i32,
    pub duration: Duration,
    pub retries: i32,
    pub lock_wait: Duration,
    /// The role that applied it (current_user), whose rights its phases run with.
    pub applied_role: String,
}

const RECORDED_COLUMNS: &str = "version, status, checksum, checksum_algorithm, \
     coalesce(finished_at, started_at)::text, statements, (extract(epoch FROM duration) * 1e6)::int8, retries, \
     (extract(epoch FROM lock_wait) * 1e6)::int8, applied_role::text";

fn select_recorded(filter: &str, args: &[DatumWithOid]) -> Option<Recorded> {
    let query = format!("SELECT {RECORDED_COLUMNS} FROM migrate.history {filter} LIMIT 1");
    crate::pg::spi::kept_row(&query, args, |row| {
        Ok(Recorded {
            version: row.get(1)?.unwrap_or_default(),
            status: Status::from_column(row.get(2)?)?,
            checksum: row.get(3)?,
            algorithm: row.get(4)?,
            finished_at: row.get(5)?.unwrap_or_default(),
            statements: row.get(6)?.unwrap_or_default(),
            duration: micros(row.get(7)?),
            retries: row.get(8)?.unwrap_or_default(),
            lock_wait: micros(row.get(9)?),
            applied_role: row.get(10)?.unwrap_or_default(),
        })
    })
    .or_bookkeeping("read migrate.history")
}

fn micros(value: Option<i64>) -> Duration {
    Duration::from_micros(value.unwrap_or(0).max(0) as u64)
}

/// The recorded version with the same sort key: the version itself or another spelling of it.
pub fn find(version: &Version) -> Option<Recorded> {
    select_recorded(
        "WHERE version_key = migrate.version_key($1)",
        &[version.as_str().into()],
    )
}

/// The highest recorded version, applied or baseline.
pub fn highest() -> Option<Recorded> {
    select_recorded("ORDER BY version_key DESC", &[])
}

/// The lowest version the background worker has not finished: pending, running or failed.
/// Versions applied after it wait their turn behind it.
pub fn lowest_unfinished() -> Option<Recorded> {
    select_recorded(
        "WHERE status IN ('pending', 'running', 'failed') ORDER BY version_key",
        &[],
    )
}

/// The highest baseline, below or at which versions are covered without running.
pub fn highest_baseline() -> Option<Recorded> {
    select_recorded("WHERE status = 'baseline' ORDER BY version_key DESC", &[])
}

/// A row to insert.
pub struct NewEntry<'a> {
    pub version: &'a Version,
    pub description: Option<&'a str>,
    pub status: Status,
    pub script: Option<&'a str>,
    pub checksums: Option<&'a Checksums>,
    pub rollback: Option<&'a str>,
    pub statements: i32,
    pub started_at: TimestampWithTimeZone,
    pub lock_wait: Duration,
    pub retries: i32,
    /// Guard rules the migration overrode.
    pub allowed_rules: &'a [String],
    /// Phases the background worker runs (1 when applied in the caller's transaction).
    pub phases: i32,
    /// Queries that must return no rows for `migrate.verify` to pass.
    pub verify: Option<&'a str>,
    /// The fingerprint after the migration and what it changed (applied and baseline rows).
    pub schema: Option<crate::history::record::Recorded>,
}

/// Inserts a history row in the current transaction, as the table's owner, and returns the
/// duration it recorded. The caller's identity is read before the switch.
pub fn insert(entry: &NewEntry) -> Duration {
    // The caller's identity and settings (the background worker runs phases under them),
    // read before the switch to the owner pins search_path.
    let (names, values) = crate::gucs::carried();
    let row = Row {
        version: entry.version.as_str(),
        description: entry.description,
        status: entry.status,
        checksum: entry.checksums.map(|c| c.normalized.as_str()),
        checksum_raw: entry.checksums.map(|c| c.raw.as_str()),
        checksum_algorithm: entry.checksums.map(|c| c.algorithm),
        rollback_checksum: entry.rollback.map(|r| Checksums::of(r).normalized),
        statements: entry.statements,
        applied_role: crate::pg::identity::current_user_name(),
        retries: entry.retries,
        extension_version: env!("CARGO_PKG_VERSION"),
        allowed_rules: entry.allowed_rules,
        phases: entry.phases,
        settings: names.into_iter().zip(values).collect(),
        fingerprint: entry.schema.as_ref().and_then(|r| r.fingerprint.as_deref()),
    };
    let row = serde_json::to_value(&row).expect("a history row serialises");
    // Printed once, not copied into the row: a rename of a schema changes every object in it.
    let changes = entry
        .schema
        .as_ref()
        .and_then(|r| r.changes.as_ref())
        .map(|j| j.0.to_string());
    let recorded = crate::pg::spi::kept_value_as_owner::<i64>(
        "INSERT INTO migrate.history (version, description, status, script, checksum, \
               checksum_raw, checksum_algorithm, rollback_script, rollback_checksum, statements, \
               applied_by, applied_role, application_name, client_addr, started_at, finished_at, \
               lock_wait, retries, extension_version, allowed_rules, phases, settings, \
               verify_script, fingerprint, changes, commit_xid) \
             SELECT r.version, r.description, r.status, $4, r.checksum, r.checksum_raw, \
               r.checksum_algorithm, $5, r.rollback_checksum, r.statements, \
               session_user, r.applied_role, current_setting('application_name'), \
               inet_client_addr(), $2, \
               CASE WHEN r.status IN ('applied', 'baseline') THEN clock_timestamp() END, \
               $3, r.retries, r.extension_version, r.allowed_rules, r.phases, r.settings, \
               $6, r.fingerprint, $7::jsonb, \
               CASE WHEN r.status IN ('applied', 'baseline') THEN pg_current_xact_id() END \
             FROM jsonb_populate_record(NULL::migrate.history, $1) r \
             RETURNING (extract(epoch FROM coalesce(duration, '0')) * 1e6)::int8",
        &[
            pgrx::JsonB(row).into(),
            entry.started_at.into(),
            interval(entry.lock_wait).into(),
            entry.script.into(),
            entry.rollback.into(),
            entry.verify.into(),
            changes.into(),
        ],
    )
    .or_bookkeeping("write migrate.history");
    if entry.status.is_finished() {
        crate::pg::commit_lsn::keep_at_commit();
    }
    micros(recorded)
}

/// A history row's values as `jsonb_populate_record` takes them: named, not positional.
/// Who inserts it, from where and when are the server's to say; the scripts go as text
/// parameters of their own (jsonb holds strings of at most 256 MB, a script may be larger),
/// and so does what the migration changed.
#[derive(Serialize)]
struct Row<'a> {
    version: &'a str,
    description: Option<&'a str>,
    status: Status,
    checksum: Option<&'a str>,
    checksum_raw: Option<&'a str>,
    checksum_algorithm: Option<i16>,
    rollback_checksum: Option<String>,
    statements: i32,
    applied_role: String,
    retries: i32,
    extension_version: &'static str,
    allowed_rules: &'a [String],
    phases: i32,
    settings: std::collections::BTreeMap<String, String>,
    fingerprint: Option<&'a str>,
}

/// `migrate.baseline(version, description)`: records that this database already is at
/// `version`, without running anything. Versions up to it are then skipped by `apply`.
#[pg_extern(volatile, parallel_unsafe)]
fn baseline(
    version: Option<&str>,
    description: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(status, String), name!(version, String))> {
    crate::pg::identity::require_admin("baseline the schema history").or_raise();
    let version = Version::parse(version).or_raise();
    crate::history::lock::refuse_unsafe_context().or_raise();
    crate::history::lock::lock_history();
    if let Some(existing) = highest() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot baseline at version {version}: the history is not empty"),
            format!(
                "Version {} is already recorded ({}, {}). A baseline describes a database \
                 that pg_migrate has not managed before.",
                existing.version, existing.status, existing.finished_at
            ),
            "Inspect SELECT * FROM migrate.status; to adopt an existing database, baseline it \
             before its first migrate.apply.",
        )
        .raise();
    }
    insert(&NewEntry {
        version: &version,
        description,
        status: Status::Baseline,
        script: None,
        checksums: None,
        rollback: None,
        statements: 0,
        started_at: clock_now(),
        lock_wait: Duration::ZERO,
        retries: 0,
        allowed_rules: &[],
        phases: 1,
        verify: None,
        schema: Some(crate::history::record::whole()),
    });
    TableIterator::once((Status::Baseline.to_string(), version.to_string()))
}

/// `migrate.validate(version, script)`: checks a script against what was applied under
/// `version`, for CI drift checks. Returns `valid`, `pending` (not applied yet) or
/// `baseline`; a different script is an ERROR so that `psql -v ON_ERROR_STOP=1` fails the job.
#[pg_extern(stable, parallel_safe)]
fn validate(version: Option<&str>, script: Option<&str>) -> String {
    let version = Version::parse(version).or_raise();
    let script = crate::migration::script::require_script(script).or_raise();
    match find(&version) {
        None => match highest_baseline() {
            Some(b) if Version::parse(Some(&b.version)).is_ok_and(|b| version <= b) => {
                Validity::Baseline.to_string()
            }
            _ => Validity::Pending.to_string(),
        },
        Some(recorded) if recorded.status == Status::Baseline => Validity::Baseline.to_string(),
        Some(recorded) => {
            compare_checksum(&version, script, &recorded).or_raise();
            Validity::Valid.to_string()
        }
    }
}

/// Whether `script` is what was recorded for `version`, judged with the algorithm the row
/// was recorded with.
pub fn compare_checksum(
    version: &Version,
    script: &str,
    recorded: &Recorded,
) -> Result<(), Problem> {
    let algorithm = recorded.algorithm.unwrap_or(checksum::CURRENT_ALGORITHM);
    let Some(given) = checksum::normalized_checksum(script, algorithm) else {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "version {} was recorded with checksum algorithm {algorithm}",
                recorded.version
            ),
            format!(
                "This pg_migrate ({}) knows checksum algorithms up to {}.",
                env!("CARGO_PKG_VERSION"),
                checksum::CURRENT_ALGORITHM
            ),
            "Update the pg_migrate extension to the version that wrote the history.",
        ));
    };
    let recorded_sum = recorded.checksum.clone().unwrap_or_default();
    if given == recorded_sum && recorded.version == version.as_str() {
        return Ok(());
    }
    if recorded.version != version.as_str() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "version {version} is the same version as the recorded {}",
                recorded.version
            ),
            format!(
                "Versions compare as numbers, so {version} and {} are one version; {} was \
                 recorded at {}.",
                recorded.version, recorded.version, recorded.finished_at
            ),
            "Give the new migration a version that is not yet recorded.",
        ));
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("version {version} was already applied with a different checksum"),
        format!(
            "Recorded checksum {recorded_sum} (applied {}); this script has checksum {given}. \
             A released migration must not change.",
            recorded.finished_at
        ),
        "Put the change into a new version; restore the original script for this one.",
    ))
}

/// `migrate.current_version()`: the highest recorded version, applied or baseline.
#[pg_extern(stable, parallel_safe)]
fn current_version() -> Option<String> {
    highest().map(|r| r.version)
}

/// The wall clock (`clock_timestamp()`), for the start of an apply.
pub fn clock_now() -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(crate::pg::xact::clock()).expect("the clock is in range")
}

/// A duration as an SQL interval.
pub fn interval(d: Duration) -> Interval {
    Interval::from_micros(d.as_micros().min(i64::MAX as u128) as i64)
}
