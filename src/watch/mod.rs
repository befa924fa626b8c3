//! The health gate (issue 16). So far: errors by SQLSTATE, counted per database in shared
//! memory from the log hook and shown by `migrate.error_counts`; and the statistics a watch
//! will judge its samples by (`stats`).

pub mod signals;
pub mod stats;

use pgrx::prelude::*;
use signals::Signal;

/// A utility statement is about to run: a dropped database's error counters are freed.
pub fn utility_statement(stmt: crate::pg::nodes::StmtTree) {
    if let Some(database) = crate::pg::nodes::dropped_database(stmt) {
        crate::pg::error_hook::forget(database);
    }
}

/// The errors reported in this database since the server started, by kind: what the log
/// hook counted (errors a PL/pgSQL block caught are not reported, and not counted). NULL
/// counts when the database has no counters (more than `pg::error_hook::DATABASES` databases
/// reported errors).
#[pg_extern(volatile, parallel_safe)]
fn error_counters() -> TableIterator<
    'static,
    (
        name!(signal, String),
        name!(sqlstates, Vec<String>),
        name!(errors, Option<i64>),
    ),
> {
    let counts = crate::pg::error_hook::counts(crate::pg::process::database());
    TableIterator::new(Signal::ALL.into_iter().map(move |s| {
        (
            s.name().to_string(),
            s.sqlstates()
                .iter()
                .map(|x| String::from_utf8_lossy(&x[..]).into_owned())
                .collect(),
            counts.map(|c| c[s.index()] as i64),
        )
    }))
}
