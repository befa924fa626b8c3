//! Who may do what.
//!
//! Applying and baselining need membership in `migrate_admin` (superusers always qualify).
//! A migration's script runs with the caller's own rights. pg_migrate's tables are writable by
//! their owner only; pg_migrate writes them after switching to that owner, with `search_path`
//! pinned, so nobody can forge history or DDL-log rows and no caller-controlled object can run
//! with the owner's rights.

use crate::errors::Problem;
use crate::pg::guc::pinned;
use crate::pg::guc::SettingScope;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::ffi::CStr;

pub const ADMIN_ROLE: &str = "migrate_admin";

/// Refuses callers that are not members of `migrate_admin`; `action` completes
/// "... may not <action>".
pub fn require_admin(action: &str) -> Result<(), Problem> {
    if is_admin() {
        return Ok(());
    }
    let user = current_user_name();
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("role \"{user}\" may not {action}"),
        format!("Only members of {ADMIN_ROLE} (and superusers) may change the schema history."),
        format!("Ask an administrator to run: GRANT {ADMIN_ROLE} TO \"{user}\";"),
    ))
}

/// Refuses callers who do not have the privileges of `role`: the role the background worker
/// runs a migration's phases as. Resuming someone else's migration would run it, at a time
/// of the caller's choosing, with rights the caller lacks (pg_cron lets only a job's owner
/// change it, for the same reason).
pub fn require_privileges_of(role: &str, action: &str) -> Result<(), Problem> {
    if role_oid(role).is_some_and(|target| has_privs_of(current_user(), target)) {
        return Ok(());
    }
    let user = current_user_name();
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("role \"{user}\" may not {action}"),
        format!(
            "The migration was submitted by role \"{role}\", and its phases run with that \
             role's rights."
        ),
        format!("Run it as \"{role}\" (SET ROLE), or as a member of that role."),
    ))
}

pub fn is_admin() -> bool {
    role_is_admin(current_user())
}

pub fn current_user_name() -> String {
    role_name(current_user())
}

/// A role's name by oid (its oid as text when it no longer exists).
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId returns a palloc'd copy of the role's name, or NULL.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            return role.to_u32().to_string();
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// Runs `f` as the owner of pg_migrate's tables, with `search_path` pinned.
///
/// Owner rights are for bookkeeping only: reading and writing `migrate.*` and the catalogs,
/// never an expression or statement a caller wrote. Every section that uses them, and what
/// it evaluates:
/// - `write_as_owner` (steps, backfill jobs): one INSERT or UPDATE of `migrate.step_records` or
///   `migrate.backfill_jobs`, values as parameters.
/// - `history::insert`: the history row, values as parameters, with `migrate.describe()`,
///   `fingerprint_of` and `changes` of the catalogs (deparsing with `pg_get_*def`, which
///   evaluates no user expression).
/// - `ddl_log::write` and `ddl_log::record_guard`: INSERT ... SELECT from
///   `pg_event_trigger_ddl_commands()` / `pg_event_trigger_dropped_objects()` or from
///   parameters, with built-in functions only.
/// - `guard::trigger::guard_drop`: reads `pg_event_trigger_dropped_objects()` and this
///   transaction's DDL-log rows.
/// - `verify::record`: the verdict, as parameters.
/// - `dry_run::logged_objects` and `last_log_id`: reads of `migrate.ddl_log`, limited to
///   this transaction's own rows.
/// - `backfill::insert`: the job row, as parameters; `job::summary_for_update`: a row lock.
///
/// Expressions a caller wrote (constraint expressions reached through the catalogs, verify
/// queries, backfill clauses) run through [`as_author`] instead, and scripts run as the
/// caller or, in the worker, as the submitter (`submitter::as_role`).
pub fn as_owner<T>(f: impl FnOnce() -> T) -> T {
    switch_user(table_owner(), 0, || pinned(f))
}

/// Runs `f` — SQL or an expression that `role` wrote — with `role`'s rights only, as
/// PostgreSQL runs an index expression during ANALYZE: a security-restricted operation (no
/// SET ROLE, no temporary tables), with `search_path` set to the author's path and `pg_temp`
/// searched last. Whoever calls pg_migrate (a superuser verifying, the worker) lends nothing.
///
/// `settings` are the author's (search_path, and standard_conforming_strings, which decides
/// how its text lexes); the search_path gets `pg_temp` last.
pub fn as_author<T>(role: pg_sys::Oid, settings: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let settings = trusted_settings(settings.iter().copied());
    let settings: Vec<(&str, &str)> = settings
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    switch_user(role, pg_sys::SECURITY_RESTRICTED_OPERATION as i32, || {
        let _settings = SettingScope::set(&settings);
        f()
    })
}

/// Whether `switch_user` has put this backend under another role than its own (a submitter's
/// work runs there).
pub fn as_another_role() -> bool {
    // SAFETY: reads this backend's security context.
    unsafe { pg_sys::InLocalUserIdChange() }
}

