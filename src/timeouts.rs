//! Lock and statement timeouts around one statement of a migration.
//!
//! `lock_timeout` is read when a lock wait begins, so setting it for the duration of the
//! statement is enough; the setting is scoped with a GUC nest level, like a function's `SET`
//! clause, and the caller's value comes back afterwards.
//!
//! `statement_timeout` is different: PostgreSQL arms its timer once, when the top-level
//! statement (`SELECT migrate.apply(...)`) starts, so changing the setting inside a function
//! does nothing. The timer is therefore armed here for each statement, at the earlier of our
//! limit and the caller's own deadline, and the caller's deadline is restored afterwards.

use pgrx::pg_sys;
use std::ffi::c_int;

/// `TimeoutId::STATEMENT_TIMEOUT` from utils/timeout.h (the same on PostgreSQL 13 to 18);
/// pgrx does not bind that header.
const STATEMENT_TIMEOUT: c_int = 3;

// Called through `pg_guard_ffi_boundary`, like every pgrx binding, in case one ever raises.
unsafe extern "C-unwind" {
    fn enable_timeout_after(id: c_int, delay_ms: c_int);
    fn enable_timeout_at(id: c_int, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: c_int, keep_indicator: bool);
    fn get_timeout_active(id: c_int) -> bool;
    fn get_timeout_finish_time(id: c_int) -> pg_sys::TimestampTz;
}

fn guarded<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: called on the backend's main thread; `f` only calls the functions above.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 0 = no limit.
    pub lock_timeout_ms: i32,
    pub statement_timeout_ms: i32,
}

impl Limits {
    pub fn from_settings() -> Limits {
        Limits {
            lock_timeout_ms: crate::gucs::LOCK_TIMEOUT_MS.get(),
            statement_timeout_ms: crate::gucs::STATEMENT_TIMEOUT_MS.get(),
        }
    }
}

thread_local! {
    /// An ERROR unwound through a `with_limits` scope since this was last taken: a
    /// cancellation caught then may be our own statement limit, which the caller reports as
    /// the statement's failure.
    static UNWOUND_UNDER_LIMITS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether an ERROR unwound through a `with_limits` scope since the last call; resets it.
pub fn take_unwound_under_limits() -> bool {
    UNWOUND_UNDER_LIMITS.replace(false)
}

/// Runs `f` (one statement) under `limits`. Errors raised by `f` propagate; the caller's
/// settings and timer are restored either way.
pub fn with_limits<T>(limits: Limits, f: impl FnOnce() -> T) -> T {
    struct Unwound;
    impl Drop for Unwound {
        fn drop(&mut self) {
            if std::thread::panicking() {
                UNWOUND_UNDER_LIMITS.set(true);
            }
        }
    }
    let _unwound = Unwound;
    let _settings =
        SettingScope::set(&[("lock_timeout", &format!("{}ms", limits.lock_timeout_ms))]);
    let _timer = StatementTimer::arm(limits.statement_timeout_ms);
    f()
}

/// `SET LOCAL name = value`: for the rest of the transaction.
pub fn set_local(name: &str, value: &str) {
    crate::gucs::set(
        name,
        Some(value),
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_LOCAL,
    );
}

/// Arms the statement timer for the statement already running, unless a deadline is already
/// set. PostgreSQL disarms it when the statement ends; later statements of the transaction
/// arm it themselves from the `statement_timeout` setting.
pub fn arm_statement_timeout(limit_ms: i32) {
    // SAFETY: plain calls into the backend's timeout module.
    guarded(|| unsafe {
        if !get_timeout_active(STATEMENT_TIMEOUT) {
            enable_timeout_after(STATEMENT_TIMEOUT, limit_ms);
        }
    })
}

/// Disarms the statement timer, as the server does when a client's statement ends. The
/// background worker runs statements without the server's main loop, which would do it.
pub fn disarm_statement_timeout() {
    // SAFETY: plain calls into the backend's timeout module.
    guarded(|| unsafe {
        if get_timeout_active(STATEMENT_TIMEOUT) {
            disable_timeout(STATEMENT_TIMEOUT, false);
        }
    })
}

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
                crate::gucs::set(
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

/// The statement timer armed for one statement; dropping it restores the caller's deadline.
struct StatementTimer {
    caller_deadline: Option<pg_sys::TimestampTz>,
    armed: bool,
}

impl StatementTimer {
    fn arm(limit_ms: i32) -> StatementTimer {
        // SAFETY: plain calls into the backend's timeout module.
        let caller_deadline = guarded(|| unsafe {
            get_timeout_active(STATEMENT_TIMEOUT)
                .then(|| get_timeout_finish_time(STATEMENT_TIMEOUT))
        });
        if limit_ms <= 0 {
            return StatementTimer {
                caller_deadline,
                armed: false,
            };
        }
        // SAFETY: reads the clock.
        let ours = unsafe { pg_sys::GetCurrentTimestamp() } + i64::from(limit_ms) * 1_000;
        match caller_deadline {
            Some(deadline) if deadline <= ours => {}
            // SAFETY: as above.
            _ => guarded(|| unsafe { enable_timeout_after(STATEMENT_TIMEOUT, limit_ms) }),
        }
        StatementTimer {
            caller_deadline,
            armed: true,
        }
    }
}

impl Drop for StatementTimer {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // SAFETY: as in `arm`.
        guarded(|| unsafe {
            match self.caller_deadline {
                Some(deadline) => enable_timeout_at(STATEMENT_TIMEOUT, deadline),
                None => disable_timeout(STATEMENT_TIMEOUT, false),
            }
        })
    }
}
