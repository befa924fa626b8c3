//! The recorded schema (`sql/record.sql`), from the Rust side: brought up to date before a
//! migration runs, and with what it touched once it has run. Both are bookkeeping and run as
//! the extension's owner; neither describes more than the objects DDL touched, but for the
//! once-per-database recording of the whole schema, which happens before a migration takes
//! any lock of its own.

use crate::errors::OrBookkeeping;
use crate::security;
use pgrx::prelude::*;
use pgrx::JsonB;

/// What a migration changed in the recorded schema, and the fingerprint after it.
pub struct Recorded {
    pub changes: Option<JsonB>,
    pub fingerprint: String,
}

/// Before a migration: DDL outside migrations since the last one is recorded first (or the
/// whole schema, where nothing of this database is recorded yet), so that the migration's
/// changes are its own.
pub fn drift() {
    security::as_owner(|| Spi::run("SELECT migrate.record_drift()"))
        .or_bookkeeping("record the schema before the migration");
}

/// After a migration's DDL (in its last transaction): re-describes what it touched.
pub fn changes(version: &str) -> Recorded {
    security::as_owner(|| {
        Spi::get_two_with_args::<JsonB, String>(
            "SELECT changes, fingerprint FROM migrate.record_changes($1)",
            &[version.into()],
        )
    })
    .map(|(changes, fingerprint)| Recorded {
        changes,
        fingerprint: fingerprint.unwrap_or_default(),
    })
    .or_bookkeeping("record the migration's changes to the schema")
}

/// A baseline: the whole schema, recorded afresh.
pub fn whole() -> Recorded {
    let fingerprint =
        security::as_owner(|| Spi::get_one::<String>("SELECT migrate.record_whole_schema()"))
            .or_bookkeeping("record the schema");
    Recorded {
        changes: None,
        fingerprint: fingerprint.unwrap_or_default(),
    }
}

/// A migration cancelled in the worker: what its finished phases changed is recorded by the
/// next migration, as DDL outside migrations is.
pub fn abandon(version: &str) {
    security::as_owner(|| {
        Spi::run_with_args(
            "UPDATE migrate.schema_queue SET migration_version = NULL \
             WHERE migration_version = $1",
            &[version.into()],
        )
    })
    .or_bookkeeping("write migrate.schema_queue");
}
