//! Settings as the server keeps them: set for a scope, for the transaction or the session;
//! read as SHOW prints them; their records in the GUC tables.

use pgrx::pg_sys;
use std::ffi::{c_int, CString};

/// GUC values set for a scope and restored when it ends, as `SET` clauses of functions are.
pub struct SettingScope {
    nest_level: c_int,
}

impl SettingScope {
    pub fn set(settings: &[(&str, &str)]) -> SettingScope {
        // SAFETY: NewGUCNestLevel/AtEOXact_GUC bracket the change exactly as
        // fmgr_security_definer does; on an ERROR the (sub)transaction abort pops the level.
        unsafe {
            let nest_level = pg_sys::NewGUCNestLevel();
            for (name, value) in settings {
                set(
                    name,
                    Some(value),
                    pg_sys::GucContext::PGC_USERSET,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                );
            }
            SettingScope { nest_level }
        }
    }
}

impl Drop for SettingScope {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // An ERROR is unwinding: the subtransaction abort that follows restores the
            // settings of every nest level opened inside it.
            return;
        }
        // SAFETY: pops exactly the level opened in `set`.
        unsafe { pg_sys::AtEOXact_GUC(true, self.nest_level) };
    }
}

/// `SET LOCAL name = value`: for the rest of the transaction.
pub fn set_local(name: &str, value: &str) {
    set(
        name,
        Some(value),
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_LOCAL,
    );
}

/// Every setting the session SET (not application_name, which the worker sets itself) back
/// at its default for the rest of the transaction, as RESET ALL would put it, with the
/// transaction's own read-only, isolation and deferrable modes taken from those defaults; the
/// session's values come back as the transaction ends, as they do after a function with SET
/// clauses (a SET made inside the transaction stays, as it does there). Called right after
/// the transaction starts, before its first snapshot. A setting that cannot be reset keeps
/// its value, with a WARNING in the log: the transaction goes on.
pub fn undo_session_sets_for_transaction() {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    const NOT_RESET: u32 = pg_sys::GUC_NO_RESET_ALL;
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    const NOT_RESET: u32 = pg_sys::GUC_NO_RESET_ALL | pg_sys::GUC_NO_RESET;
    let names: Vec<std::ffi::CString> = with_records(|all| {
        all.iter()
            // SAFETY: records in the GUC tables, which live as long as the process.
            .filter(|&&g| unsafe {
                (*g).source == pg_sys::GucSource::PGC_S_SESSION
                    && (*g).flags & NOT_RESET as i32 == 0
                    && std::ffi::CStr::from_ptr((*g).name) != c"application_name"
            })
            // SAFETY: as above; the name is copied before any setting changes (which may
            // move the array).
            .map(|&g| unsafe { std::ffi::CStr::from_ptr((*g).name) }.to_owned())
            .collect()
    });
    // SAFETY: a nest level the transaction's end pops (AtEOXact_GUC), restoring each saved
    // value; the transaction modes may change until its first snapshot, as SET TRANSACTION's.
    unsafe {
        if !names.is_empty() {
            pg_sys::NewGUCNestLevel();
            for name in &names {
                pg_sys::set_config_option(
                    name.as_ptr(),
                    std::ptr::null(),
                    pg_sys::GucContext::PGC_SUSET,
                    pg_sys::GucSource::PGC_S_SESSION,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                    true,
                    pg_sys::WARNING as i32,
                    false,
                );
            }
        }
        pg_sys::XactReadOnly = pg_sys::DefaultXactReadOnly || pg_sys::RecoveryInProgress();
        pg_sys::XactIsoLevel = pg_sys::DefaultXactIsoLevel;
        pg_sys::XactDeferrable = pg_sys::DefaultXactDeferrable;
    }
}

