//! Every refusal pg_migrate raises goes through [`Problem`], so that each one carries a
//! SQLSTATE, a message starting with `pg_migrate:`, a DETAIL saying why and a HINT saying what
//! to do. Logic that decides to refuse returns a `Problem`; only the SQL-facing layer raises it,
//! which keeps that logic testable without a server.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: String,
    pub hint: String,
}

impl Problem {
    pub fn new(
        code: PgSqlErrorCode,
        message: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Problem {
            code,
            message: message.into(),
            detail: detail.into(),
            hint: hint.into(),
        }
    }

    /// The message as PostgreSQL reports it.
    pub fn full_message(&self) -> String {
        format!("pg_migrate: {}", self.message)
    }

    /// Raises the problem as an ERROR; never returns.
    #[track_caller]
    pub fn raise(self) -> ! {
        self.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }

    /// Reports the problem at a level below ERROR (NOTICE, WARNING).
    #[track_caller]
    pub fn report(self, level: PgLogLevel) {
        let mut report = ErrorReport::new(self.code, self.full_message(), "pg_migrate");
        if !self.detail.is_empty() {
            report = report.set_detail(self.detail);
        }
        if !self.hint.is_empty() {
            report = report.set_hint(self.hint);
        }
        report.report(level);
    }
}

/// `Result<T, Problem>` unwrapped at the SQL boundary.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Problem> {
    #[track_caller]
    fn or_raise(self) -> T {
        self.unwrap_or_else(|p| p.raise())
    }
}

/// A failure of pg_migrate's own bookkeeping (its tables, its lock) that SPI reported as an
/// error value rather than an ERROR: raised with context, not as a Rust panic.
pub trait OrBookkeeping<T> {
    fn or_bookkeeping(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrBookkeeping<T> for Result<T, E> {
    #[track_caller]
    fn or_bookkeeping(self, what: &str) -> T {
        self.unwrap_or_else(|e| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not {what}: {e}"),
                "pg_migrate's own tables in schema migrate could not be read or written.",
                "Check that the extension is intact (\\dx pg_migrate, \\dt migrate.*); if it \
                 is, report this as a pg_migrate bug.",
            )
            .raise()
        })
    }
}

/// A NOTICE with the `pg_migrate:` prefix.
#[track_caller]
pub fn notice(message: impl Into<String>) {
    Problem::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "",
        "",
    )
    .report(PgLogLevel::NOTICE);
}

/// The five-character SQLSTATE of an error code, e.g. `23505`.
pub fn sqlstate(code: PgSqlErrorCode) -> String {
    // PGSIXBIT packs each of the five characters into six bits, first character lowest.
    let packed = code as i32;
    (0..5)
        .map(|i| char::from(b'0' + ((packed >> (6 * i)) & 0x3F) as u8))
        .collect()
}
