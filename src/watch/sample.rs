//! One sample of a database's workload: what its statements took and what errors its
//! clients got over a few seconds. Samples are taken by the database worker, kept in a ring
//! in shared memory (the baseline any migration can be judged against), and those of a
//! watched migration recorded with it. Plain Rust over plain numbers.

use std::collections::HashMap;

pub use crate::pg::sample_ring::{QueryDelta, Sample, QUERIES};

/// Cumulative calls and time by queryid, as pg_stat_statements counts them.
pub type Totals = HashMap<i64, (f64, f64)>;

/// What each statement did between two readings of pg_stat_statements, the `QUERIES` that
/// took most time kept apart. A statement whose calls went down was evicted (and maybe
/// entered again) in between: its interval is unknown and left out, as is one not seen
/// before (its first calls fell partly before the interval).
pub fn deltas(before: &Totals, now: &Totals, sample: &mut Sample) {
    let mut moved: Vec<QueryDelta> = now
        .iter()
        .filter_map(|(queryid, (calls, time))| {
            let (calls_before, time_before) = before.get(queryid)?;
            let calls = calls - calls_before;
            let time_ms = time - time_before;
            (calls > 0.0 && time_ms >= 0.0).then_some(QueryDelta {
                queryid: *queryid,
                calls,
                time_ms,
            })
        })
        .collect();
    moved.sort_by(|a, b| b.time_ms.total_cmp(&a.time_ms));
    sample.statements = true;
    sample.query_count = moved.len().min(QUERIES);
    for (slot, q) in sample.queries.iter_mut().zip(&moved) {
        *slot = *q;
    }
    for q in moved.iter().skip(QUERIES) {
        sample.other_calls += q.calls;
        sample.other_time_ms += q.time_ms;
    }
}

/// Each statement's mean time per call over the baseline: what its calls after the change
/// are compared with.
pub fn reference(baseline: &[Sample]) -> HashMap<i64, f64> {
    let mut sums: HashMap<i64, (f64, f64)> = HashMap::new();
    for q in baseline.iter().flat_map(Sample::queries) {
        let entry = sums.entry(q.queryid).or_default();
        entry.0 += q.calls;
        entry.1 += q.time_ms;
    }
    sums.into_iter()
        .filter(|(_, (calls, _))| *calls > 0.0)
        .map(|(id, (calls, time))| (id, time / calls))
        .collect()
}

/// The latency index of a sample: the time its statements took over the time the same
/// calls took on average in the baseline. 1 when nothing changed, whatever the mix of
/// statements; 2 when they take twice as long. Statements the baseline did not run are left
/// out (a new statement has nothing to compare with). With the share of the sample's
/// calls it covers; None when it covers none.
pub fn latency_index(sample: &Sample, reference: &HashMap<i64, f64>) -> Option<(f64, f64)> {
    if !sample.statements {
        return None;
    }
    let (mut took, mut expected, mut calls) = (0.0, 0.0, 0.0);
    for q in sample.queries() {
        if let Some(mean) = reference.get(&q.queryid) {
            took += q.time_ms;
            expected += q.calls * mean;
            calls += q.calls;
        }
    }
    let all = sample.calls();
    (expected > 0.0 && all > 0.0).then(|| (took / expected, calls / all))
}

