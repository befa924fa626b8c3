//! Timeouts for DDL that takes a strong lock in a session that has none: a plain psql
//! `ALTER TABLE` stuck behind a long transaction then fails after migrate.lock_timeout instead
//! of stalling every query queued behind it.

use crate::errors;
use crate::guard::command::LockMode;

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
    let current = crate::pg::guc::lock_timeout_ms();
    if current != 0 && current <= limit {
        return;
    }
    crate::pg::guc::set_local("lock_timeout", &format!("{limit}ms"));
    let limit_text = crate::guard::command::millis(i64::from(limit));
    let mut also = String::new();
    let statement_limit = crate::gucs::STATEMENT_TIMEOUT_MS.get();
    if statement_limit > 0 && statement_timeout_unset() {
        crate::pg::guc::set_local("statement_timeout", &format!("{statement_limit}ms"));
        crate::pg::statement_timer::arm_statement_timeout(statement_limit);
        also = format!(
            " and statement_timeout to {}",
            crate::guard::command::millis(i64::from(statement_limit))
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
    crate::pg::guc::statement_timeout_ms() == 0 && crate::pg::guc::is_default(c"statement_timeout")
}
