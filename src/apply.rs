//! `migrate.apply`: a versioned migration applied entirely, with its history row, in the
//! caller's transaction, or not at all.

use crate::checksum::Checksums;
use crate::errors::{self, OrRaise, Problem};
use crate::history::{self, interval, NewEntry, Recorded};
use crate::runner::{self, Policy};
use crate::script::{self, Statement};
use crate::version::Version;
use crate::{parser, phases, record, security, shared, steps};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::time::Duration;

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn apply(
    version: Option<&str>,
    script: Option<&str>,
    description: default!(Option<&str>, "NULL"),
    rollback: default!(Option<&str>, "NULL"),
    allow: default!(Option<Vec<Option<String>>>, "NULL"),
    verify: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(version, String),
        name!(checksum, Option<String>),
        name!(statements, i32),
        name!(duration, Interval),
        name!(retries, i32),
        name!(lock_wait, Interval),
    ),
> {
    security::require_admin("apply migrations").or_raise();
    let version = Version::parse(version).or_raise();
    let script = require_script(script).or_raise();
    let mut allow = crate::lint::rule_ids(allow).or_raise();
    // Overrides the caller set for this transaction (SET LOCAL migrate.allow) let the
    // migration through as much as allow => does: both are recorded with it, and both
    // hold for the phases the worker runs.
    for id in crate::guard::trigger::session_overrides() {
        if crate::guard::rules::find(&id).is_some() && !allow.contains(&id) {
            allow.push(id);
        }
    }
    refuse_unsafe_context().or_raise();
    let what = format!("migration {version}");
    let trees = parse_for_apply(&what, script).or_raise();
    let statements: Vec<Statement> = trees.iter().map(|(s, _)| s.clone()).collect();
    if let Some(rollback) = rollback {
        within_size("rollback", rollback).or_raise();
        parse_for_apply(&format!("the rollback script of {what}"), rollback).or_raise();
    }
    if let Some(verify) = verify {
        within_size("verify", verify).or_raise();
        crate::verify::parse_queries(&format!("the verify queries of {what}"), verify).or_raise();
    }
    let checksums = Checksums::of(script);

    lock_history();
    let decision = decide(
        &version,
        script,
        history::find(&version),
        history::highest_baseline(),
    )
    .and_then(|d| match d {
        Decision::Apply => check_order(
            &version,
            history::highest(),
            crate::gucs::OUT_OF_ORDER.get(),
        )
        .map(|()| d),
        other => Ok(other),
    })
    .or_raise();
    let row = match decision {
        Decision::Submitted(recorded) => {
            errors::notice(format!(
                "version {version} was submitted to the background worker (at {}) and is {}; \
                 nothing to do (see migrate.steps)",
                recorded.finished_at, recorded.status
            ));
            recorded_row(recorded.status.clone(), recorded)
        }
        Decision::AlreadyApplied(recorded) => {
            errors::notice(format!(
                "version {version} is already applied (at {}); nothing to do",
                recorded.finished_at
            ));
            recorded_row("already_applied".into(), recorded)
        }
        Decision::BelowBaseline(baseline) => {
            errors::notice(format!(
                "version {version} is covered by baseline {}; nothing to do",
                baseline.version
            ));
            (
                "below_baseline".to_string(),
                version.to_string(),
                Some(checksums.normalized),
                statements.len() as i32,
                interval(Duration::ZERO),
                0,
                interval(Duration::ZERO),
            )
        }
        Decision::Apply => {
            let running = Running {
                version: version.to_string(),
                has_rollback: rollback.is_some(),
                allow: allow.clone(),
            };
            refuse_unsafe_statements(&what, &trees, &running).or_raise();
            // Versions run in order: behind one the worker has not finished, even a wholly
            // transactional migration waits its turn there.
            let behind = history::lowest_unfinished();
            if phases::needed(&statements) || behind.is_some() {
                return TableIterator::once(submit(
                    &version,
                    description,
                    script,
                    &checksums,
                    rollback,
                    &statements,
                    &allow,
                    verify,
                    behind.as_ref(),
                ));
            }
            let started_at = history::clock_now();
            // Before the migration takes its locks: what it changes must be its own.
            record::drift();
            let outcome = {
                let _applying = Applying::enter(running);
                runner::run(&what, script, &statements, Policy::from_settings())
            };
            // Only what the migration touched is described, while it holds its locks.
            let schema = record::applied(version.as_str());
            let duration = history::insert(&NewEntry {
                version: &version,
                description,
                status: "applied",
                script: Some(script),
                checksums: Some(&checksums),
                rollback,
                statements: statements.len() as i32,
                started_at,
                lock_wait: outcome.lock_wait,
                retries: outcome.retries as i32,
                allowed_rules: &allow,
                phases: 1,
                verify,
                schema: Some(schema),
            });
            (
                "applied".to_string(),
                version.to_string(),
                Some(checksums.normalized),
                statements.len() as i32,
                interval(duration),
                outcome.retries as i32,
                interval(outcome.lock_wait),
            )
        }
    };
    TableIterator::once(row)
}

