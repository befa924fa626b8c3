//! The statement timer, armed for one statement inside a running one.
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

thread_local! {
    /// An ERROR unwound through a `bounded` scope since this was last taken: a
    /// cancellation caught then may be our own statement limit, which the caller reports as
    /// the statement's failure.
    static UNWOUND_UNDER_LIMITS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether an ERROR unwound through a `bounded` scope since the last call; resets it.
pub fn take_unwound_under_limits() -> bool {
    UNWOUND_UNDER_LIMITS.replace(false)
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

/// The statement timer armed for one statement; dropping it restores the caller's deadline.
pub struct StatementTimer {
    caller_deadline: Option<pg_sys::TimestampTz>,
    armed: bool,
}

impl StatementTimer {
    pub fn arm(limit_ms: i32) -> StatementTimer {
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

/// Runs `f` with the statement timer armed at `statement_timeout_ms` and lock_timeout set to
/// `lock_timeout_ms` (0 = none); both come back afterwards. An ERROR unwinding through here
/// is remembered (`take_unwound_under_limits`).
pub fn bounded<T>(lock_timeout_ms: i32, statement_timeout_ms: i32, f: impl FnOnce() -> T) -> T {
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
        crate::pg::guc::SettingScope::set(&[("lock_timeout", &format!("{lock_timeout_ms}ms"))]);
    let _timer = StatementTimer::arm(statement_timeout_ms);
    f()
}
