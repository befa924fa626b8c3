//! Where in the WAL a transaction's commit record ends, for the transactions that finish a
//! migration or one of the worker's phases: a standby has replayed the migration once its
//! replay position reaches it. PostgreSQL knows that position only once the transaction has
//! committed (`XactLastCommitEnd`), when it can write nothing more; the commit callback keeps
//! it in shared memory, keyed by the transaction id the history row names, and a later
//! bookkeeping transaction writes it into the history.

use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init, pg_sys};
use std::cell::Cell;

/// Commits remembered over every database until written down: far more than commit between
/// two bookkeeping transactions. One overwritten before then gets the later bound the
/// history falls back to (a WAL position read after the commit).
const KEPT: usize = 256;

#[derive(Clone, Copy, Default)]
struct Commit {
    database: u32,
    /// The top-level transaction id, with its epoch (xid8).
    xid: u64,
    lsn: u64,
}

#[derive(Clone, Copy)]
pub struct Commits {
    next: usize,
    commits: [Commit; KEPT],
}

impl Default for Commits {
    fn default() -> Self {
        Commits {
            next: 0,
            commits: [Commit::default(); KEPT],
        }
    }
}

// SAFETY: plain integers behind an LWLock.
unsafe impl PGRXSharedMemory for Commits {}

// SAFETY: a name no other extension uses.
static COMMITS: PgLwLock<Commits> = unsafe { PgLwLock::new(c"pg_migrate_commit_lsns") };

thread_local! {
    /// The transaction this backend is in finishes a migration or a phase: its id.
    static PENDING: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called from _PG_init during shared_preload_libraries processing.
pub fn init() {
    pg_shmem_init!(COMMITS);
}

/// Keeps where the current transaction's commit record ends, once it commits. Gives the
/// transaction an id if it has none (the history row names it).
pub fn keep_at_commit() {
    if !crate::pg::shmem::available() {
        return;
    }
    // SAFETY: assigns the top-level transaction id if needed, or raises.
    let xid = unsafe { pg_sys::GetTopFullTransactionId() }.value;
    PENDING.set(xid);
    if !REGISTERED.replace(true) {
        // SAFETY: registers a callback for the life of this backend.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

/// This database's remembered commits: (transaction id, end of its commit record).
pub fn kept(database: pg_sys::Oid) -> Vec<(u64, u64)> {
    if !crate::pg::shmem::available() {
        return Vec::new();
    }
    let database = u32::from(database);
    COMMITS
        .share()
        .commits
        .iter()
        .filter(|c| c.database == database && c.lsn != 0)
        .map(|c| (c.xid, c.lsn))
        .collect()
}

/// The WAL position of the end of this backend's last commit record: 0 before its first.
pub fn last_commit_end() -> u64 {
    // SAFETY: reads a backend-global variable.
    unsafe { pg_sys::XactLastCommitEnd }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            let xid = PENDING.replace(0);
            let lsn = last_commit_end();
            if xid != 0 && lsn != 0 {
                // SAFETY: reads this backend's database.
                let database = u32::from(unsafe { pg_sys::MyDatabaseId });
                let mut commits = COMMITS.exclusive();
                let at = commits.next % KEPT;
                commits.commits[at] = Commit { database, xid, lsn };
                commits.next = (at + 1) % KEPT;
            }
        }
        // A prepared transaction commits in another session: the history falls back to a
        // position read after it.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            PENDING.set(0);
        }
        _ => {}
    }
}
