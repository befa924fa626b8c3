//! Timeouts for DDL that takes a strong lock in a session that has none: a plain psql
//! `ALTER TABLE` stuck behind a long transaction then fails after migrate.lock_timeout instead
//! of stalling every query queued behind it.

use crate::command::LockMode;
use crate::errors;
use crate::timeouts;

/// Sets `lock_timeout` (and `statement_timeout` when unset) for the rest of the transaction
/// if a statement taking `lock` would otherwise wait without a limit, or longer than
/// migrate.lock_timeout. `what` names the statement in the NOTICE.
pub fn enforce(lock: Option<LockMode>, what: &str) {
    let Some(lock) = lock.filter(|l| *l > LockMode::ShareUpdateExclusive) else {
        return;
    };
    let limit = crate::gucs::LOCK_TIMEOUT_MS.get();
    if limit <= 0 {
        return;
    }
    // SAFETY: reads the backend's lock_timeout setting (ms).
    let current = unsafe { pgrx::pg_sys::LockTimeout };
    if current != 0 && current <= limit {
        return;
    }
    timeouts::set_local("lock_timeout", &format!("{limit}ms"));
    let limit_text = crate::command::millis(i64::from(limit));
    let mut also = String::new();
    let statement_limit = crate::gucs::STATEMENT_TIMEOUT_MS.get();
    if statement_limit > 0 && statement_timeout_unset() {
        timeouts::set_local("statement_timeout", &format!("{statement_limit}ms"));
        timeouts::arm_statement_timeout(statement_limit);
        also = format!(
            " and statement_timeout to {}",
            crate::command::millis(i64::from(statement_limit))
        );
    }
    errors::notice(format!(
        "{what} needs {}: lock_timeout set to {limit_text}{also} for the rest of this transaction",
        lock.with_article()
    ));
}

/// Whether statement_timeout is 0 because nobody set it. A session (a restore, a maintenance
/// job) that set it to 0 on purpose keeps it.
fn statement_timeout_unset() -> bool {
    // SAFETY: reads the backend's statement_timeout setting (ms).
    if unsafe { pgrx::pg_sys::StatementTimeout } != 0 {
        return false;
    }
    // SAFETY: the setting's record lives as long as the backend; only its source is read.
    unsafe {
        let record = statement_timeout_record();
        !record.is_null() && (*record).source == pgrx::pg_sys::GucSource::PGC_S_DEFAULT
    }
}

thread_local! {
    static STATEMENT_TIMEOUT_RECORD: std::cell::Cell<*mut pgrx::pg_sys::config_generic> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// statement_timeout's GUC record, found once per backend (records never move).
fn statement_timeout_record() -> *mut pgrx::pg_sys::config_generic {
    if let Some(found) = Some(STATEMENT_TIMEOUT_RECORD.get()).filter(|p| !p.is_null()) {
        return found;
    }
    let found = crate::gucs::record(c"statement_timeout");
    STATEMENT_TIMEOUT_RECORD.set(found);
    found
}