/// `f` over every record in the GUC tables. The array itself may move when a setting is
/// defined, so it is not kept past `f`; the records it points to stay.
fn with_records<T>(f: impl FnOnce(&[*mut pg_sys::config_generic]) -> T) -> T {
    // SAFETY: the GUC tables' array of records and its length, read together and used before
    // anything can define a setting.
    let all = unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        let (all, count) = (pg_sys::get_guc_variables(), pg_sys::GetNumConfigOptions());
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        let (all, count) = {
            let mut count = 0;
            (pg_sys::get_guc_variables(&mut count), count)
        };
        if all.is_null() || count <= 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(all, count as usize)
        }
    };
    f(all)
}

/// A setting's record in the GUC tables, or null for an unknown name. Records never move
/// or go away once defined.
fn record(name: &std::ffi::CStr) -> *mut pg_sys::config_generic {
    // SAFETY: reads the GUC tables; find_option does not create placeholders here.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        {
            with_records(|all| {
                all.iter()
                    .copied()
                    .find(|&g| std::ffi::CStr::from_ptr((*g).name) == name)
                    .unwrap_or(std::ptr::null_mut())
            })
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            pg_sys::find_option(name.as_ptr(), false, true, pgrx::PgLogLevel::ERROR as i32)
        }
    }
}

