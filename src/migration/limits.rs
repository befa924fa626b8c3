//! The limits a migration's statements run under: lock and statement timeouts, retries and
//! the backoff between them, from the `migrate.*` settings.

use crate::migration::backoff::Backoff;

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

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub limits: Limits,
    pub retries: u32,
    pub backoff: Backoff,
}

impl Policy {
    pub fn from_settings() -> Policy {
        Policy {
            limits: Limits::from_settings(),
            retries: crate::gucs::LOCK_RETRIES.get().max(0) as u32,
            backoff: Backoff::from_settings(),
        }
    }
}

/// Runs `f` (one statement) under `limits`. Errors raised by `f` propagate; the caller's
/// settings and timer are restored either way.
pub fn with_limits<T>(limits: Limits, f: impl FnOnce() -> T) -> T {
    crate::pg::statement_timer::bounded(limits.lock_timeout_ms, limits.statement_timeout_ms, f)
}
