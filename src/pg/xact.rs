//! The current transaction: whether it may write, its isolation, its id, and the
//! heavyweight locks it takes on database objects.

use pgrx::pg_sys;
use std::ffi::CString;

/// A read-only transaction, or a standby's.
pub fn read_only() -> bool {
    // SAFETY: reads backend-global flags.
    unsafe { pg_sys::XactReadOnly || pg_sys::RecoveryInProgress() }
}

/// This server is a standby (or still recovering after a crash).
pub fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// REPEATABLE READ or SERIALIZABLE: the transaction keeps its first snapshot.
pub fn keeps_its_snapshot() -> bool {
    // SAFETY: reads a backend-global setting.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// Assigns this transaction's id (if it has none): later reads take fresh snapshots.
pub fn assign_id() {
    // SAFETY: assigns this transaction's id, or raises.
    unsafe { pg_sys::GetCurrentTransactionId() };
}

/// An installed extension's OID; raises if it is not installed.
pub fn extension_oid(name: &str) -> pg_sys::Oid {
    let name = CString::new(name).expect("extension names have no NUL");
    // SAFETY: a catalog lookup by name; raises if the extension is gone.
    unsafe { pg_sys::get_extension_oid(name.as_ptr(), false) }
}

/// An EXCLUSIVE lock on a database object until the transaction ends, waiting under
/// lock_timeout (answering cancellation and the deadlock detector).
pub fn lock_object(class: pg_sys::Oid, object: pg_sys::Oid) {
    // SAFETY: a heavyweight lock request, released at transaction end.
    unsafe { pg_sys::LockDatabaseObject(class, object, 0, pg_sys::ExclusiveLock as _) }
}

/// The same lock, only if it is free now.
pub fn try_lock_object(class: pg_sys::Oid, object: pg_sys::Oid) -> bool {
    // SAFETY: a heavyweight lock request that does not wait, released at transaction end.
    unsafe { pg_sys::ConditionalLockDatabaseObject(class, object, 0, pg_sys::ExclusiveLock as _) }
}

/// ACCESS SHARE on the pg_migrate extension object until the transaction ends, if the
/// extension is installed. DROP EXTENSION takes ACCESS EXCLUSIVE on it before it drops any of
/// the extension's tables: a transaction that takes this first either waits for the DROP to
/// end (and then finds the extension gone), or makes the DROP wait for it, instead of the two
/// deadlocking over the tables. Waits answer cancellation and termination.
pub fn share_extension() {
    // SAFETY: a catalog lookup by name that does not raise when it is missing.
    let extension = unsafe { pg_sys::get_extension_oid(c"pg_migrate".as_ptr(), true) };
    if extension == pg_sys::InvalidOid {
        return;
    }
    // SAFETY: a heavyweight lock request, released at transaction end.
    unsafe {
        pg_sys::LockDatabaseObject(
            pg_sys::ExtensionRelationId,
            extension,
            0,
            pg_sys::AccessShareLock as _,
        )
    }
}

/// The wall clock, as PostgreSQL timestamps count it (microseconds since 2000).
pub fn clock() -> pg_sys::TimestampTz {
    // SAFETY: reads the clock; no error paths.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The current transaction's backend-local id: never the same for two transactions of one
/// backend (until it wraps around, after four billion of them).
/// 0 (InvalidLocalTransactionId) in a process without one, such as the postmaster.
pub fn local_id() -> pg_sys::LocalTransactionId {
    // SAFETY: MyProc is this backend's PGPROC when it is set at all.
    unsafe {
        if pg_sys::MyProc.is_null() {
            return 0;
        }
        #[cfg(not(any(feature = "pg17", feature = "pg18")))]
        {
            (*pg_sys::MyProc).lxid
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            (*pg_sys::MyProc).vxid.lxid
        }
    }
}

/// Whether an extension's script is running (CREATE or ALTER EXTENSION).
pub fn creating_extension() -> bool {
    // SAFETY: reads a backend-global flag.
    unsafe { pg_sys::creating_extension }
}
