//! The applier lock that serialises changes to the history, and the contexts in which the
//! history cannot be changed correctly.

use crate::errors::Problem;
use crate::migration::limits::Policy;
use crate::pg::xact;
use pgrx::{pg_sys, PgSqlErrorCode};

/// Refuses contexts in which the history cannot be changed correctly: inside a migration,
/// read-only, or with a transaction snapshot older than the applier lock.
pub fn refuse_unsafe_context() -> Result<(), Problem> {
    refuse_stale_objects()?;
    if crate::migration::running::is_applying() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "migrate.apply cannot be called from inside a migration",
            "A migration's script called migrate.apply; versions would nest.",
            "Apply the versions one after the other.",
        ));
    }
    let (read_only, snapshot_isolation) = (xact::read_only(), xact::keeps_its_snapshot());
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
    if xact::in_recovery() {
        return Err(on_a_standby("change the migration history"));
    }
    if read_only {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot apply migrations in a read-only transaction",
            "The transaction is read-only.",
            "Run it outside a READ ONLY transaction.",
        ));
    }
    Ok(())
}

/// What a standby refuses: anything that writes. It replays the primary's history, and shows
/// it (migrate.status, fingerprint, verify's checks, drift) as far as it has replayed.
pub fn on_a_standby(what: &str) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        format!("cannot {what} on a standby"),
        "This server is a standby: it replays the primary's migrations and cannot write.",
        "Connect to the primary (with libpq, target_session_attrs=read-write finds it).",
    )
}

/// The applier lock serialises appliers of one database: an EXCLUSIVE lock on the pg_migrate
/// extension object itself (`pg_locks`: locktype `object`, classid `pg_extension`). An
/// advisory lock would not do: any role can take any advisory key first and hold it. Nobody
/// but the extension's owner can take this one from SQL (ALTER, COMMENT ON or DROP
/// EXTENSION), and those end their transaction quickly or run as a superuser anyway.
fn applier_lock() -> (pg_sys::Oid, pg_sys::Oid) {
    let extension = xact::extension_oid("pg_migrate");
    (pg_sys::ExtensionRelationId, extension)
}

/// The worker's side of the applier lock: taken only if free, so that it never queues behind
/// a submitting transaction (whose commit wakes it again).
pub fn try_lock_history() -> bool {
    let (class, object) = applier_lock();
    let taken = xact::try_lock_object(class, object);
    if taken {
        see_what_the_last_holder_committed();
    }
    taken
}

/// After the applier lock is granted: a transaction id makes every later SPI read take a
/// fresh snapshot (pgrx reads with the statement's older snapshot until the transaction has
/// one), so the history the previous holder committed is seen, and no version applies twice.
fn see_what_the_last_holder_committed() {
    xact::assign_id();
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
        let taken = crate::pg::subxact::run(|| {
            let _limit = crate::pg::guc::SettingScope::set(&[("lock_timeout", &timeout)]);
            xact::lock_object(class, object)
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
            crate::migration::backoff::sleep(
                policy
                    .backoff
                    .delay(attempt, crate::migration::backoff::random_unit()),
            );
        }
    }
    applier_lock_busy(object, attempts, &timeout).raise()
}

/// The error for an applier lock still held after every attempt, naming who holds it.
fn applier_lock_busy(extension: pg_sys::Oid, attempts: u32, timeout: &str) -> Problem {
    let holders = crate::pg::spi::pinned_column::<String>(
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

/// Refuses to change the history when this database's pg_migrate objects are of another
/// version than the library: the state right after a package upgrade, before ALTER EXTENSION
/// ... UPDATE. The library's queries may need tables, columns or functions the old objects
/// lack, and an old function may no longer match what the library does.
pub fn refuse_stale_objects() -> Result<(), Problem> {
    let library = env!("CARGO_PKG_VERSION");
    let installed = crate::pg::spi::kept_row(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_migrate'",
        &[],
        |row| row.get::<String>(1),
    )
    .ok()
    .flatten()
    .flatten();
    let Some(objects) = installed.filter(|objects| objects != library) else {
        return Ok(());
    };
    let (why, fix) = if newer(library, &objects) {
        (
            "The pg_migrate package was upgraded; the extension's tables and functions in this \
             database are still those of the version installed before, and the history cannot be \
             changed until they match. DDL is still judged and logged.",
            "Run ALTER EXTENSION pg_migrate UPDATE; in this database (as a superuser).",
        )
    } else {
        (
            "The library is older than this database's pg_migrate objects: the package was \
             downgraded, or another server's library is loaded. Its queries may not fit the \
             newer objects. DDL is still judged and logged.",
            "Install the pg_migrate package of the objects' version (SELECT extversion FROM \
             pg_extension WHERE extname = 'pg_migrate') and restart the server.",
        )
    };
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "the pg_migrate library is version {library}, but this database has the objects of \
             version {objects}"
        ),
        why,
        fix,
    ))
}

/// Whether release `a` comes after release `b` (dotted numbers, compared as numbers).
fn newer(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a) > parts(b)
}
