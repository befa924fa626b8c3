//! The recorded schema (`sql/record.sql`), from the Rust side: brought up to date before a
//! migration runs, and with what it touched once it has run. Both are bookkeeping and run as
//! the extension's owner; neither describes more than the objects DDL touched, but for the
//! once-per-database recording of the whole schema, which happens before a migration takes
//! any lock of its own.

use crate::errors::{OrBookkeeping, OrRaise, Problem};
use crate::migration::limits::Limits;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

/// What a migration changed in the recorded schema, and the fingerprint after it.
pub struct Recorded {
    pub changes: Option<JsonB>,
    pub fingerprint: Option<String>,
}

/// Runs `f`, which describes objects, under the migration's limits (`migrate.lock_timeout`,
/// `migrate.statement_timeout`), as the migration's own statements run: printing a default or
/// a view's definition opens the tables it names, which another session may hold, and
/// waiting longer would hold the applier lock (and, after the migration's DDL, its locks) for
/// as long as that session pleases. `then` says what to do after a lock timeout.
fn bounded<T>(what: &str, then: &str, f: impl FnOnce() -> T) -> T {
    let limits = Limits::from_settings();
    let caught = match crate::pg::subxact::run(|| crate::migration::limits::with_limits(limits, f))
    {
        Ok(value) => return value,
        Err(caught) => caught,
    };
    if caught.code != PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
        caught.reraise();
    }
    Problem::new(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("could not {what}: an object it describes is locked by another session"),
        format!(
            "Describing an object can open the tables it names; one was locked for longer \
             than migrate.lock_timeout ({} ms): {}",
            limits.lock_timeout_ms, caught.message
        ),
        format!(
            "Find the session holding the lock (pg_locks, pg_stat_activity); {then} once it \
             has finished."
        ),
    )
    .raise()
}

const APPLY_AGAIN: &str = "nothing was applied: apply again";

/// Before a migration: DDL outside migrations since the last one is recorded first (or the
/// whole schema, where nothing of this database is recorded yet), so that the migration's
/// changes are its own.
pub fn drift() {
    bounded(
        "record the schema before the migration",
        APPLY_AGAIN,
        || {
            crate::pg::identity::as_owner(|| Spi::run("SELECT migrate.record_drift()"))
                .or_bookkeeping("record the schema before the migration")
        },
    )
}

/// After a migration's DDL (in its last transaction): re-describes what it touched.
pub fn changes(version: &str, then: &str) -> Recorded {
    bounded("record what the migration changed", then, || {
        crate::pg::identity::as_owner(|| {
            Spi::get_two_with_args::<JsonB, String>(
                "SELECT changes, fingerprint FROM migrate.record_changes($1)",
                &[version.into()],
            )
        })
        .map(|(changes, fingerprint)| Recorded {
            changes,
            fingerprint,
        })
        .or_bookkeeping("record the migration's changes to the schema")
    })
}

/// A migration applied in the caller's transaction: its changes, recorded there.
pub fn applied(version: &str) -> Recorded {
    changes(version, APPLY_AGAIN)
}

/// A baseline, or an admin's `migrate.record_schema()`: the whole schema, recorded afresh.
pub fn whole() -> Recorded {
    let fingerprint = bounded("record the schema", "run it again", || {
        crate::pg::identity::as_owner(|| {
            Spi::get_one::<String>("SELECT migrate.record_whole_schema()")
        })
        .or_bookkeeping("record the schema")
    });
    Recorded {
        changes: None,
        fingerprint,
    }
}

/// A migration cancelled in the worker: what its finished phases changed is recorded by the
/// next migration, as DDL outside migrations is.
pub fn abandon(version: &str) {
    crate::pg::identity::as_owner(|| {
        Spi::run_with_args(
            "UPDATE migrate.schema_queue SET migration_version = NULL \
             WHERE migration_version = $1",
            &[version.into()],
        )
    })
    .or_bookkeeping("write migrate.schema_queue");
}

/// `migrate.record_schema()` (admins): records the whole schema afresh, as it is now, and
/// returns its fingerprint. For what no DDL event reports (a role renamed, DDL run with
/// `session_replication_role = replica` or with pg_migrate's event triggers disabled): what
/// `migrate.drift()` shows is then taken as the recorded schema. The history is unchanged.
#[pg_extern(volatile, parallel_unsafe)]
fn record_schema() -> String {
    crate::pg::identity::require_admin("record the schema").or_raise();
    crate::history::lock::refuse_unsafe_context().or_raise();
    crate::history::lock::lock_history();
    whole().fingerprint.unwrap_or_default()
}