/// A migration with statements that cannot run in a transaction, or one behind a migration
/// the worker has not finished: recorded as pending, with its phases, for the background
/// worker to run once the caller commits.
#[allow(clippy::too_many_arguments)]
fn submit(
    version: &Version,
    description: Option<&str>,
    script: &str,
    checksums: &Checksums,
    rollback: Option<&str>,
    statements: &[Statement],
    allow: &[String],
    verify: Option<&str>,
    behind: Option<&Recorded>,
) -> ApplyRow {
    if !shared::available() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration {version} needs the background worker, which is not running"),
            "Statements such as CREATE INDEX CONCURRENTLY cannot run inside a transaction; \
             pg_migrate's background worker runs them, and it exists only when pg_migrate is \
             in shared_preload_libraries.",
            "Add pg_migrate to shared_preload_libraries in postgresql.conf and restart the \
             server; or run those statements yourself outside migrate.apply.",
        )
        .raise();
    }
    let plan = phases::plan(statements);
    record::drift();
    history::insert(&NewEntry {
        version,
        description,
        status: "pending",
        script: Some(script),
        checksums: Some(checksums),
        rollback,
        statements: statements.len() as i32,
        started_at: history::clock_now(),
        lock_wait: Duration::ZERO,
        retries: 0,
        allowed_rules: allow,
        phases: plan.len() as i32,
        verify,
        schema: None,
    });
    steps::insert(version.as_str(), script, &plan);
    shared::wake_at_commit();
    let phases = match plan.len() {
        1 => "1 phase".to_string(),
        n => format!("{n} phases"),
    };
    let mut notice = match behind {
        Some(b) => format!(
            "migration {version} ({phases}) waits for version {} ({}), which the background \
             worker has not finished, and then runs there",
            b.version, b.status
        ),
        None => format!(
            "migration {version} has {phases} and runs in the background worker once this \
             transaction commits"
        ),
    };
    notice.push_str(&format!(
        "; follow it in migrate.steps, or CALL migrate.wait('{version}')"
    ));
    if let Some(b) = behind.filter(|b| b.status == "failed") {
        notice.push_str(&format!(
            ". Version {0} failed: SELECT migrate.retry('{0}') once its cause is fixed, or \
             migrate.cancel('{0}')",
            b.version
        ));
    }
    if crate::gucs::MAX_WORKERS.get() == 0 {
        notice.push_str(". migrate.max_workers is 0: nothing runs until it is raised");
    }
    errors::notice(notice);
    (
        "pending".to_string(),
        version.to_string(),
        Some(checksums.normalized.clone()),
        statements.len() as i32,
        interval(Duration::ZERO),
        0,
        interval(Duration::ZERO),
    )
}

