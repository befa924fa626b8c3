//! The database worker's sampling: every `migrate.watch_sample_interval` it reads what the
//! database's statements took (pg_stat_statements, when installed here) and the errors its
//! clients got (the log hook's counters), and keeps the difference from the last reading as
//! one sample in the ring in shared memory.

use super::sample::{self, Sample, Totals};
use crate::gucs;
use crate::pg::{error_hook, process, sample_ring, simple_query};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The last reading: when (TimestampTz, and as an Instant), the statements' totals (None
/// without pg_stat_statements) and the error counts.
struct Reading {
    at: i64,
    taken: Instant,
    totals: Option<Totals>,
    errors: Option<[u64; error_hook::COUNTERS]>,
}

thread_local! {
    static LAST: RefCell<Option<Reading>> = const { RefCell::new(None) };
    /// A foreign function beside pg_stat_statements' own was logged (once per worker).
    static FOREIGN_REPORTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The interval, None when sampling is off.
pub fn interval() -> Option<Duration> {
    let seconds = gucs::WATCH_SAMPLE_INTERVAL_S.get();
    (seconds > 0).then(|| Duration::from_secs(seconds as u64))
}

/// How long until the next sample is due; None when sampling is off.
pub fn due_in() -> Option<Duration> {
    let interval = interval()?;
    Some(LAST.with(|last| {
        last.borrow().as_ref().map_or(Duration::ZERO, |r| {
            interval.saturating_sub(r.taken.elapsed())
        })
    }))
}

/// Takes a sample if one is due, and returns it (the first reading only starts the count).
pub fn sample_if_due() -> Option<Sample> {
    if due_in()? > Duration::ZERO {
        return None;
    }
    let at = process::now();
    // In a transaction of its own: statistics are a snapshot per transaction.
    let totals = match simple_query::transaction(statement_totals) {
        Ok(totals) => totals,
        Err(e) => {
            simple_query::log(&format!("could not read pg_stat_statements: {}", e.message));
            None
        }
    };
    let errors = error_hook::counts(process::database());
    let reading = Reading {
        at,
        taken: Instant::now(),
        totals,
        errors,
    };
    let previous = LAST.with(|last| last.borrow_mut().replace(reading));
    let previous = previous?;
    LAST.with(|last| {
        let last = last.borrow();
        let now = last.as_ref()?;
        let mut s = Sample::empty(now.at, (now.at - previous.at) as f64 / 1e6);
        if let (Some(before), Some(totals)) = (&previous.totals, &now.totals) {
            sample::deltas(before, totals, &mut s);
        }
        if let (Some(before), Some(errors)) = (previous.errors, now.errors) {
            for (i, count) in s.errors.iter_mut().enumerate() {
                *count = errors[i].saturating_sub(before[i]);
            }
        }
        sample_ring::push(process::database(), s);
        Some(s)
    })
}

/// Calls and time by statement in this database, from pg_stat_statements' function in the
/// schema its extension is installed in; None when it is not installed here. An error (it
/// is installed but not preloaded) aborts the transaction and is logged by the caller.
fn statement_totals() -> Option<Totals> {
    untracked();
    // Its schema, and whether every function of that name there is the extension's own: a
    // function another role added beside them (an overload with a default argument) could
    // make the call ambiguous, or be the one called.
    let found: Option<(Option<String>, Option<bool>, Option<String>)> = crate::pg::spi::pinned_row(
        "SELECT pg_catalog.quote_ident(n.nspname), \
                NOT EXISTS (SELECT FROM pg_catalog.pg_proc p \
                            WHERE p.pronamespace OPERATOR(pg_catalog.=) e.extnamespace \
                              AND p.proname OPERATOR(pg_catalog.=) 'pg_stat_statements' \
                              AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                                  WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
                                    AND d.objid OPERATOR(pg_catalog.=) p.oid \
                                    AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass \
                                    AND d.refobjid OPERATOR(pg_catalog.=) e.oid \
                                    AND d.deptype OPERATOR(pg_catalog.=) 'e')), \
                e.extversion \
         FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
         WHERE e.extname OPERATOR(pg_catalog.=) 'pg_stat_statements'",
        &[],
        |r| Ok((r.get::<String>(1)?, r.get::<bool>(2)?, r.get::<String>(3)?)),
    )
    .ok()
    .flatten();
    let (Some(schema), Some(clean), version) = found? else {
        return None;
    };
    // Before version 1.9 (an extension not updated after pg_upgrade) there is no toplevel:
    // every entry is one.
    let toplevel = if version.as_deref().is_some_and(has_toplevel) {
        "s.toplevel"
    } else {
        "true"
    };
    if !clean {
        if !FOREIGN_REPORTED.replace(true) {
            simple_query::log(&format!(
                "not reading pg_stat_statements: schema {schema} has a function named \
                 pg_stat_statements that is not the extension's; statement latency is not \
                 sampled in this database"
            ));
        }
        return None;
    }
    // The function with the exact argument type: no overload another schema holds can be
    // a better match, and the worker's search_path is pinned to pg_catalog.
    let rows: Vec<Option<(sample::Entry, (f64, f64))>> = crate::pg::spi::pinned_rows(
        &format!(
            "SELECT s.queryid, s.userid, {toplevel}, s.calls::pg_catalog.float8, \
                    s.total_exec_time::pg_catalog.float8 \
             FROM {schema}.pg_stat_statements(false) s \
             WHERE s.dbid OPERATOR(pg_catalog.=) $1 AND s.queryid IS NOT NULL"
        ),
        &[process::database().into()],
        |r| {
            let entry = r
                .get::<i64>(1)?
                .zip(r.get::<pgrx::pg_sys::Oid>(2)?)
                .zip(r.get::<bool>(3)?)
                .map(|((id, user), top)| (id, u32::from(user), top));
            Ok(entry.zip(r.get::<f64>(4)?.zip(r.get::<f64>(5)?)))
        },
    )
    .ok()?;
    Some(rows.into_iter().flatten().collect())
}

/// Whether pg_stat_statements of this version has its `toplevel` column (1.9 and later).
fn has_toplevel(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (1, 9)
}

/// The worker's own statements stay out of pg_stat_statements for the rest of the
/// transaction: the samples are of the workload, not of the sampling.
pub fn untracked() {
    if crate::pg::guc::current("pg_stat_statements.track").is_some() {
        crate::pg::guc::set(
            "pg_stat_statements.track",
            Some("none"),
            pgrx::pg_sys::GucContext::PGC_SUSET,
            pgrx::pg_sys::GucAction::GUC_ACTION_LOCAL,
        );
    }
}

#[cfg(test)]
mod unit {
    use super::has_toplevel;

    #[test]
    fn toplevel_is_read_from_version_1_9() {
        assert!(has_toplevel("1.9") && has_toplevel("1.10") && has_toplevel("1.12"));
        assert!(!has_toplevel("1.8") && !has_toplevel("1.4") && !has_toplevel(""));
    }
}
