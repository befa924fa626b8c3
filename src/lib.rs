//! pg_migrate: safe, versioned schema changes for live PostgreSQL databases.
//!
//! This file only wires the modules together; each has one concern.

mod apply;
mod backfill;
mod errors;
mod guard;
mod gucs;
mod history;
mod inspect;
mod migration;
mod pg;
mod schema;
mod watch;
mod window;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/history.sql",
    name = "history",
    requires = [migration::version::version_key]
);
pgrx::extension_sql_file!("../sql/ddl_log.sql", name = "ddl_log");
pgrx::extension_sql_file!("../sql/worker.sql", name = "worker", requires = ["history"]);
pgrx::extension_sql_file!(
    "../sql/backfill.sql",
    name = "backfill",
    requires = ["history"]
);
pgrx::extension_sql_file!(
    "../sql/inspect/describe.sql",
    name = "describe",
    requires = [
        schema::fingerprint::hash_sum,
        schema::fingerprint::object_hash_of_row
    ]
);
pgrx::extension_sql_file!("../sql/inspect/verify.sql", name = "verify");
pgrx::extension_sql_file!(
    "../sql/inspect/drift.sql",
    name = "drift",
    requires = ["history", "ddl_log", "describe", schema::diff::diff]
);
pgrx::extension_sql_file!(
    "../sql/record.sql",
    name = "record",
    requires = [
        "history",
        "describe",
        "drift",
        schema::fingerprint::hash_state,
        schema::fingerprint::hash_state_adjust,
        schema::fingerprint::state_fingerprint
    ]
);
pgrx::extension_sql_file!(
    "../sql/guard.sql",
    name = "guard",
    requires = [
        "history",
        "ddl_log",
        "record",
        guard::rules::rule_catalog,
        guard::hooks::trigger::guard_ddl,
        guard::hooks::trigger::guard_rewrite,
        guard::hooks::trigger::guard_drop,
        history::ddl_log::log_ddl_command,
        history::ddl_log::log_sql_drop
    ]
);
pgrx::extension_sql_file!(
    "../sql/window.sql",
    name = "window",
    requires = [
        "history",
        "worker",
        "backfill",
        window::window_writes,
        window::window_sessions,
        window::privileges::follow_window_grants
    ]
);
pgrx::extension_sql_file!(
    "../sql/watch.sql",
    name = "watch",
    requires = ["history", watch::error_counters]
);
pgrx::extension_sql_file!(
    "../sql/replicas.sql",
    name = "replicas",
    requires = ["history", history::commit_lsn::kept_commits]
);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    if pg::process::loading_at_server_start() {
        pg::utility_hook::install(
            &[
                guard::hooks::utility_hook::judge,
                window::sessions::utility_statement,
                watch::utility_statement,
            ],
            &[watch::utility_statement_done],
        );
        pg::executor_hook::install(pg::executor_hook::Observer {
            wanted: window::sessions::wanted,
            started: window::sessions::started,
            ended: window::sessions::ended,
        });
        pg::shmem::init();
        pg::declared::init();
        pg::error_hook::install(watch::signals::classify);
        pg::sample_ring::init();
        pg::commit_lsn::init();
        worker::launcher::register();
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
