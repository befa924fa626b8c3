//! Runs a migration's statements: all of them in one subtransaction, each under the migration
//! lock and statement timeouts; on a lock timeout or deadlock the subtransaction is rolled back,
//! which releases every lock it took so nothing keeps queueing behind it, and the whole attempt
//! is retried after a backoff.

use crate::errors::{self, Problem};
use crate::migration::backoff;
use crate::migration::limits::Policy;
use crate::migration::script::Statement;
use crate::pg::subxact::{self, Caught};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Attempts that were rolled back and retried.
    pub retries: u32,
    /// Time spent by the statements that gave up waiting for a lock (or lost a deadlock):
    /// the waits that made the migration retry. Backoffs between attempts are not included,
    /// nor waits that ended with the lock granted.
    pub lock_wait: Duration,
}

/// Runs `statements` of `script`, retrying on lock timeouts; any other error is raised with
/// the statement it happened in. `what` names the script in messages ("migration 42").
pub fn run(what: &str, script: &str, statements: &[Statement], policy: Policy) -> Outcome {
    let attempts = policy.retries + 1;
    let mut lock_wait = Duration::ZERO;
    for attempt in 1..=attempts {
        let current = Cell::new(0usize);
        let statement_started = Cell::new(Instant::now());
        let result = subxact::run(|| {
            for (i, st) in statements.iter().enumerate() {
                current.set(i);
                statement_started.set(Instant::now());
                crate::migration::limits::with_limits(policy.limits, || execute(st.text(script)));
            }
        });
        let Err(caught) = result else {
            return Outcome {
                retries: attempt - 1,
                lock_wait,
            };
        };
        let st = &statements[current.get()];
        let failure = Failure {
            what,
            statement: st,
            script,
            caught: &caught,
            ran_for: statement_started.get().elapsed(),
            policy,
        };
        if !failure.is_lock_contention() {
            failure.problem(attempt).raise();
        }
        lock_wait += failure.ran_for;
        if attempt == attempts {
            failure.problem(attempt).raise();
        }
        let delay = policy.backoff.delay(attempt, backoff::random_unit());
        errors::notice(format!(
            "{what}: {} {} (attempt {attempt} of {attempts}); rolled back, retrying in {} ms",
            st.locator(),
            failure.contention_phrase(),
            delay.as_millis()
        ));
        backoff::sleep(delay);
    }
    unreachable!("the last attempt either succeeds or raises")
}

fn execute(sql: &str) {
    // SPI runs every statement it finds in the text, lexed under the settings of this
    // moment: a script's own SET standard_conforming_strings can make one judged and
    // recorded statement lex as several. Exactly one runs, or none.
    if let Some(n) = crate::migration::parse::count(sql).filter(|n| *n != 1) {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("a statement now reads as {n} statements"),
            "The script was split into statements, judged and recorded under the \
             standard_conforming_strings in force when it was applied; this one lexes \
             differently now (the script changes that setting itself).",
            "Do not change standard_conforming_strings inside a migration; set it before \
             migrate.apply, for the whole script.",
        )
        .raise();
    }
    if let Err(e) = Spi::run(sql) {
        // SPI-level failures (not ERRORs from the statement itself) are internal errors.
        Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("SPI could not run a statement: {e}"),
            "The statement was handed to SPI, which refused it.",
            "Report this as a pg_migrate bug, with the statement.",
        )
        .raise();
    }
}

/// Why one attempt failed, and how to say so.
struct Failure<'a> {
    what: &'a str,
    statement: &'a Statement,
    script: &'a str,
    caught: &'a Caught,
    ran_for: Duration,
    policy: Policy,
}