type ApplyRow = (String, String, Option<String>, i32, Interval, i32, Interval);

/// The row `apply` returns for a version recorded earlier.
fn recorded_row(status: String, recorded: Recorded) -> ApplyRow {
    (
        status,
        recorded.version,
        recorded.checksum,
        recorded.statements,
        interval(recorded.duration),
        recorded.retries,
        interval(recorded.lock_wait),
    )
}

#[derive(Debug)]
enum Decision {
    Apply,
    /// Recorded, and pending, running, failed or cancelled in the background worker.
    Submitted(Recorded),
    AlreadyApplied(Recorded),
    BelowBaseline(Recorded),
}

/// What to do with `version`, given its recorded row (or another spelling's) and the highest
/// baseline.
fn decide(
    version: &Version,
    script: &str,
    recorded: Option<Recorded>,
    baseline: Option<Recorded>,
) -> Result<Decision, Problem> {
    if let Some(recorded) = recorded {
        if recorded.status == "baseline" {
            return Ok(Decision::BelowBaseline(recorded));
        }
        history::compare_checksum(version, script, &recorded)?;
        if recorded.status != "applied" {
            return Ok(Decision::Submitted(recorded));
        }
        return Ok(Decision::AlreadyApplied(recorded));
    }
    if let Some(baseline) = baseline {
        if Version::parse(Some(&baseline.version)).is_ok_and(|b| *version <= b) {
            return Ok(Decision::BelowBaseline(baseline));
        }
    }
    Ok(Decision::Apply)
}

/// Refuses a version below the highest recorded one unless `migrate.out_of_order` is on.
fn check_order(
    version: &Version,
    highest: Option<Recorded>,
    out_of_order: bool,
) -> Result<(), Problem> {
    let Some(highest) = highest else {
        return Ok(());
    };
    let Ok(highest_version) = Version::parse(Some(&highest.version)) else {
        return Ok(());
    };
    if *version > highest_version || out_of_order {
        return Ok(());
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("version {version} is lower than the highest applied version {highest_version}"),
        format!(
            "Versions apply in order; {highest_version} was applied at {}. An older version \
             arriving late usually means two branches were merged.",
            highest.finished_at
        ),
        "Renumber the migration above the highest version, or, if it is independent of the \
         later ones, SET migrate.out_of_order = on for this session.",
    ))
}

/// The script argument of apply, validate, lint and dry_run: present, and within
/// migrate.max_script_size.
pub fn require_script(script: Option<&str>) -> Result<&str, Problem> {
    let script = script.ok_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "script must not be NULL",
            "A migration needs the SQL it runs.",
            "Pass the script as a dollar-quoted string: migrate.apply('42', $$ ... $$).",
        )
    })?;
    within_size("script", script)
}

/// Refuses a text (a script, a rollback script, verify queries) larger than
/// migrate.max_script_size: parsing, judging and storing it takes time and memory in
/// proportion, and lint and dry_run are open to every role.
pub fn within_size<'a>(name: &str, text: &'a str) -> Result<&'a str, Problem> {
    let limit_kb = i64::from(crate::gucs::MAX_SCRIPT_SIZE_KB.get());
    let size = text.len() as i64;
    if size <= limit_kb * 1024 {
        return Ok(text);
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!(
            "{name} is {} bytes, more than migrate.max_script_size ({limit_kb} kB)",
            size
        ),
        "pg_migrate parses, judges and records every script whole, in one backend; the limit \
         bounds the time and memory that takes.",
        "Split the migration into several versions, or have a superuser raise \
         migrate.max_script_size (ALTER ROLE ... SET migrate.max_script_size = '32MB').",
    ))
}

