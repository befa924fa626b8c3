//! pg_migrate: safe, versioned schema changes for live PostgreSQL databases.
//!
//! This file only wires the modules together; each has one concern.

mod apply;
mod backfill;
mod catalog;
mod checksum;
mod command;
mod control;
mod ddl_log;
mod dry_run;
mod errors;
mod event_trigger;
mod fingerprint;
mod guard;
mod gucs;
mod history;
mod launcher;
mod lint;
mod parser;
mod parsetree;
mod phases;
mod record;
mod retry;
mod runner;
mod schema_diff;
mod script;
mod security;
mod shared;
mod steps;
mod submitter;
mod subxact;
mod timeouts;
mod toplevel;
mod verify;
mod version;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/tables.sql",
    name = "tables",
    requires = [version::version_key]
);
pgrx::extension_sql_file!("../sql/worker.sql", name = "worker", requires = ["tables"]);
pgrx::extension_sql_file!(
    "../sql/backfill.sql",
    name = "backfill",
    requires = ["tables"]
);
pgrx::extension_sql_file!(
    "../sql/describe.sql",
    name = "describe",
    requires = [fingerprint::hash_sum]
);
pgrx::extension_sql_file!("../sql/verify.sql", name = "verify");
pgrx::extension_sql_file!(
    "../sql/drift.sql",
    name = "drift",
    requires = ["tables", "describe", schema_diff::diff]
);
pgrx::extension_sql_file!(
    "../sql/record.sql",
    name = "record",
    requires = [
        "tables",
        "describe",
        "drift",
        fingerprint::hash_state,
        fingerprint::hash_state_adjust,
        fingerprint::state_fingerprint
    ]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: reads a flag set by the postmaster while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        guard::utility_hook::install();
        shared::init();
        launcher::register();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_migrate'"]
    }
}