/// The most any one statement's time per call grew over its baseline mean (ms), among the
/// statements the baseline ran: a statement that regressed shows here whatever else the
/// workload runs (many cheap calls do not dilute it). None when none of them ran.
pub fn worst_added_ms(sample: &Sample, reference: &HashMap<i64, f64>) -> Option<f64> {
    if !sample.statements {
        return None;
    }
    sample
        .queries()
        .iter()
        .filter(|q| q.calls > 0.0)
        .filter_map(|q| {
            reference
                .get(&q.queryid)
                .map(|mean| q.time_ms / q.calls - mean)
        })
        .max_by(f64::total_cmp)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn totals(rows: &[(i64, f64, f64)]) -> Totals {
        rows.iter().map(|(id, c, t)| (*id, (*c, *t))).collect()
    }

    #[test]
    fn deltas_leave_out_evicted_and_new_statements() {
        let before = totals(&[(1, 10.0, 100.0), (2, 50.0, 20.0), (3, 5.0, 5.0)]);
        let now = totals(&[
            (1, 20.0, 300.0),
            (2, 10.0, 2.0),
            (3, 5.0, 5.0),
            (4, 9.0, 9.0),
        ]);
        let mut s = Sample::empty(0, 10.0);
        deltas(&before, &now, &mut s);
        // 2 was evicted and entered again, 3 did not run, 4 is new.
        assert_eq!(
            s.queries(),
            &[QueryDelta {
                queryid: 1,
                calls: 10.0,
                time_ms: 200.0
            }]
        );
        assert!(s.statements);
    }

    #[test]
    fn deltas_keep_the_costliest_apart() {
        let before: Totals = (0..40).map(|i| (i, (0.0, 0.0))).collect();
        let now: Totals = (0..40).map(|i| (i, (1.0, i as f64))).collect();
        let mut s = Sample::empty(0, 1.0);
        deltas(&before, &now, &mut s);
        assert_eq!(s.query_count, QUERIES);
        assert_eq!(s.queries()[0].queryid, 39);
        assert_eq!(s.other_calls, (40 - QUERIES) as f64);
        // 0 + 1 + ... + 7
        assert_eq!(s.other_time_ms, 28.0);
        assert_eq!(s.calls(), 40.0);
    }

    fn sample(rows: &[(i64, f64, f64)]) -> Sample {
        let mut s = Sample::empty(0, 10.0);
        s.statements = true;
        s.query_count = rows.len();
        for (slot, (id, calls, time)) in s.queries.iter_mut().zip(rows) {
            *slot = QueryDelta {
                queryid: *id,
                calls: *calls,
                time_ms: *time,
            };
        }
        s
    }

    #[test]
    fn the_worst_statement_shows_whatever_else_runs() {
        let baseline = [sample(&[(1, 100.0, 1.0), (2, 1.0, 0.02)])];
        let reference = reference(&baseline);
        // Statement 2 went from 0.02 to 3.5 ms a call among thousands of cheap calls of 1.
        let now = sample(&[(1, 10_000.0, 100.0), (2, 1.0, 3.5)]);
        let added = worst_added_ms(&now, &reference).unwrap();
        assert!((added - 3.48).abs() < 1e-9, "{added}");
        assert_eq!(worst_added_ms(&sample(&[(3, 5.0, 5.0)]), &reference), None);
    }

    #[test]
    fn a_change_of_mix_is_not_a_change_of_latency() {
        // A fast and a slow statement; then ten times more of the fast one.
        let baseline = [sample(&[(1, 100.0, 100.0), (2, 10.0, 100.0)])];
        let reference = reference(&baseline);
        let mixed = sample(&[(1, 1000.0, 1000.0), (2, 10.0, 100.0)]);
        let (index, coverage) = latency_index(&mixed, &reference).unwrap();
        assert!((index - 1.0).abs() < 1e-12);
        assert_eq!(coverage, 1.0);
        // The slow one twice as slow: its share of the expected time is half.
        let slower = sample(&[(1, 100.0, 100.0), (2, 10.0, 200.0)]);
        let (index, _) = latency_index(&slower, &reference).unwrap();
        assert!((index - 1.5).abs() < 1e-12);
        // A statement the baseline never ran is left out, and the coverage says so.
        let new = sample(&[(1, 100.0, 100.0), (3, 100.0, 5000.0)]);
        assert_eq!(latency_index(&new, &reference), Some((1.0, 0.5)));
        // Without pg_stat_statements, or with nothing known, there is no index.
        assert_eq!(latency_index(&Sample::empty(0, 1.0), &reference), None);
        assert_eq!(latency_index(&sample(&[(3, 1.0, 1.0)]), &reference), None);
    }
}
