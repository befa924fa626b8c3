//! A migration script as PostgreSQL's parser split it: statements with their place in the
//! text and what kind of execution they need. Building it needs the server (see `parser`);
//! everything here is plain data and text arithmetic.

use crate::errors::Problem;
use pgrx::PgSqlErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Runs inside the migration's transaction.
    Transactional,
    /// BEGIN, COMMIT, SAVEPOINT, ...: pg_migrate owns the transaction a migration runs in.
    TransactionControl,
    /// Refuses to run inside a transaction block: CONCURRENTLY forms, VACUUM, ...
    NonTransactional,
    /// `SELECT migrate.backfill(...)`: a phase of its own, run in batches by the worker.
    Backfill,
    /// `ALTER TABLE ... VALIDATE CONSTRAINT` alone: it needs only SHARE UPDATE EXCLUSIVE, so
    /// after statements that lock more it runs in a transaction of its own rather than scan
    /// the table under their locks.
    Validate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1-based position in the script.
    pub number: usize,
    /// Byte range of the statement, from its first token to its end, without the `;`.
    pub start: usize,
    pub end: usize,
    /// 1-based line of the first token.
    pub line: usize,
    /// PostgreSQL's command tag, e.g. `CREATE INDEX`.
    pub tag: String,
    /// The form that decided `kind` when it is not the tag itself, e.g.
    /// `CREATE INDEX CONCURRENTLY`.
    pub form: String,
    pub kind: Kind,
}

impl Statement {
    pub fn text<'a>(&self, script: &'a str) -> &'a str {
        &script[self.start..self.end]
    }

    /// "statement 3 (line 12)", the way every message refers to a statement.
    pub fn locator(&self) -> String {
        format!("statement {} (line {})", self.number, self.line)
    }
}

/// A parser error, located in the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub code: PgSqlErrorCode,
    /// PostgreSQL's own message, e.g. `syntax error at or near "COLUM"`.
    pub message: String,
    /// Byte offset of the error, when the parser reported one.
    pub offset: Option<usize>,
    /// The statement the error is in, and the line that statement starts on.
    pub statement: usize,
    pub statement_line: usize,
}

impl SyntaxError {
    /// `what` names the script: "migration 42", "the rollback script of migration 42".
    pub fn problem(&self, what: &str, script: &str) -> Problem {
        let (message, detail) = match self.offset {
            Some(offset) => (
                format!(
                    "{what}: statement {} (line {}): {}",
                    self.statement,
                    line_at(script, offset),
                    self.message
                ),
                format!(
                    "Statement {} starts at line {}; the error is at line {}, column {}:\n{}",
                    self.statement,
                    self.statement_line,
                    line_at(script, offset),
                    column_at(script, offset),
                    excerpt(script, offset)
                ),
            ),
            None => (
                format!("{what}: statement {}: {}", self.statement, self.message),
                format!(
                    "Statement {} starts at line {}.",
                    self.statement, self.statement_line
                ),
            ),
        };
        Problem::new(
            self.code,
            message,
            detail,
            "Nothing was applied. Fix the script and run it again.",
        )
    }
}

/// Where each line of a script starts, to find the line of many offsets in one pass over
/// the text (a script of 50,000 statements would otherwise be rescanned 50,000 times).
pub struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    pub fn of(script: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(
                script
                    .bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Lines { starts }
    }

    /// 1-based line number of a byte offset, as [`line_at`] computes it.
    pub fn line_at(&self, offset: usize) -> usize {
        self.starts.partition_point(|start| *start <= offset)
    }
}

/// 1-based line number of a byte offset.
pub fn line_at(script: &str, offset: usize) -> usize {
    script.as_bytes()[..offset.min(script.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// 1-based column (in characters) of a byte offset.
pub fn column_at(script: &str, offset: usize) -> usize {
    let offset = offset.min(script.len());
    let line_start = script[..offset].rfind('\n').map_or(0, |i| i + 1);
    script[line_start..offset].chars().count() + 1
}

/// The line holding `offset`, with a caret under the offending character.
pub fn excerpt(script: &str, offset: usize) -> String {
    let offset = offset.min(script.len());
    let line_start = script[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = script[offset..]
        .find('\n')
        .map_or(script.len(), |i| offset + i);
    let line = script[line_start..line_end].trim_end_matches('\r');
    let pad: String = script[line_start..offset]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("{line}\n{pad}^")
}

/// Refuses transaction control: pg_migrate owns the transactions a migration runs in.
/// (Statements that cannot run inside a transaction are fine: the background worker runs
/// them top-level.)
pub fn refuse_transaction_control(what: &str, statements: &[Statement]) -> Result<(), Problem> {
    match statements
        .iter()
        .find(|st| st.kind == Kind::TransactionControl)
    {
        None => Ok(()),
        Some(st) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_TERMINATION,
            format!(
                "{what}: {} is transaction control ({})",
                st.locator(),
                st.tag
            ),
            "pg_migrate runs a migration in transactions it controls (the caller's, or the \
             background worker's for each phase), so its script must not begin, end or split \
             transactions.",
            "Remove BEGIN/COMMIT/ROLLBACK/SAVEPOINT from the script; to apply parts \
             separately, make them separate versions.",
        )),
    }
}

/// The script argument of apply, validate, lint and dry_run: present, and within
/// migrate.max_script_size.
pub fn require_script(script: Option<&str>) -> Result<&str, Problem> {
    let script = script.ok_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "script must not be NULL",
            "A migration needs the SQL it runs.",
            "Pass the script as a dollar-quoted string: migrate.apply('42', $$ ... $$).",
        )
    })?;
    within_size("script", script)
}

