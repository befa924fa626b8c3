//! PostgreSQL's emit_log_hook: every message reported to the server log, from any process,
//! passes through it. Errors are counted here, per database, in shared memory: atomic adds
//! only (no lock, no allocation, nothing that could raise while an error is being
//! reported), so that the health gate can compare how often clients fail before and after a
//! change. Installed only from shared_preload_libraries; it chains to the hook before it.
//!
//! The hook runs only for messages sent to the server log (`log_min_messages`, WARNING by
//! default, lets every error through).

use pgrx::atomics::PgAtomic;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Databases with counters of their own; one that reports its first error once all are
/// taken is not counted. `DROP DATABASE` frees its database's.
pub const DATABASES: usize = 256;
/// Counters per database: one per `watch::signals::Signal`.
pub const COUNTERS: usize = 6;

pub struct Slot {
    /// The database's OID; 0 while free. Taken once, by compare-and-swap.
    database: AtomicU32,
    counts: [AtomicU64; COUNTERS],
}

pub struct ErrorCounts {
    slots: [Slot; DATABASES],
}

// SAFETY: plain atomics, valid at any address and in every process.
unsafe impl PGRXSharedMemory for ErrorCounts {}

impl ErrorCounts {
    fn new() -> Self {
        ErrorCounts {
            slots: std::array::from_fn(|_| Slot {
                database: AtomicU32::new(0),
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    fn has_free_slot(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.database.load(Ordering::Acquire) == 0)
    }

    /// `database`'s slot, taken if `claim` and none is.
    fn slot(&self, database: u32, claim: bool) -> Option<&Slot> {
        for slot in &self.slots {
            let held = slot.database.load(Ordering::Acquire);
            if held == database {
                return Some(slot);
            }
            if held == 0 {
                if !claim {
                    return None;
                }
                match slot.database.compare_exchange(
                    0,
                    database,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(slot),
                    // Another process took it meanwhile, maybe for this database.
                    Err(other) if other == database => return Some(slot),
                    Err(_) => continue,
                }
            }
        }
        None
    }
}

static COUNTS: PgAtomic<ErrorCounts> = unsafe { PgAtomic::new(c"pg_migrate_error_counts") };
static mut PREVIOUS: pg_sys::emit_log_hook_type = None;
static mut CLASSIFY: fn(i32) -> Option<usize> = |_| None;

/// Counts errors from now on; `classify` names the counter an error's SQLSTATE adds to
/// besides the last one (every error). Called from _PG_init while shared_preload_libraries
/// is being processed.
pub fn install(classify: fn(i32) -> Option<usize>) {
    pg_shmem_init!(COUNTS = ErrorCounts::new());
    // SAFETY: _PG_init runs once per process, before any message is reported.
    unsafe {
        CLASSIFY = classify;
        PREVIOUS = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log);
    }
}

/// Frees `database`'s counters, as it is being dropped. (Should the drop fail, its counts
/// start again from zero.)
pub fn forget(database: pg_sys::Oid) {
    if !crate::pg::shmem::available() {
        return;
    }
    if let Some(slot) = COUNTS.get().slot(u32::from(database), false) {
        for counter in &slot.counts {
            counter.store(0, Ordering::Relaxed);
        }
        slot.database.store(0, Ordering::Release);
    }
}

/// `database`'s counters: zeros until its first error, None if every slot went to other
/// databases first (or pg_migrate was not preloaded).
pub fn counts(database: pg_sys::Oid) -> Option<[u64; COUNTERS]> {
    if !crate::pg::shmem::available() {
        return None;
    }
    let counts = COUNTS.get();
    match counts.slot(u32::from(database), false) {
        Some(slot) => Some(std::array::from_fn(|i| {
            slot.counts[i].load(Ordering::Relaxed)
        })),
        None if counts.has_free_slot() => Some([0; COUNTERS]),
        None => None,
    }
}

// Not #[pg_guard]: nothing here can raise or panic (a panic would have to become an ERROR,
// inside the reporting of one). Only children of the postmaster count: shared memory is set
// up before the first is forked, and the postmaster has no database.
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null()
        && (*edata).elevel >= pgrx::PgLogLevel::ERROR as std::ffi::c_int
        && pg_sys::IsUnderPostmaster
        && pg_sys::MyDatabaseId != pg_sys::InvalidOid
    {
        let counts = COUNTS.get();
        if let Some(slot) = counts.slot(u32::from(pg_sys::MyDatabaseId), true) {
            if let Some(counter) = CLASSIFY((*edata).sqlerrcode).and_then(|i| slot.counts.get(i)) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(any) = slot.counts.last() {
                any.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(previous) = PREVIOUS {
        previous(edata);
    }
}
