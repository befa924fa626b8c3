//! The schema version each session declares (`migrate.client_version`), kept in shared
//! memory by the setting's assign hook: another backend's settings cannot be read, and a
//! session that declared a version and has not used a window's tables yet (an idle pooled
//! connection of the old release) is still a client of that version.
//!
//! One place per backend, written only by its own backend (atomic stores, no lock: the hook
//! runs at every `SET`, and at the end of every transaction that ran a `SET LOCAL`) and read
//! by whoever lists a window's sessions. A version is kept as its key
//! ([`crate::pg::shmem::version_key`]), which is what a window is known by in shared memory.

use pgrx::atomics::PgAtomic;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Backends with a place; one numbered beyond (`max_connections` and the other backends above
/// this) declares unseen, which [`complete`] then says.
pub const PLACES: usize = 8192;

struct Place {
    /// 0: never declared, or its backend exited.
    pid: AtomicI32,
    database: AtomicU32,
    /// The declared version's key; 0: none declared.
    key: AtomicU64,
}

pub struct Declarations {
    places: [Place; PLACES],
    /// A backend numbered beyond the places declared a version.
    beyond: AtomicBool,
}

// SAFETY: plain atomics, valid at any address and in every process.
unsafe impl PGRXSharedMemory for Declarations {}

static DECLARED: PgAtomic<Declarations> = unsafe { PgAtomic::new(c"pg_migrate_declared_versions") };

/// Called from _PG_init during shared_preload_libraries processing.
pub fn init() {
    pg_shmem_init!(
        DECLARED = Declarations {
            places: std::array::from_fn(|_| Place {
                pid: AtomicI32::new(0),
                database: AtomicU32::new(0),
                key: AtomicU64::new(0),
            }),
            beyond: AtomicBool::new(false),
        }
    );
}

/// This client session's number among the server's backends, from 0: none in the
/// postmaster, before a session has one, and in any process that is not a client's session
/// (autovacuum, a replication worker or a parallel worker applying a database's or its
/// leader's settings is no client).
fn backend_number() -> Option<usize> {
    // SAFETY: reads process globals of this backend.
    unsafe {
        if pg_sys::MyBackendType != pg_sys::BackendType::B_BACKEND
            || pg_sys::ParallelWorkerNumber >= 0
        {
            return None;
        }
        // From 1 before PostgreSQL 17.
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        let number = pg_sys::MyBackendId - 1;
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        let number = pg_sys::MyProcNumber;
        usize::try_from(number).ok()
    }
}

/// The assign hook's work: this session now declares `version` (None or empty: none). Never
/// raises (an assign hook must not).
pub fn declare(version: Option<&str>) {
    if !crate::pg::shmem::available() || crate::pg::process::is_migrate_worker() {
        return;
    }
    let Some(number) = backend_number() else {
        return;
    };
    let key = version
        .filter(|v| !v.is_empty())
        .map_or(0, crate::pg::shmem::version_key);
    let declarations = DECLARED.get();
    let Some(place) = declarations.places.get(number) else {
        if key != 0 {
            declarations.beyond.store(true, Ordering::Relaxed);
        }
        return;
    };
    let pid = crate::pg::process::pid();
    if place.pid.load(Ordering::Acquire) != pid {
        if key == 0 {
            // Nothing declared here yet: a session that never sets a version writes nothing.
            return;
        }
        forget_at_exit(number);
    }
    let database = u32::from(crate::pg::process::database());
    place.key.store(key, Ordering::Relaxed);
    place.database.store(database, Ordering::Relaxed);
    place.pid.store(pid, Ordering::Release);
}

/// Frees this backend's place as it exits, whatever ends it: the next backend with its
/// number starts with none declared. (A `SET LOCAL` undone as the session shuts down, after
/// this ran, declares again and registers it again: it runs next, and frees the place.)
fn forget_at_exit(number: usize) {
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn on_exit(_code: i32, number: pg_sys::Datum) {
        if let Some(place) = DECLARED.get().places.get(number.value()) {
            place.pid.store(0, Ordering::Release);
            place.key.store(0, Ordering::Relaxed);
        }
    }
    // SAFETY: registers an exit callback; it runs once, as the process exits. Called once
    // per session: after it, the place holds this session's pid.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(number)) };
}

/// The sessions still connected to `database` that declare a version, as (pid, key).
pub fn sessions(database: pg_sys::Oid) -> Vec<(i32, u64)> {
    if !crate::pg::shmem::available() {
        return Vec::new();
    }
    let database = u32::from(database);
    let found: Vec<(i32, u64)> = DECLARED
        .get()
        .places
        .iter()
        .filter_map(|place| {
            let pid = place.pid.load(Ordering::Acquire);
            let key = place.key.load(Ordering::Relaxed);
            (pid != 0 && key != 0 && place.database.load(Ordering::Relaxed) == database)
                .then_some((pid, key))
        })
        .collect();
    found
        .into_iter()
        .filter(|(pid, _)| crate::pg::process::is_connected(*pid))
        .collect()
}

/// Whether every session's declaration could be kept (none came from a backend numbered
/// beyond the places, since the server started).
pub fn complete() -> bool {
    !crate::pg::shmem::available() || !DECLARED.get().beyond.load(Ordering::Relaxed)
}
