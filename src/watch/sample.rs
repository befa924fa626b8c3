//! One sample of a database's workload: what its statements took and what errors its
//! clients got over a few seconds. Samples are taken by the database worker, kept in a ring
//! in shared memory (the baseline any migration can be judged against), and those of a
//! watched migration recorded with it. Plain Rust over plain numbers.

use std::collections::HashMap;

pub use crate::pg::sample_ring::{QueryDelta, Sample, QUERIES};

/// One entry of pg_stat_statements in a database: its queryid, user and whether it was
/// called at top level. Each is evicted on its own, so each is followed on its own.
pub type Entry = (i64, u32, bool);

/// Cumulative calls and time by entry, as pg_stat_statements counts them.
pub type Totals = HashMap<Entry, (f64, f64)>;

/// What each statement did between two readings of pg_stat_statements, the `QUERIES` that
/// took most time kept apart. An entry whose calls went down was evicted (and maybe entered
/// again) in between: its interval is unknown and left out, as is one not seen before (its
/// first calls fell partly before the interval). A statement's entries (its users, top
/// level or not) are then added up: one entry's eviction is not hidden by another's growth.
pub fn deltas(before: &Totals, now: &Totals, sample: &mut Sample) {
    let mut by_statement: HashMap<i64, (f64, f64)> = HashMap::new();
    for (entry, (calls, time)) in now {
        let Some((calls_before, time_before)) = before.get(entry) else {
            continue;
        };
        let (calls, time_ms) = (calls - calls_before, time - time_before);
        if calls > 0.0 && time_ms >= 0.0 {
            let sum = by_statement.entry(entry.0).or_default();
            sum.0 += calls;
            sum.1 += time_ms;
        }
    }
    let mut moved: Vec<QueryDelta> = by_statement
        .into_iter()
        .map(|(queryid, (calls, time_ms))| QueryDelta {
            queryid,
            calls,
            time_ms,
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
        rows.iter()
            .map(|(id, c, t)| ((*id, 10, true), (*c, *t)))
            .collect()
    }

    #[test]
    fn a_statement_s_entries_are_followed_each_on_its_own() {
        // Statement 7 run by two users: one entry evicted (and entered again) while the
        // other grew more than it lost. Summed by queryid first, the eviction would hide.
        let before: Totals = [
            ((7, 10, true), (100.0, 100.0)),
            ((7, 11, true), (10.0, 10.0)),
        ]
        .into();
        let now: Totals = [
            ((7, 10, true), (5.0, 50.0)),
            ((7, 11, true), (130.0, 130.0)),
        ]
        .into();
        let mut s = Sample::empty(0, 10.0);
        deltas(&before, &now, &mut s);
        assert_eq!(
            s.queries(),
            &[QueryDelta {
                queryid: 7,
                calls: 120.0,
                time_ms: 120.0
            }]
        );
        // Top level or nested, the same statement: added up.
        let before: Totals = [((7, 10, true), (1.0, 1.0)), ((7, 10, false), (1.0, 1.0))].into();
        let now: Totals = [((7, 10, true), (3.0, 5.0)), ((7, 10, false), (2.0, 3.0))].into();
        let mut s = Sample::empty(0, 10.0);
        deltas(&before, &now, &mut s);
        assert_eq!(s.queries()[0].calls, 3.0);
        assert_eq!(s.queries()[0].time_ms, 6.0);
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
        let n = QUERIES as i64 + 8;
        let before: Totals = (0..n).map(|i| ((i, 10, true), (0.0, 0.0))).collect();
        let now: Totals = (0..n).map(|i| ((i, 10, true), (1.0, i as f64))).collect();
        let mut s = Sample::empty(0, 1.0);
        deltas(&before, &now, &mut s);
        assert_eq!(s.query_count, QUERIES);
        assert_eq!(s.queries()[0].queryid, n - 1);
        assert_eq!(s.other_calls, 8.0);
        // 0 + 1 + ... + 7
        assert_eq!(s.other_time_ms, 28.0);
        assert_eq!(s.calls(), n as f64);
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
    fn a_cheap_lookup_beside_forty_costlier_statements_is_kept_and_judged() {
        // 40 statements of 1 ms a call, and a lookup of 0.02 ms: the lookup is the cheapest,
        // and a sample keeps it, so a watch knows its mean when a change makes it slow.
        let mut before: Totals = (0..40).map(|i| ((i, 10, true), (0.0, 0.0))).collect();
        before.insert((999, 10, true), (0.0, 0.0));
        let mut now: Totals = (0..40).map(|i| ((i, 10, true), (10.0, 10.0))).collect();
        now.insert((999, 10, true), (10.0, 0.2));
        let mut baseline = Sample::empty(0, 10.0);
        deltas(&before, &now, &mut baseline);
        assert_eq!(baseline.queries().last().unwrap().queryid, 999);
        let reference = reference(&[baseline]);
        assert_eq!(reference[&999], 0.02);
        // After the change it takes 20 ms a call.
        let mut after = now.clone();
        for (entry, (calls, time)) in &mut after {
            *calls += 10.0;
            *time += if entry.0 == 999 { 200.0 } else { 10.0 };
        }
        let mut watched = Sample::empty(0, 10.0);
        deltas(&now, &after, &mut watched);
        let (index, coverage) = latency_index(&watched, &reference).unwrap();
        // 600 ms where the same calls took 400.2 before: the lookup's 200 ms show.
        assert!(
            (index - 600.0 / 400.2).abs() < 1e-9 && coverage == 1.0,
            "{index} {coverage}"
        );
        assert!((worst_added_ms(&watched, &reference).unwrap() - 19.98).abs() < 1e-9);
    }

    #[test]
    fn a_sample_is_recorded_with_the_queries_it_kept() {
        let s = sample(&[(1, 100.0, 1.0), (2, 1.0, 0.02)]);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["queries"].as_array().unwrap().len(), 2);
        let back: Sample = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        // An empty one, and a list longer than a sample keeps (cut).
        let empty = Sample::empty(5, 1.0);
        assert_eq!(
            serde_json::from_value::<Sample>(serde_json::to_value(empty).unwrap()).unwrap(),
            empty
        );
        let mut json = serde_json::to_value(s).unwrap();
        json["queries"] = serde_json::Value::Array(
            (0..QUERIES + 5)
                .map(|i| serde_json::json!({"queryid": i, "calls": 1.0, "time_ms": 1.0}))
                .collect(),
        );
        let long: Sample = serde_json::from_value(json).unwrap();
        assert_eq!(long.queries[QUERIES - 1].queryid, QUERIES as i64 - 1);
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