/// Runs `f` as `role`, with `flags` added to the security context; the identity comes back
/// when `f` returns or raises.
pub fn switch_user<T>(role: pg_sys::Oid, flags: i32, f: impl FnOnce() -> T) -> T {
    struct Restore {
        user: pg_sys::Oid,
        context: i32,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back the identity saved below; transaction abort would also do it.
            unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
        }
    }
    // SAFETY: the switch PostgreSQL makes for SECURITY DEFINER functions and maintenance
    // commands; the local-userid flag stops SET ROLE / SET SESSION AUTHORIZATION inside `f`.
    unsafe {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        let _restore = Restore { user, context };
        pg_sys::SetUserIdAndSecContext(
            role,
            context | flags | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        f()
    }
}

/// A submitter's or author's settings as pg_migrate applies them: the same, except that
/// search_path searches `pg_temp` last.
pub fn trusted_settings<'a>(
    settings: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    settings
        .into_iter()
        .map(|(name, value)| match name {
            "search_path" => (name.to_string(), trusted_search_path(value)),
            _ => (name.to_string(), value.to_string()),
        })
        .collect()
}

/// `path` (a search_path setting) with every temporary schema taken out and `pg_temp` put
/// last, where PostgreSQL never looks for functions or operators and finds relations and
/// types only when no other schema has them. A name can then not be captured by an object
/// somebody created in this session's temporary schema.
pub fn trusted_search_path(path: &str) -> String {
    let mut kept: Vec<&str> = split_search_path(path)
        .into_iter()
        .filter(|entry| !names_temporary_schema(entry))
        .collect();
    kept.push("pg_temp");
    kept.join(", ")
}

/// Whether a search_path entry names a temporary schema: `pg_temp` (PostgreSQL folds an
/// unquoted name to lower case; a quoted one is taken as written) or another session's
/// `pg_temp_N`.
fn names_temporary_schema(entry: &str) -> bool {
    let name = match entry.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => entry.to_ascii_lowercase(),
    };
    name == "pg_temp" || name.starts_with("pg_temp_")
}

/// The entries of a search_path setting, split at commas outside double quotes.
fn split_search_path(path: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in path.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                entries.push(path[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(path[start..].trim());
    entries.retain(|e| !e.is_empty());
    entries
}

/// A role's oid by name; None when it no longer exists.
pub fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a catalog lookup by name; a missing role yields InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// A role's oid by name; raises PostgreSQL's own error when it does not exist.
pub fn role_oid_or_raise(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: a catalog lookup by name; a missing role raises.
    unsafe { pg_sys::get_role_oid(name.as_ptr(), false) }
}

/// Whether `role` is a member of migrate_admin or a superuser.
pub fn role_is_admin(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups by name and oid.
    unsafe {
        let admin = pg_sys::get_role_oid(c"migrate_admin".as_ptr(), true);
        pg_sys::superuser_arg(role)
            || (admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, admin))
    }
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup by oid.
    unsafe { pg_sys::superuser_arg(role) }
}

/// Whether `role` has the privileges of `other` (is it, a member of it, or a superuser).
pub fn has_privs_of(role: pg_sys::Oid, other: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup by oids.
    unsafe { pg_sys::has_privs_of_role(role, other) }
}

pub fn current_user() -> pg_sys::Oid {
    // SAFETY: reads the backend's current user id.
    unsafe { pg_sys::GetUserId() }
}

/// The owner of `migrate.history`: the superuser who installed the extension. Not the
/// schema's owner, which (if the schema existed before) could be anyone.
fn table_owner() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name and a syscache read, released before returning.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"migrate".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(c"history".as_ptr(), namespace);
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as _,
            pg_sys::Datum::from(relid),
        );
        if tuple.is_null() {
            Problem::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "table migrate.history is missing",
                "pg_migrate's history table was dropped or renamed.",
                "Reinstall the extension: DROP EXTENSION pg_migrate; CREATE EXTENSION pg_migrate;",
            )
            .raise();
        }
        let owner = (*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>()).relowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    }
}

#[cfg(test)]
mod unit {
    use super::trusted_search_path;

    #[test]
    fn temporary_schemas_go_last() {
        assert_eq!(trusted_search_path("public"), "public, pg_temp");
        assert_eq!(
            trusted_search_path("\"$user\", public"),
            "\"$user\", public, pg_temp"
        );
        assert_eq!(
            trusted_search_path("pg_temp, app, public"),
            "app, public, pg_temp"
        );
        assert_eq!(trusted_search_path("PG_TEMP,app,pg_temp_3"), "app, pg_temp");
        assert_eq!(trusted_search_path(""), "pg_temp");
        assert_eq!(trusted_search_path("\"a,b\", c"), "\"a,b\", c, pg_temp");
        // A quoted name in another case is an ordinary schema.
        assert_eq!(trusted_search_path("\"PG_TEMP\""), "\"PG_TEMP\", pg_temp");
    }
}
