//! Running work in the background worker as the session that submitted it would have run it:
//! the submitter's role and settings (search_path, the migrate.* limits). Migration phases
//! and backfill batches both run this way, so the worker never lends its superuser rights to
//! a caller's SQL.
//!
//! The worker is one session serving every submitter. Whatever one submitter's SQL leaves in
//! it (temporary objects that could capture a name, settings, prepared statements, advisory
//! locks) must never meet another's, so the session is reset (DISCARD ALL, as a connection
//! pooler does between clients) whenever the work changes hands: from one migration or
//! backfill job to another. And `pg_temp` is searched last, so that not even the same
//! submitter's temporary objects capture names the worker's own statements resolve.

use crate::pg::simple_query;
use crate::pg::subxact::Caught;
use pgrx::pg_sys;
use std::cell::RefCell;

/// The worker runs as the bootstrap superuser, so it sets superuser-only settings
/// (migrate.lock_timeout) on the submitter's behalf.
pub const SUPERUSER: pg_sys::GucContext::Type = pg_sys::GucContext::PGC_SUSET;

/// Whose work the worker's session runs; it is reset whenever this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Migration(String),
    Backfill(i64),
    /// A window's upkeep (its set-aside columns, its expiry), as the window's opener.
    Window(String),
    /// The windows' privileges carried again for changed role memberships.
    WindowPrivileges,
}

thread_local! {
    /// Whose work the session last ran.
    static SESSION_OF: RefCell<Option<Owner>> = const { RefCell::new(None) };
}

/// The settings as the worker applies them: the submitter's, with a search_path that
/// searches `pg_temp` last.
pub fn session_settings(settings: &[(String, String)]) -> Vec<(String, String)> {
    crate::pg::identity::trusted_settings(settings.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

/// Resets the session when `owner` (whose work is about to run) is not the one whose work
/// ran last. Called between transactions.
pub fn fresh_session(owner: &Owner) {
    if SESSION_OF.with_borrow(|last| last.as_ref() == Some(owner)) {
        return;
    }
    let had_owner = SESSION_OF.with_borrow(Option::is_some);
    if had_owner {
        // Temporary objects first, under a lock timeout: DISCARD ALL resets lock_timeout
        // before it drops them, and any role can lock a temporary table by its oid.
        let limit = match crate::gucs::LOCK_TIMEOUT_MS.get() {
            ms if ms > 0 => ms,
            _ => 5_000,
        };
        // The settings first, which takes no snapshot: in the serializable, read-only and
        // deferrable mode a phase may have set, DISCARD's would wait for every serializable
        // writer to end.
        let reset = simple_query::run("RESET ALL")
            .and_then(|()| simple_query::run(&format!("SET lock_timeout = {limit}")))
            .and_then(|()| simple_query::run("DISCARD TEMP"))
            .and_then(|()| simple_query::run("DISCARD ALL"));
        if let Err(e) = reset {
            // A session that could not be reset must serve nobody else: a fresh process
            // is the reset that cannot fail. The launcher starts one for the work left.
            simple_query::log(&format!(
                "could not reset the session between submitters, exiting: {}",
                e.message
            ));
            // Between transactions, at the worker's top level; exit callbacks free its slot.
            crate::pg::process::exit(1);
        }
        set_application_name();
    }
    SESSION_OF.set(Some(owner.clone()));
}

pub fn set_application_name() {
    let _ = simple_query::transaction(|| {
        crate::pg::guc::set(
            "application_name",
            Some("pg_migrate worker"),
            SUPERUSER,
            pg_sys::GucAction::GUC_ACTION_SET,
        )
    });
}

/// Runs `f` (which opens its own transactions) for `owner` with `role`'s rights and
/// `settings` in force, in a session no other submitter's work has touched since its reset.
/// Called between transactions.
pub fn as_role<T>(
    owner: &Owner,
    role: &str,
    settings: &[(String, String)],
    f: impl FnOnce() -> Result<T, Caught>,
) -> Result<T, Caught> {
    fresh_session(owner);
    let settings = session_settings(settings);
    let role = std::ffi::CString::new(role).unwrap_or_default();
    // One transaction sets them all for the session, or (aborted) none.
    let result = simple_query::transaction(|| {
        for (name, value) in &settings {
            crate::pg::guc::set(
                name,
                Some(value),
                SUPERUSER,
                pg_sys::GucAction::GUC_ACTION_SET,
            );
        }
        crate::pg::identity::role_oid_or_raise(&role)
    })
    .and_then(|role| crate::pg::identity::switch_user(role, 0, f));
    // RESET, not the values read before: the worker's own then follow postgresql.conf.
    let reset = simple_query::transaction(|| {
        for (name, _) in &settings {
            crate::pg::guc::set(name, None, SUPERUSER, pg_sys::GucAction::GUC_ACTION_SET);
        }
    });
    if let Err(e) = reset {
        simple_query::log(&format!(
            "could not reset the submitter's settings: {}",
            e.message
        ));
    }
    result
}