impl Failure<'_> {
    fn is_lock_contention(&self) -> bool {
        matches!(
            self.caught.code,
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
                | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
        )
    }

    fn contention_phrase(&self) -> String {
        if self.caught.code == PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED {
            "was chosen as a deadlock victim".into()
        } else {
            format!(
                "waited longer than migrate.lock_timeout ({}) for a lock",
                crate::guard::command::millis(i64::from(self.policy.limits.lock_timeout_ms))
            )
        }
    }

    fn hit_our_statement_timeout(&self) -> bool {
        let limit = self.policy.limits.statement_timeout_ms;
        self.caught.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            && self.caught.message.contains("statement timeout")
            && limit > 0
            && self.ran_for + Duration::from_millis(1) >= Duration::from_millis(limit as u64)
    }

    fn problem(&self, attempts: u32) -> Problem {
        let locator = self.statement.locator();
        let what = self.what;
        let first_line = self
            .statement
            .text(self.script)
            .lines()
            .next()
            .unwrap_or_default();
        if self.is_lock_contention() {
            return Problem::new(
                self.caught.code,
                format!(
                    "{what}: {locator} {} in each of {attempts} attempts",
                    self.contention_phrase()
                ),
                format!(
                    "Each attempt was rolled back as soon as it failed, releasing its locks so \
                     that other sessions did not queue behind it; nothing was applied. The \
                     statement: {first_line}"
                ),
                "Look for long transactions on the same tables (SELECT pid, xact_start, state, \
                 query FROM pg_stat_activity WHERE xact_start < now() - interval '1 minute') and \
                 apply again, or raise migrate.lock_retries.",
            );
        }
        if self.hit_our_statement_timeout() {
            return Problem::new(
                self.caught.code,
                format!(
                    "{what}: {locator} ran longer than migrate.statement_timeout ({})",
                    crate::guard::command::millis(i64::from(self.policy.limits.statement_timeout_ms))
                ),
                format!("The statement was cancelled and nothing was applied. The statement: {first_line}"),
                "Move long data changes into batched backfills; if this statement must run \
                 longer, raise the limit for this session, e.g. SET migrate.statement_timeout = '1h';",
            );
        }
        if self.caught.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED {
            return Problem::new(
                self.caught.code,
                format!("{what}: {locator}: {}", self.caught.message),
                format!("Nothing was applied. The statement: {first_line}"),
                "The session's own statement_timeout or a cancel request (pg_cancel_backend) \
                 stopped it; apply again when that is resolved.",
            );
        }
        let message = self
            .caught
            .message
            .strip_prefix("pg_migrate: ")
            .unwrap_or(&self.caught.message);
        let mut detail = self
            .caught
            .detail
            .clone()
            .map(|d| d + "\n")
            .unwrap_or_default();
        detail.push_str(&format!(
            "Nothing was applied. The failing statement starts at line {}: {first_line}",
            self.statement.line
        ));
        Problem::new(
            self.caught.code,
            format!("{what}: {locator}: {message}"),
            detail,
            self.caught
                .hint
                .clone()
                .unwrap_or_else(|| "Fix the statement and apply the migration again.".into()),
        )
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::migration::backoff::Backoff;
    use crate::migration::limits::Limits;
    use crate::migration::script::Kind;

    const SCRIPT: &str = "CREATE TABLE a (id int);\nALTER TABLE b\n  ADD COLUMN c int;";

    fn statement() -> Statement {
        Statement {
            number: 2,
            start: 25,
            end: SCRIPT.len() - 1,
            line: 2,
            tag: "ALTER TABLE".into(),
            form: "ALTER TABLE".into(),
            kind: Kind::Transactional,
        }
    }

    fn policy() -> Policy {
        Policy {
            limits: Limits {
                lock_timeout_ms: 2_000,
                statement_timeout_ms: 60_000,
            },
            retries: 5,
            backoff: Backoff {
                base_ms: 500,
                max_ms: 30_000,
            },
        }
    }

    fn caught(code: PgSqlErrorCode, message: &str) -> Caught {
        Caught {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    fn problem(caught: &Caught, ran_for: Duration) -> Problem {
        let st = statement();
        Failure {
            what: "migration 9",
            statement: &st,
            script: SCRIPT,
            caught,
            ran_for,
            policy: policy(),
        }
        .problem(6)
    }

    #[test]
    fn the_statement_text_is_located() {
        assert_eq!(
            statement().text(SCRIPT),
            "ALTER TABLE b\n  ADD COLUMN c int"
        );
    }

    #[test]
    fn lock_timeouts_and_deadlocks_are_contention() {
        let st = statement();
        for code in [
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED,
        ] {
            let c = caught(code, "x");
            let f = Failure {
                what: "m",
                statement: &st,
                script: SCRIPT,
                caught: &c,
                ran_for: Duration::ZERO,
                policy: policy(),
            };
            assert!(f.is_lock_contention());
        }
        let p = problem(
            &caught(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                "canceling statement due to lock timeout",
            ),
            Duration::from_secs(2),
        );
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE);
        assert_eq!(
            p.message,
            "migration 9: statement 2 (line 2) waited longer than migrate.lock_timeout (2s) for \
             a lock in each of 6 attempts"
        );
        assert!(p.detail.contains("nothing was applied"));
        assert!(p.detail.ends_with("The statement: ALTER TABLE b"));
        assert!(p.hint.contains("pg_stat_activity"));
    }

    #[test]
    fn our_statement_timeout_is_told_apart_from_the_sessions() {
        let timeout = caught(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "canceling statement due to statement timeout",
        );
        let ours = problem(&timeout, Duration::from_secs(60));
        assert!(ours
            .message
            .contains("ran longer than migrate.statement_timeout (1min)"));
        let theirs = problem(&timeout, Duration::from_secs(3));
        assert!(theirs
            .message
            .ends_with("canceling statement due to statement timeout"));
        assert!(theirs.hint.contains("session's own statement_timeout"));
    }

    #[test]
    fn other_errors_keep_their_sqlstate_detail_and_hint() {
        let mut c = caught(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "relation \"b\" does not exist",
        );
        let p = problem(&c, Duration::ZERO);
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE);
        assert_eq!(
            p.message,
            "migration 9: statement 2 (line 2): relation \"b\" does not exist"
        );
        assert!(p
            .detail
            .starts_with("Nothing was applied. The failing statement starts at line 2"));
        assert_eq!(p.hint, "Fix the statement and apply the migration again.");
        c.detail = Some("Key (id)=(1) is duplicated.".into());
        c.hint = Some("Their hint.".into());
        let p = problem(&c, Duration::ZERO);
        assert!(p
            .detail
            .starts_with("Key (id)=(1) is duplicated.\nNothing was applied."));
        assert_eq!(p.hint, "Their hint.");
    }
}
