//! This process as the postmaster runs it: loading, signals, configuration reloads, sleeping
//! on the latch, exiting; and the databases a launcher may start workers for.

use pgrx::pg_sys;
use std::time::Duration;

/// Whether the library is being loaded from shared_preload_libraries (in the postmaster).
pub fn loading_at_server_start() -> bool {
    // SAFETY: reads a flag set by the postmaster while it loads shared_preload_libraries.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

pub fn pid() -> i32 {
    // SAFETY: reads this process's pid.
    unsafe { pg_sys::MyProcPid }
}

/// Whether a backend with this pid is connected (a pid the system gave again to a later
/// backend reads as the same session).
pub fn is_connected(pid: i32) -> bool {
    // SAFETY: looks the pid up in the process array under its lock; the PGPROC is not kept.
    !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

/// Whether the current user may see what the session `pid` does, as pg_stat_activity
/// decides: it has the privileges of the session's role, or of pg_read_all_stats.
pub fn may_see(pid: i32) -> bool {
    // SAFETY: looks the pid up in the process array; its role id is read once, as
    // PostgreSQL's own statistics views read it, and the PGPROC is not kept.
    unsafe {
        let process = pg_sys::BackendPidGetProc(pid);
        if process.is_null() {
            return false;
        }
        let role = (*process).roleId;
        let me = pg_sys::GetUserId();
        pg_sys::has_privs_of_role(me, role)
            || pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
    }
}

/// The server's system identifier: what pg_control_system() reports, the same on a
/// physical copy (a standby, a restored base backup), another after initdb.
pub fn system_identifier() -> i64 {
    // SAFETY: reads the control file's identifier, which shared memory holds.
    unsafe { pg_sys::GetSystemIdentifier() as i64 }
}

thread_local! {
    static MIGRATE_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This process is one of pg_migrate's database workers (said once, as it starts).
pub fn mark_migrate_worker() {
    MIGRATE_WORKER.set(true);
}

/// Whether this process is one of pg_migrate's database workers: its writes (backfills,
/// phases) are pg_migrate's own, not an application version's.
pub fn is_migrate_worker() -> bool {
    MIGRATE_WORKER.get()
}

/// The OID of the database this backend is connected to.
pub fn database() -> pg_sys::Oid {
    // SAFETY: reads this backend's database, set once it connected.
    unsafe { pg_sys::MyDatabaseId }
}

unsafe extern "C-unwind" {
    /// postgres.c's SIGTERM handler: sets ProcDiePending, so the next CHECK_FOR_INTERRUPTS ends
    /// the process (cancelling a statement under way).
    #[link_name = "die"]
    fn die(signal: std::ffi::c_int);
}

/// SIGTERM cancels whatever runs and exits, as it does a backend.
pub fn die_on_sigterm() {
    // SAFETY: installs PostgreSQL's own handler, the raw C function (pgrx wraps pg_sys::die).
    // PostgreSQL 18 names the backend's pqsignal pqsignal_be.
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die))
    };
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die))
    };
}

/// Re-reads the configuration if a SIGHUP asked for it, as a backend does between queries.
pub fn reload_config_if_asked() {
    // SAFETY: reads and clears the flag the SIGHUP handler sets; what a backend does on SIGHUP.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Re-reads the configuration (after pgrx's SIGHUP handler said so).
pub fn reload_config() {
    // SAFETY: what a backend does on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// Ends the process the way a FATAL error does. Only between transactions, holding nothing;
/// exit callbacks run.
pub fn exit(code: i32) -> ! {
    // SAFETY: as documented above; proc_exit does not return (18's binding does not say so).
    unsafe { pg_sys::proc_exit(code) };
    #[allow(unreachable_code)]
    {
        unreachable!("proc_exit returned")
    }
}

/// Sleeps on the process latch for `d` at most; a SetLatch (a wake-up, a signal) ends it
/// early, postmaster death ends the process.
pub fn sleep_on_latch(d: Duration) {
    // SAFETY: the backend's own latch, waited on from its main thread.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis().min(i64::MAX as u128) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Every database that accepts connections, read from pg_database as the autovacuum launcher
/// reads it (in a transaction of its own: the caller is in none).
pub fn connectable_databases() -> Vec<u32> {
    let mut found = Vec::new();
    // SAFETY: a catalog scan of the shared pg_database, inside a transaction of its own.
    unsafe {
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_database>();
            if form.datallowconn && !form.datistemplate {
                found.push(u32::from(form.oid));
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        pg_sys::CommitTransactionCommand();
    }
    found
}

/// The clock (TimestampTz).
pub fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// When the server started (TimestampTz): `pg_postmaster_start_time()`.
pub fn server_started() -> i64 {
    // SAFETY: set by the postmaster before any backend starts, never changed after.
    unsafe { pg_sys::PgStartTime }
}