/// Refuses a text (a script, a rollback script, verify queries) larger than
/// migrate.max_script_size: parsing, judging and storing it takes time and memory in
/// proportion, and lint and dry_run are open to every role.
pub fn within_size<'a>(name: &str, text: &'a str) -> Result<&'a str, Problem> {
    let limit_kb = i64::from(crate::gucs::MAX_SCRIPT_SIZE_KB.get());
    let size = text.len() as i64;
    if size <= limit_kb * 1024 {
        return Ok(text);
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!(
            "{name} is {} bytes, more than migrate.max_script_size ({limit_kb} kB)",
            size
        ),
        "pg_migrate parses, judges and records every script whole, in one backend; the limit \
         bounds the time and memory that takes.",
        "Split the migration into several versions, or have a superuser raise \
         migrate.max_script_size (ALTER ROLE ... SET migrate.max_script_size = '32MB').",
    ))
}

#[cfg(test)]
mod unit {
    use super::*;

    const SCRIPT: &str =
        "CREATE TABLE a (id int);\n-- two\nCREATE TABLE b (\n  id int,\n  x intt\n);";

    #[test]
    fn lines_and_columns() {
        assert_eq!(line_at(SCRIPT, 0), 1);
        let x = SCRIPT.find("intt").unwrap();
        assert_eq!(line_at(SCRIPT, x), 5);
        assert_eq!(column_at(SCRIPT, x), 5);
        assert_eq!(excerpt(SCRIPT, x), "  x intt\n    ^");
        assert_eq!(line_at(SCRIPT, SCRIPT.len() + 10), 6);
    }

    #[test]
    fn the_line_index_agrees_with_line_at() {
        let lines = Lines::of(SCRIPT);
        for offset in 0..SCRIPT.len() + 3 {
            assert_eq!(lines.line_at(offset), line_at(SCRIPT, offset), "{offset}");
        }
        assert_eq!(Lines::of("").line_at(0), 1);
        assert_eq!(Lines::of("\n\n").line_at(2), 3);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let s = "SELECT 'é', BAD";
        assert_eq!(column_at(s, s.find("BAD").unwrap()), 13);
    }

    #[test]
    fn syntax_problem_names_statement_line_and_column() {
        let err = SyntaxError {
            code: PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            message: "type \"intt\" does not exist".into(),
            offset: Some(SCRIPT.find("intt").unwrap()),
            statement: 2,
            statement_line: 3,
        };
        let p = err.problem("migration 7", SCRIPT);
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_SYNTAX_ERROR);
        assert_eq!(
            p.message,
            "migration 7: statement 2 (line 5): type \"intt\" does not exist"
        );
        assert!(p.detail.contains("starts at line 3"), "{}", p.detail);
        assert!(p.detail.contains("line 5, column 5"), "{}", p.detail);
        assert!(p.detail.ends_with("  x intt\n    ^"), "{}", p.detail);
        assert!(p.hint.starts_with("Nothing was applied"));
    }

    fn stmt(number: usize, kind: Kind, tag: &str, form: &str) -> Statement {
        Statement {
            number,
            start: 0,
            end: 0,
            line: number * 2,
            tag: tag.into(),
            form: form.into(),
            kind,
        }
    }

    #[test]
    fn transaction_control_is_refused_and_top_level_statements_are_not() {
        let ok = stmt(1, Kind::Transactional, "CREATE TABLE", "CREATE TABLE");
        let cic = stmt(
            2,
            Kind::NonTransactional,
            "CREATE INDEX",
            "CREATE INDEX CONCURRENTLY",
        );
        assert!(refuse_transaction_control("migration 1", &[ok.clone(), cic]).is_ok());

        let commit = stmt(3, Kind::TransactionControl, "COMMIT", "COMMIT");
        let p = refuse_transaction_control("migration 1", &[ok, commit]).unwrap_err();
        assert_eq!(
            p.code,
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_TERMINATION
        );
        assert!(p
            .message
            .contains("statement 3 (line 6) is transaction control (COMMIT)"));
    }
}