/// The guard's verdict on every statement before the first one runs, so that a refused
/// statement late in a script does not leave earlier ones holding locks meanwhile. The event
/// trigger judges each statement again as it runs, with the catalogs as they are by then.
fn refuse_unsafe_statements(
    what: &str,
    trees: &[(Statement, *mut pg_sys::Node)],
    running: &Running,
) -> Result<(), Problem> {
    let Some(mut ctx) = crate::guard::trigger::context() else {
        return Ok(());
    };
    ctx.allow.extend(running.allow.iter().cloned());
    ctx.apply_with_rollback = running.has_rollback;
    match crate::lint::refusal_before_apply(what, trees, &ctx) {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// Parses `script` and refuses what cannot run as one transactional migration.
pub(crate) fn parse_for_apply(
    what: &str,
    script: &str,
) -> Result<Vec<(Statement, *mut pg_sys::Node)>, Problem> {
    let trees = parser::parse(script).map_err(|e| e.problem(what, script))?;
    let statements: Vec<Statement> = trees.iter().map(|(s, _)| s.clone()).collect();
    for (statement, tree) in trees
        .iter()
        .filter(|(s, _)| s.kind == script::Kind::Backfill)
    {
        // SAFETY: a raw parse tree of this script, used within this call.
        unsafe { crate::backfill::check_phase(what, statement.line, *tree) }?;
    }
    if statements.is_empty() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} contains no statements"),
            "The script is empty or holds only comments.",
            "Pass the SQL to run; to record a version without running anything, use \
             migrate.baseline.",
        ));
    }
    script::refuse_transaction_control(what, &statements)?;
    Ok(trees)
}

/// Refuses contexts in which the history cannot be changed correctly: inside a migration,
/// read-only, or with a transaction snapshot older than the applier lock.
pub fn refuse_unsafe_context() -> Result<(), Problem> {
    if APPLYING.with_borrow(|v| v.is_some()) {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "migrate.apply cannot be called from inside a migration",
            "A migration's script called migrate.apply; versions would nest.",
            "Apply the versions one after the other.",
        ));
    }
    // SAFETY: reads backend-global flags.
    let (read_only, snapshot_isolation) = unsafe {
        (
            pg_sys::XactReadOnly || pg_sys::RecoveryInProgress(),
            pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32,
        )
    };
    if snapshot_isolation {
        // Its snapshot was taken before the applier lock was granted, so it cannot see what
        // a concurrent applier committed meanwhile and would apply a version twice.
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "cannot change the schema history in a REPEATABLE READ or SERIALIZABLE transaction",
            "Such a transaction keeps the snapshot it took before waiting for other appliers, \
             so it would not see versions they applied meanwhile.",
            "Run it in a READ COMMITTED transaction: BEGIN ISOLATION LEVEL READ COMMITTED; \
             (or SET default_transaction_isolation = 'read committed').",
        ));
    }
    if read_only {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot apply migrations in a read-only transaction",
            "The transaction is read-only, or this server is a standby.",
            "Connect to the primary, outside a READ ONLY transaction.",
        ));
    }
    Ok(())
}

/// The applier lock serialises appliers of one database: an EXCLUSIVE lock on the pg_migrate
/// extension object itself (`pg_locks`: locktype `object`, classid `pg_extension`). An
/// advisory lock would not do: any role can take any advisory key first and hold it. Nobody
/// but the extension's owner can take this one from SQL (ALTER, COMMENT ON or DROP
/// EXTENSION), and those end their transaction quickly or run as a superuser anyway.
fn applier_lock() -> (pg_sys::Oid, pg_sys::Oid) {
    // SAFETY: a catalog lookup by name; raises if the extension is gone.
    let extension = unsafe { pg_sys::get_extension_oid(c"pg_migrate".as_ptr(), false) };
    (pg_sys::ExtensionRelationId, extension)
}

