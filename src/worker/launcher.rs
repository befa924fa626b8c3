//! The launcher: one static background worker per cluster, started by the postmaster when
//! pg_migrate is in shared_preload_libraries. It starts a database worker for each database
//! that wants one, at most `migrate.max_workers` at a time. Work submitted by a transaction
//! sets the launcher's latch (or the running worker's) when it commits.
//!
//! Restart policy: the postmaster restarts the launcher 5 s after it dies, and after a crash
//! or restart of the server. At its own start the launcher asks for a worker in every
//! database that accepts connections, so pending and interrupted migrations resume; a worker
//! finding nothing to do (or no pg_migrate) exits at once. A worker that exits on an error
//! is started again by the launcher; one idle for `migrate.worker_idle_timeout` exits.

use crate::gucs;

use crate::pg::shmem;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Registers the launcher with the postmaster (from _PG_init, while preloading).
pub fn register() {
    BackgroundWorkerBuilder::new("pg_migrate launcher")
        .set_type("pg_migrate launcher")
        .set_function("pg_migrate_launcher_main")
        .set_library("pg_migrate")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// How long a started worker has to register before it is started again.
const STARTING: Duration = Duration::from_secs(2);

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_migrate_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // Shared catalogs only: enough to list databases.
    BackgroundWorker::connect_worker_to_spi(None, None);
    shmem::register_launcher();
    // Every database is asked once (as slots allow), so interrupted migrations resume.
    let mut backlog = crate::pg::process::connectable_databases();
    shmem::want(&mut backlog);

    // A database whose worker was just started, and has not registered yet, is not started
    // twice.
    let mut started: HashMap<u32, Instant> = HashMap::new();
    while BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
        if BackgroundWorker::sighup_received() {
            crate::pg::process::reload_config();
        }
        if shmem::take_overflow() {
            backlog = crate::pg::process::connectable_databases();
        }
        if !backlog.is_empty() {
            shmem::want(&mut backlog);
        }
        shmem::wake_due();
        let (wanted, mut running) = shmem::wanted();
        // Read only when a worker is about to start.
        let mut live: Option<Vec<u32>> = None;
        for database in wanted {
            if running >= gucs::MAX_WORKERS.get().max(0) as usize {
                break;
            }
            if started
                .get(&database)
                .is_some_and(|t| t.elapsed() < STARTING)
            {
                continue;
            }
            // A database dropped, or closed to connections, since it asked: its worker would
            // only fail to connect, again and again.
            if !live
                .get_or_insert_with(crate::pg::process::connectable_databases)
                .contains(&database)
            {
                shmem::forget(database, false);
                continue;
            }
            if start_worker(database) {
                started.insert(database, Instant::now());
                running += 1;
            }
        }
    }
    // Terminated (pg_terminate_backend, or shutdown). Exit status 1, as PostgreSQL's own
    // logical replication launcher does: the postmaster then restarts the launcher after its
    // restart time, where status 0 would unregister it for good. At shutdown nothing restarts.
    shmem::unregister_launcher();
    // Nothing is held here.
    crate::pg::process::exit(1);
}

fn start_worker(database: u32) -> bool {
    let pid = crate::pg::process::pid();
    BackgroundWorkerBuilder::new(&format!("pg_migrate worker for database {database}"))
        .set_type("pg_migrate worker")
        .set_function("pg_migrate_worker_main")
        .set_library("pg_migrate")
        .set_argument(Some(pg_sys::Datum::from(database)))
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(pid)
        .load_dynamic()
        .is_ok()
}