/// A setting's current value, as SHOW prints it (with its unit); None for an unknown one.
pub fn current(name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    // SAFETY: returns a palloc'd copy of the value, or NULL when missing_ok and unknown.
    unsafe {
        let value = pg_sys::GetConfigOptionByName(name.as_ptr(), std::ptr::null_mut(), true);
        (!value.is_null()).then(|| {
            std::ffi::CStr::from_ptr(value)
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// Sets (or, for None, resets) a setting the way SET does, with the given context and action:
/// GUC_ACTION_SET for the session, _LOCAL for the transaction, _SAVE for a nest level. An
/// invalid value raises PostgreSQL's own error.
pub fn set(
    name: &str,
    value: Option<&str>,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    let name = CString::new(name).expect("setting names have no NUL");
    let value = value.map(|v| CString::new(v).expect("setting values have no NUL"));
    // SAFETY: both strings outlive the call; set_config_option copies what it keeps.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}
/// Makes a misspelt `migrate.*` setting an error instead of a silently ignored placeholder.
pub fn reserve_prefix() {
    // SAFETY: called from _PG_init after our settings are defined.
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"migrate".as_ptr());
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    unsafe {
        pgrx::pg_sys::EmitWarningsOnPlaceholders(c"migrate".as_ptr());
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

/// `f` with the search path pinned and the settings that change how constants print set as
/// pg_dump sets them: text printed now reads back the same in any session.
pub fn printing<T>(f: impl FnOnce() -> T) -> T {
    let _settings = SettingScope::set(&[
        ("search_path", "pg_catalog, pg_temp"),
        ("DateStyle", "ISO"),
        ("IntervalStyle", "postgres"),
        ("extra_float_digits", "3"),
    ]);
    f()
}

thread_local! {
    /// The local id of the transaction in which the setting defined by
    /// `define_transaction_string` was last assigned (local ids never repeat in a backend,
    /// unlike start times, which every transaction of one query message shares).
    static ASSIGNED_IN: std::cell::Cell<Option<pg_sys::LocalTransactionId>> =
        const { std::cell::Cell::new(None) };
}

static TRANSACTION_STRING_DEFINED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Defines a string setting that counts only in the transaction that assigned it
/// (`assigned_in_this_transaction`): a user-settable override, for SET LOCAL.
pub fn define_transaction_string(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static pgrx::GucSetting<Option<CString>>,
) {
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn remember_transaction(
        _newval: *const std::ffi::c_char,
        _extra: *mut std::ffi::c_void,
    ) {
        ASSIGNED_IN.set(Some(crate::pg::xact::local_id()));
    }
    // One setting: the assign hook does not know which one it was called for.
    assert!(
        !TRANSACTION_STRING_DEFINED.swap(true, std::sync::atomic::Ordering::Relaxed),
        "define_transaction_string defines one setting"
    );
    // SAFETY: the assign hook only records a timestamp and cannot raise.
    unsafe {
        pgrx::GucRegistry::define_string_guc_with_hooks(
            name,
            short,
            long,
            setting,
            pgrx::GucContext::Userset,
            pgrx::GucFlags::default(),
            None,
            Some(remember_transaction),
            None,
        );
    }
}

/// Whether the setting `define_transaction_string` defined was assigned in this transaction.
pub fn assigned_in_this_transaction() -> bool {
    ASSIGNED_IN.get() == Some(crate::pg::xact::local_id())
}

/// The role that set a setting's current value (PostgreSQL 15 records it with every setting;
/// before 15, the role outside any SECURITY DEFINER function).
pub fn setter_of(name: &std::ffi::CStr) -> pg_sys::Oid {
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    {
        let record = record(name);
        if !record.is_null() {
            // SAFETY: setting records live as long as the backend; only srole is read.
            return unsafe { (*record).srole };
        }
        pg_sys::InvalidOid
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    {
        let _ = name;
        // SAFETY: reads the backend's outer user id.
        unsafe { pg_sys::GetOuterUserId() }
    }
}

thread_local! {
    /// Records found by `is_default`: on PostgreSQL 15 and before, finding one reads every
    /// setting, and the guard asks for every DDL statement. Records never move.
    static FOUND: std::cell::RefCell<Vec<(&'static std::ffi::CStr, usize)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether a setting still has its built-in default (nobody set it anywhere).
pub fn is_default(name: &'static std::ffi::CStr) -> bool {
    let cached = FOUND.with_borrow(|f| f.iter().find(|(n, _)| *n == name).map(|(_, r)| *r));
    let record = match cached {
        Some(address) => address as *mut pg_sys::config_generic,
        None => {
            let found = record(name);
            // SAFETY: a record just found; only its flags are read. A placeholder is freed
            // when its library defines the setting, so only real records are kept.
            if !found.is_null()
                && unsafe { (*found).flags } & pg_sys::GUC_CUSTOM_PLACEHOLDER as i32 == 0
            {
                FOUND.with_borrow_mut(|f| f.push((name, found as usize)));
            }
            found
        }
    };
    // SAFETY: setting records live as long as the backend; only the source is read.
    !record.is_null() && unsafe { (*record).source } == pg_sys::GucSource::PGC_S_DEFAULT
}

/// lock_timeout and statement_timeout as the backend has them now, in ms.
pub fn lock_timeout_ms() -> i32 {
    // SAFETY: reads a backend-global setting.
    unsafe { pg_sys::LockTimeout }
}

pub fn statement_timeout_ms() -> i32 {
    // SAFETY: reads a backend-global setting.
    unsafe { pg_sys::StatementTimeout }
}

/// session_replication_role = replica: triggers and event triggers do not fire.
pub fn replica_mode() -> bool {
    // SAFETY: reads a backend-global setting.
    unsafe { pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 }
}

/// check_function_bodies, which pg_dump's scripts turn off.
pub fn check_function_bodies() -> bool {
    // SAFETY: reads a backend-global setting.
    unsafe { pg_sys::check_function_bodies }
}

/// The one checked string setting: its name, its check, and the HINT of a refusal.
type CheckedString = (
    &'static std::ffi::CStr,
    fn(&str) -> Result<(), String>,
    &'static str,
);

static CHECKED_STRING: std::sync::OnceLock<CheckedString> = std::sync::OnceLock::new();

/// Defines a string setting whose every value (the default, postgresql.conf's, a SET) must
/// pass `check`; one that does not is refused as PostgreSQL refuses a bad value of its own
/// settings (22023; check's text is the DETAIL, `hint` the HINT), and in postgresql.conf
/// leaves the value before in place.
pub fn define_checked_string(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static pgrx::GucSetting<Option<CString>>,
    context: pgrx::GucContext,
    check: fn(&str) -> Result<(), String>,
    hint: &'static str,
) {
    // The check hook runs in the postmaster too (on reload): it must not raise. It only
    // reads the text and copies a message.
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn check_hook(
        newval: *mut *mut std::ffi::c_char,
        _extra: *mut *mut std::ffi::c_void,
        _source: pg_sys::GucSource::Type,
    ) -> bool {
        let Some((name, check, hint)) = CHECKED_STRING.get() else {
            return true;
        };
        // SAFETY: PostgreSQL passes a pointer to the candidate value, NUL-terminated, or NULL.
        let text = (!newval.is_null())
            .then(|| unsafe { hook_value(*newval) })
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        match check(&text) {
            Ok(()) => true,
            Err(detail) => {
                let c = |text: String| CString::new(text.replace('\0', "")).unwrap_or_default();
                let message = c(format!(
                    "pg_migrate: invalid value for parameter \"{}\": \"{text}\"",
                    name.to_string_lossy()
                ));
                let (detail, hint) = (c(detail), c(hint.to_string()));
                // SAFETY: copied into ErrorContext, as PostgreSQL's GUC_check_errdetail does:
                // it lives until the refusal is reported, and is reset after.
                unsafe {
                    pg_sys::GUC_check_errcode(
                        pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
                    );
                    let keep =
                        |s: &CString| pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, s.as_ptr());
                    pg_sys::GUC_check_errmsg_string = keep(&message);
                    pg_sys::GUC_check_errdetail_string = keep(&detail);
                    pg_sys::GUC_check_errhint_string = keep(&hint);
                }
                false
            }
        }
    }
    assert!(
        CHECKED_STRING.set((name, check, hint)).is_ok(),
        "define_checked_string defines one setting"
    );
    // SAFETY: the check hook is above; it copies what it reports and does not raise.
    unsafe {
        define_hooked_string(name, short, long, setting, context, Some(check_hook), None);
    }
}

/// # Safety
/// The hooks must not raise (they run in the postmaster too, on a reload).
unsafe fn define_hooked_string(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static pgrx::GucSetting<Option<CString>>,
    context: pgrx::GucContext,
    check: pg_sys::GucStringCheckHook,
    assign: pg_sys::GucStringAssignHook,
) {
    // SAFETY: the caller's hooks do not raise.
    unsafe {
        pgrx::GucRegistry::define_string_guc_with_hooks(
            name,
            short,
            long,
            setting,
            context,
            pgrx::GucFlags::default(),
            check,
            assign,
            None,
        );
    }
}

/// A setting's value as PostgreSQL passes it to a hook.
///
/// # Safety
/// `value` is NUL-terminated and outlives `'a`, or NULL.
unsafe fn hook_value<'a>(value: *const std::ffi::c_char) -> Option<&'a std::ffi::CStr> {
    // SAFETY: the caller's.
    (!value.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(value) })
}

static ASSIGNED_STRING: std::sync::OnceLock<fn(Option<&str>)> = std::sync::OnceLock::new();

/// Defines a string setting whose every new value (a SET, a SET LOCAL and its end, a
/// RESET, a role's or database's setting) is also passed to `assign`, which must not raise.
pub fn define_assigned_string(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static pgrx::GucSetting<Option<CString>>,
    context: pgrx::GucContext,
    assign: fn(Option<&str>),
) {
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn assign_hook(
        newval: *const std::ffi::c_char,
        _extra: *mut std::ffi::c_void,
    ) {
        if let Some(assign) = ASSIGNED_STRING.get() {
            // SAFETY: PostgreSQL passes the new value, NUL-terminated, or NULL.
            assign(unsafe { hook_value(newval) }.and_then(|v| v.to_str().ok()));
        }
    }
    assert!(
        ASSIGNED_STRING.set(assign).is_ok(),
        "define_assigned_string defines one setting"
    );
    // SAFETY: the assign hook above only hands the value on to `assign`, which does not
    // raise.
    unsafe {
        define_hooked_string(name, short, long, setting, context, None, Some(assign_hook));
    }
}
