//! Running work in the background worker as the session that submitted it would have run it:
//! the submitter's role and settings (search_path, the migrate.* limits). Migration phases
//! and backfill batches both run this way, so the worker never lends its superuser rights to
//! a caller's SQL.

use crate::gucs;
use crate::subxact::Caught;
use crate::toplevel;
use pgrx::pg_sys;
use std::ffi::CString;

/// The worker runs as the bootstrap superuser, so it sets superuser-only settings
/// (migrate.lock_timeout) on the submitter's behalf.
pub const SUPERUSER: pg_sys::GucContext::Type = pg_sys::GucContext::PGC_SUSET;

/// Runs `f` (which opens its own transactions) with `role`'s rights and `settings` in force.
/// Called between transactions.
pub fn as_role<T>(
    role: &str,
    settings: &[(String, String)],
    f: impl FnOnce() -> Result<T, Caught>,
) -> Result<T, Caught> {
    let role = CString::new(role).unwrap_or_default();
    // One transaction sets them all for the session, or (aborted) none.
    let result = toplevel::transaction(|| {
        for (name, value) in settings {
            gucs::set(
                name,
                Some(value),
                SUPERUSER,
                pg_sys::GucAction::GUC_ACTION_SET,
            );
        }
        // SAFETY: a catalog lookup by name.
        unsafe { pg_sys::get_role_oid(role.as_ptr(), false) }
    })
    .and_then(|role| {
        // SAFETY: the switch a SECURITY DEFINER function makes; restored below, and by every
        // transaction abort in between.
        unsafe {
            let (mut user, mut context) = (pg_sys::InvalidOid, 0);
            pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
            pg_sys::SetUserIdAndSecContext(
                role,
                context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
            let result = f();
            pg_sys::SetUserIdAndSecContext(user, context);
            result
        }
    });
    // RESET, not the values read before: the worker's own then follow postgresql.conf.
    let reset = toplevel::transaction(|| {
        for (name, _) in settings {
            gucs::set(name, None, SUPERUSER, pg_sys::GucAction::GUC_ACTION_SET);
        }
    });
    if let Err(e) = reset {
        toplevel::log(&format!(
            "could not reset the submitter's settings: {}",
            e.message
        ));
    }
    result
}
