//! Internal subtransactions: the only correct way to catch a PostgreSQL ERROR and carry on.
//!
//! Catching an error without rolling back to a savepoint leaves locks, buffers and memory in
//! whatever state the failed code left them. This follows what PL/Python and PL/pgSQL do for an
//! EXCEPTION block: begin an internal subtransaction, run the body in the caller's memory
//! context, release it on success or roll it back on error, and restore the resource owner.
//! Rolling back also releases every lock the body took, which is what lets a migration that
//! timed out on a lock step out of the lock queue before it retries.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

/// Runs `body` in its own subtransaction. On an ERROR the subtransaction is rolled back and
/// the error is returned for the caller to inspect, report or rethrow. A Rust panic (a bug) is
/// rethrown after the rollback.
pub fn run<T>(body: impl FnOnce() -> T) -> Result<T, Caught> {
    within(true, body)
}

/// Runs `body` in a subtransaction that is rolled back whatever happens, taking with it every
/// change, lock and `SET` the body made: what a dry run and a verification query need.
pub fn rolled_back<T>(body: impl FnOnce() -> T) -> Result<T, Caught> {
    within(false, body)
}

fn within<T>(keep: bool, body: impl FnOnce() -> T) -> Result<T, Caught> {
    // SAFETY: these are the steps of PL/pgSQL's exec_stmt_block, on the backend's main thread;
    // the memory context and resource owner saved here outlive the subtransaction.
    unsafe {
        let caller_context = pg_sys::CurrentMemoryContext;
        let caller_owner = pg_sys::CurrentResourceOwner;
        crate::pg::statement_timer::take_unwound_under_limits();
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        // Results must outlive the subtransaction, so work in the caller's context.
        pg_sys::MemoryContextSwitchTo(caller_context);

        let mut body = Some(body);
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let value = (body.take().expect("the body runs once"))();
            if keep {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(caller_context);
            pg_sys::CurrentResourceOwner = caller_owner;
            Ok(value)
        }))
        .catch_others(move |error| {
            pg_sys::MemoryContextSwitchTo(caller_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(caller_context);
            pg_sys::CurrentResourceOwner = caller_owner;
            let caught = Caught::from_error(error);
            // A cancel request, or the caller's own statement_timeout, is the caller's wish
            // to stop, never a failure of the body to report and carry on after: a cancel
            // arrives once. Only under limits pg_migrate set can it be our own statement
            // limit, which the caller reports.
            let under_limits = crate::pg::statement_timer::take_unwound_under_limits();
            if caught.code == pgrx::PgSqlErrorCode::ERRCODE_QUERY_CANCELED && !under_limits {
                caught.reraise();
            }
            Err(caught)
        })
        .execute()
    }
}

/// SQLSTATE and texts of a caught ERROR.
pub struct Caught {
    pub code: pgrx::PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl From<crate::errors::Problem> for Caught {
    fn from(problem: crate::errors::Problem) -> Caught {
        Caught {
            code: problem.code,
            message: problem.full_message(),
            detail: Some(problem.detail),
            hint: Some(problem.hint),
        }
    }
}

impl Caught {
    /// Raises the error again as PostgreSQL reported it.
    pub fn reraise(self) -> ! {
        let mut report =
            pgrx::pg_sys::panic::ErrorReport::new(self.code, self.message, "pg_migrate");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }

    /// An ERROR's texts; a Rust panic (a bug) is rethrown, not turned into data.
    pub fn from_error(error: CaughtError) -> Caught {
        match error {
            CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => Caught {
                code: e.sql_error_code(),
                message: e.message().to_string(),
                detail: e.detail().map(str::to_string),
                hint: e.hint().map(str::to_string),
            },
            panic @ CaughtError::RustPanic { .. } => panic.rethrow(),
        }
    }
}