/// The worker's side of the applier lock: taken only if free, so that it never queues behind
/// a submitting transaction (whose commit wakes it again).
pub fn try_lock_history() -> bool {
    let (class, object) = applier_lock();
    // SAFETY: a heavyweight lock request that does not wait, released at transaction end.
    let taken = unsafe {
        pg_sys::ConditionalLockDatabaseObject(class, object, 0, pg_sys::ExclusiveLock as _)
    };
    if taken {
        see_what_the_last_holder_committed();
    }
    taken
}

/// After the applier lock is granted: a transaction id makes every later SPI read take a
/// fresh snapshot (pgrx reads with the statement's older snapshot until the transaction has
/// one), so the history the previous holder committed is seen, and no version applies twice.
fn see_what_the_last_holder_committed() {
    // SAFETY: assigns this transaction's id, or raises.
    unsafe { pg_sys::GetCurrentTransactionId() };
}

/// Takes the transaction-scoped lock that serialises appliers; it ends with the transaction,
/// so a killed session never leaves it behind. The wait is bounded like any lock a migration
/// takes: migrate.lock_timeout per attempt, migrate.lock_retries retries with the backoff
/// between them; then the error names the sessions holding it.
pub fn lock_history() {
    let (class, object) = applier_lock();
    let policy = Policy::from_settings();
    let timeout = format!("{}ms", policy.limits.lock_timeout_ms.max(0));
    let attempts = policy.retries + 1;
    for attempt in 1..=attempts {
        let taken = crate::subxact::run(|| {
            let _limit = crate::timeouts::SettingScope::set(&[("lock_timeout", &timeout)]);
            // SAFETY: a heavyweight lock request; it waits under lock_timeout, answers
            // cancellation and the deadlock detector, and is released at transaction end.
            unsafe { pg_sys::LockDatabaseObject(class, object, 0, pg_sys::ExclusiveLock as _) }
        });
        let caught = match taken {
            Ok(()) => return see_what_the_last_holder_committed(),
            Err(caught) => caught,
        };
        if caught.code != PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
            // A deadlock: this transaction holds locks another applier waits for.
            Problem::new(
                caught.code,
                format!("while waiting for the applier lock: {}", caught.message),
                caught.detail.unwrap_or_else(|| {
                    "Appliers of one database take the applier lock one at a time.".into()
                }),
                caught.hint.unwrap_or_else(|| {
                    "Call migrate.apply before taking other locks in the transaction, then \
                     run it again."
                        .into()
                }),
            )
            .raise();
        }
        if attempt < attempts {
            crate::retry::sleep(policy.backoff.delay(attempt, crate::retry::random_unit()));
        }
    }
    applier_lock_busy(object, attempts, &timeout).raise()
}

/// The error for an applier lock still held after every attempt, naming who holds it.
fn applier_lock_busy(extension: pg_sys::Oid, attempts: u32, timeout: &str) -> Problem {
    let holders = security::pinned_column::<String>(
        "SELECT pg_catalog.format('pid %s (role %s, application %L, %s, transaction open for %s)', \
                l.pid, coalesce(a.usename::text, '?'), coalesce(a.application_name, ''), \
                coalesce(a.state, 'unknown state'), \
                coalesce(date_trunc('second', clock_timestamp() - a.xact_start)::text, '?')) \
         FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'object' AND l.classid = 'pg_catalog.pg_extension'::regclass \
           AND l.objid = $1 AND l.granted AND l.pid <> pg_backend_pid() \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[extension.into()],
    )
    .unwrap_or_default();
    let who = if holders.is_empty() {
        "a session that has ended since".to_string()
    } else {
        holders.join("; ")
    };
    Problem::new(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        "another session holds the applier lock",
        format!(
            "Waited {attempts} times for {timeout} (migrate.lock_timeout, migrate.lock_retries). \
             Held by {who}. Appliers of one database run one at a time: another migrate.apply, \
             baseline, retry or cancel is under way in a transaction that has not ended."
        ),
        "Let that transaction finish (or end it: SELECT pg_cancel_backend(pid)), then run \
         this again.",
    )
}

