//! Who may do what.
//!
//! Applying and baselining need membership in `migrate_admin` (superusers always qualify).
//! A migration's script runs with the caller's own rights. pg_migrate's tables are writable by
//! their owner only; pg_migrate writes them after switching to that owner, with `search_path`
//! pinned, so nobody can forge history or DDL-log rows and no caller-controlled object can run
//! with the owner's rights.

use crate::errors::Problem;
use crate::timeouts::SettingScope;
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
    let name = std::ffi::CString::new(role).unwrap_or_default();
    // SAFETY: catalog lookups by name; a missing role yields InvalidOid.
    let allowed = unsafe {
        let target = pg_sys::get_role_oid(name.as_ptr(), true);
        target != pg_sys::InvalidOid && pg_sys::has_privs_of_role(pg_sys::GetUserId(), target)
    };
    if allowed {
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
    // SAFETY: catalog lookups by name; a missing role yields InvalidOid.
    unsafe {
        let admin = pg_sys::get_role_oid(c"migrate_admin".as_ptr(), true);
        let user = pg_sys::GetUserId();
        pg_sys::superuser_arg(user)
            || (admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(user, admin))
    }
}

pub fn current_user_name() -> String {
    // SAFETY: GetUserNameFromId returns a palloc'd copy of the role's name.
    unsafe {
        CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false))
            .to_string_lossy()
            .into_owned()
    }
}

/// Runs `f` — pg_migrate's own queries — with `search_path` pinned to `pg_catalog`, so that
/// no caller-created function or operator (an `=` on `numeric[]`, say) can stand in for a
/// built-in. `pg_temp` is listed last; PostgreSQL never looks there for functions or
/// operators.
pub fn pinned<T>(f: impl FnOnce() -> T) -> T {
    let _path = SettingScope::set(&[("search_path", "pg_catalog, pg_temp")]);
    f()
}

/// The first column of every row `sql` returns (NULLs left out), read with `search_path`
/// pinned: pg_migrate's list-valued queries of its tables and the catalogs.
pub fn pinned_column<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Vec<T>, pgrx::spi::Error> {
    pinned(|| {
        pgrx::Spi::connect(|client| {
            client
                .select(sql, None, args)?
                .map(|row| row.get::<T>(1))
                .collect::<Result<Vec<Option<T>>, _>>()
        })
    })
    .map(|values| values.into_iter().flatten().collect())
}

/// The first row `sql` returns, mapped, read with `search_path` pinned: pg_migrate's
/// single-row queries of its tables and the catalogs.
pub fn pinned_row<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Result<Option<T>, pgrx::spi::Error> {
    pinned(|| {
        pgrx::Spi::connect(|client| match client.select(sql, Some(1), args)?.next() {
            Some(row) => map(row).map(Some),
            None => Ok(None),
        })
    })
}

/// Writes one of pg_migrate's tables (`sql`, an INSERT or UPDATE) as their owner; a failure
/// is a bookkeeping error naming `table`.
pub fn write_as_owner(table: &str, sql: &str, args: &[pgrx::datum::DatumWithOid]) {
    use crate::errors::OrBookkeeping;
    as_owner(|| pgrx::Spi::run_with_args(sql, args)).or_bookkeeping(&format!("write {table}"));
}

/// `pinned_row` for pg_migrate's own tables, where a failure is a bookkeeping error.
pub fn read_own_row<T>(
    table: &str,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    use crate::errors::OrBookkeeping;
    pinned_row(sql, args, map).or_bookkeeping(&format!("read {table}"))
}

/// Runs `f` as the owner of pg_migrate's tables, with `search_path` pinned.
pub fn as_owner<T>(f: impl FnOnce() -> T) -> T {
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
    let owner = table_owner();
    // SAFETY: the same switch PostgreSQL makes for RI checks and maintenance commands; the
    // local-userid flag stops SET ROLE / SET SESSION AUTHORIZATION inside `f`.
    unsafe {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        let _restore = Restore { user, context };
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        pinned(f)
    }
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