/// The migration whose statements are running, as the DDL log and the guard need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub version: String,
    pub has_rollback: bool,
    /// Guard rules the migration overrides (`allow => ARRAY[...]`).
    pub allow: Vec<String>,
}

thread_local! {
    static APPLYING: RefCell<Option<Running>> = const { RefCell::new(None) };
}

pub fn running() -> Option<Running> {
    APPLYING.with_borrow(|v| v.clone())
}

/// Runs `f` with `running` marked as the migration whose statements run (the worker's phases).
pub fn with_running<T>(running: Running, f: impl FnOnce() -> T) -> T {
    let _applying = Applying::enter(running);
    f()
}

/// Marks a migration's statements as running; cleared on drop, also when an ERROR unwinds.
struct Applying;

impl Applying {
    fn enter(running: Running) -> Applying {
        APPLYING.set(Some(running));
        Applying
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        APPLYING.set(None);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn recorded(version: &str, status: &str, script: &str) -> Recorded {
        Recorded {
            version: version.into(),
            status: status.into(),
            checksum: Some(Checksums::of(script).normalized),
            algorithm: Some(1),
            finished_at: "2026-11-24 10:00:00+00".into(),
            statements: 1,
            duration: Duration::ZERO,
            retries: 0,
            lock_wait: Duration::ZERO,
            applied_role: "deployer".into(),
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(Some(s)).unwrap()
    }

    #[test]
    fn same_script_is_already_applied_whatever_the_line_endings() {
        let r = recorded("3", "applied", "CREATE TABLE t (id int);\n");
        let d = decide(&v("3"), "CREATE TABLE t (id int);\r\n", Some(r), None).unwrap();
        assert!(matches!(d, Decision::AlreadyApplied(_)));
    }

    #[test]
    fn changed_script_is_refused_with_both_checksums() {
        let r = recorded("3", "applied", "CREATE TABLE t (id int);");
        let p = decide(
            &v("3"),
            "CREATE TABLE t (id bigint);",
            Some(r.clone()),
            None,
        )
        .unwrap_err();
        assert_eq!(
            p.code,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert!(p.detail.contains(r.checksum.as_deref().unwrap()));
        assert!(p
            .detail
            .contains(&Checksums::of("CREATE TABLE t (id bigint);").normalized));
        assert!(p.detail.contains("2026-11-24 10:00:00+00"));
    }

    #[test]
    fn another_spelling_of_a_recorded_version_is_refused() {
        let r = recorded("1", "applied", "SELECT 1;");
        let p = decide(&v("1.0"), "SELECT 1;", Some(r), None).unwrap_err();
        assert!(
            p.message
                .contains("1.0 is the same version as the recorded 1"),
            "{}",
            p.message
        );
    }

    #[test]
    fn versions_up_to_the_baseline_are_covered() {
        let b = recorded("5", "baseline", "");
        assert!(matches!(
            decide(&v("4"), "x", None, Some(b.clone())),
            Ok(Decision::BelowBaseline(_))
        ));
        assert!(matches!(
            decide(&v("5.0"), "x", None, Some(b.clone())),
            Ok(Decision::BelowBaseline(_))
        ));
        assert!(matches!(
            decide(&v("5.1"), "x", None, Some(b)),
            Ok(Decision::Apply)
        ));
    }

    #[test]
    fn lower_versions_need_out_of_order() {
        let top = recorded("10", "applied", "SELECT 1;");
        let p = check_order(&v("9"), Some(top.clone()), false).unwrap_err();
        assert!(p
            .message
            .contains("9 is lower than the highest applied version 10"));
        assert!(p.hint.contains("migrate.out_of_order"));
        assert!(check_order(&v("9"), Some(top.clone()), true).is_ok());
        assert!(check_order(&v("10.1"), Some(top), false).is_ok());
        assert!(check_order(&v("1"), None, false).is_ok());
    }
}
