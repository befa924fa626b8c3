//! The health gate's judgement at one look: the samples since a change against those before
//! it, signal by signal, and what follows for the watch. Plain Rust over recorded numbers;
//! the worker records the samples and acts on the verdicts.

use super::signals::Signal;
use super::stats;
use crate::migration::status::{LookVerdict, OnRegression, WatchState};
use crate::pg::error_hook::COUNTERS;
use serde::{Deserialize, Serialize};

/// Tests at each look: latency, and each kind of error.
const TESTS: u32 = 1 + COUNTERS as u32;

/// One sample as a watch records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub seconds: f64,
    /// The latency index (see `sample::latency_index`); None without pg_stat_statements.
    pub latency: Option<f64>,
    /// For a watch sample, the most any one statement's time per call grew (ms; see
    /// `sample::worst_added_ms`).
    pub added_ms: Option<f64>,
    pub errors: [u64; COUNTERS],
    /// The longest current wait for a lock on a relation the migration changed, when sampled.
    pub lock_wait_ms: f64,
    /// The replay lag of the furthest streaming replica.
    pub lag_bytes: f64,
}

/// The thresholds of a judgement (the `migrate.watch_*` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The chance of a false alarm over all the looks and tests of one watch.
    pub alpha: f64,
    /// The latency ratio a change may add and still pass (1.2: 20% slower).
    pub tolerance: f64,
    /// Time per call a change may add whatever the ratio (ms): below it a shift is noise.
    pub floor_ms: f64,
    /// Samples needed on each side before latency can pass or fail.
    pub min_samples: usize,
    /// Errors beyond those the baseline's rate predicts before a kind of error can fail.
    pub min_excess_errors: f64,
    /// A latency ratio that fails a look at once, without waiting for a second one.
    pub brake: f64,
    pub lock_wait_ms: f64,
    pub lag_bytes: f64,
    /// Samples in a row above a gauge's threshold for it to fail.
    pub gauge_run: usize,
    /// The watch's looks: the false-alarm chance is spread over them.
    pub looks: usize,
}

/// One signal at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub signal: String,
    /// Latency: the median index. Errors: per minute. Gauges: the threshold.
    pub baseline: Option<f64>,
    /// The same, since the change (a gauge: its last value).
    pub now: Option<f64>,
    /// Latency: the estimated ratio (Hodges-Lehmann). Errors: the count beyond the
    /// baseline's rate.
    pub shift: Option<f64>,
    /// Latency: the upper bound of the ratio's one-sided confidence interval.
    pub upper: Option<f64>,
    pub p_value: Option<f64>,
    /// Latency: the most any one statement's time per call grew over its baseline (ms), the
    /// upper quartile over the samples since the change.
    #[serde(default)]
    pub added_ms: Option<f64>,
    pub verdict: LookVerdict,
}

impl Finding {
    fn new(signal: &str, verdict: LookVerdict) -> Finding {
        Finding {
            signal: signal.to_string(),
            baseline: None,
            now: None,
            shift: None,
            upper: None,
            p_value: None,
            added_ms: None,
            verdict,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    pub findings: Vec<Finding>,
    pub verdict: LookVerdict,
    /// The latency ratio reached the emergency brake.
    pub brake: bool,
    /// DDL outside migrations on what the migration changed: the samples since are no
    /// longer the change's alone.
    pub drift: Vec<String>,
}

impl Default for Look {
    fn default() -> Look {
        Look {
            findings: vec![],
            verdict: LookVerdict::Inconclusive,
            brake: false,
            drift: vec![],
        }
    }
}

/// What the worker reads from the catalogs and statistics at a look, beside the samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// Data checksum failures in the database since the watch began; None: checksums are
    /// off.
    pub checksum_failures: Option<i64>,
    /// The indexes the migration created: how many, how many no scan has used since, and
    /// their scans.
    pub indexes: Option<IndexUse>,
    /// DDL run outside migrations on the objects the migration changed, since the watch
    /// began, as "COMMAND object".
    pub drift: Vec<String>,
    /// The WAL kept by the physical slot of a disconnected standby furthest behind; None: no
    /// such slot. Its lag grows with all the primary writes, so it alerts and never decides.
    pub disconnected_slot_bytes: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IndexUse {
    pub created: i64,
    pub unused: i64,
    pub scans: i64,
}

/// Adds to a look the signals that alert and never decide by themselves: checksum failures
/// (a disk's or a kernel's fault, which no rollback mends), indexes the migration created
/// that nothing uses yet (they still cost every write), drift (which holds a watch:
/// a change made beside it cannot be told apart from it, nor its rollback run over it), and
/// disconnected standbys' slots (their lag is not the change's doing).
pub fn with_context(mut look: Look, context: &Context) -> Look {
    let mut checksums = Finding::new("checksum failures", LookVerdict::Unavailable);
    if let Some(n) = context.checksum_failures {
        checksums.now = Some(n as f64);
        checksums.verdict = if n > 0 {
            LookVerdict::Alert
        } else {
            LookVerdict::Pass
        };
    }
    let mut indexes = Finding::new("index use", LookVerdict::Unavailable);
    if let Some(u) = context.indexes.filter(|u| u.created > 0) {
        indexes.baseline = Some(u.created as f64);
        indexes.now = Some(u.scans as f64);
        indexes.shift = Some(u.unused as f64);
        indexes.verdict = if u.unused > 0 {
            LookVerdict::Alert
        } else {
            LookVerdict::Pass
        };
    }
    let mut drift = Finding::new("drift", LookVerdict::Pass);
    drift.now = Some(context.drift.len() as f64);
    if !context.drift.is_empty() {
        drift.verdict = LookVerdict::Alert;
    }
    let mut slots = Finding::new("disconnected standbys", LookVerdict::Pass);
    if let Some(bytes) = context.disconnected_slot_bytes {
        slots.now = Some(bytes);
        slots.verdict = LookVerdict::Alert;
    }
    look.findings.extend([checksums, indexes, drift, slots]);
    look.drift = context.drift.clone();
    look
}

/// The upper quartile (nearest rank): the value three of four are at or below.
fn upper_quartile(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| values[(3 * n).div_ceil(4) - 1])
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    })
}

/// The level each test is held to: the false-alarm chance spread over every test of every
/// look.
fn per_test(limits: &Limits) -> f64 {
    stats::per_look(limits.alpha, limits.looks.max(1) as u32 * TESTS)
}

/// The level of the upper bound a pass needs: alpha spread over the looks.
fn per_pass(limits: &Limits) -> f64 {
    stats::per_look(limits.alpha, limits.looks.max(1) as u32)
}

fn latency(baseline: &[Point], watch: &[Point], limits: &Limits) -> (Finding, bool) {
    let logs = |points: &[Point]| -> Vec<f64> {
        points
            .iter()
            .filter_map(|p| p.latency.filter(|x| *x > 0.0).map(f64::ln))
            .collect()
    };
    let (before, after) = (logs(baseline), logs(watch));
    if before.is_empty() && after.is_empty() {
        return (Finding::new("latency", LookVerdict::Unavailable), false);
    }
    // Within the floor: in three samples of four no statement got slower by more than the
    // floor per call. Then a ratio, however significant, is noise of tiny times; a statement
    // that regressed shows by itself, whatever else runs, and one that regressed in more
    // than a quarter of the samples (a slow path taken now and then) is not hidden by the
    // rest. Unknown (no statement data): the ratio alone decides.
    let added_ms = upper_quartile(&mut watch.iter().filter_map(|p| p.added_ms).collect::<Vec<_>>());
    let within_floor = added_ms.is_some_and(|added| added <= limits.floor_ms);
    let mut f = Finding::new("latency", LookVerdict::Inconclusive);
    f.added_ms = added_ms;
    f.baseline = median(&mut before.iter().map(|x| x.exp()).collect::<Vec<_>>());
    f.now = median(&mut after.iter().map(|x| x.exp()).collect::<Vec<_>>());
    // A collapse shows within two samples; waiting for the test would let it go on.
    let brake = after.len() >= 2
        && matches!((f.baseline, f.now), (Some(b), Some(n)) if b > 0.0 && n / b >= limits.brake);
    if brake {
        // Too few samples for the test: the ratio of the medians stands for the shift.
        f.shift = f.now.zip(f.baseline).map(|(n, b)| n / b);
        f.verdict = LookVerdict::Fail;
        return (f, true);
    }
    if before.len() < limits.min_samples || after.len() < limits.min_samples {
        return (f, false);
    }
    let alpha = per_test(limits);
    let test = stats::mann_whitney_greater(&before, &after);
    // A pass ends the watch: the chance of passing a regression is held to alpha over the
    // looks (a false alarm's, over every test of every look).
    let shift = stats::hodges_lehmann(&before, &after, 1.0 - per_pass(limits));
    f.p_value = Some(test.map_or(1.0, |t| t.p));
    if let Some(shift) = shift {
        f.shift = Some(shift.estimate.exp());
        f.upper = Some(shift.upper.exp());
    }
    f.verdict = match (f.p_value, f.shift, f.upper) {
        (Some(p), Some(ratio), _) if p < alpha && ratio > limits.tolerance && !within_floor => {
            LookVerdict::Fail
        }
        (_, _, Some(upper)) if upper <= limits.tolerance || within_floor => LookVerdict::Pass,
        // Every sample alike on both sides (no spread to test): no change.
        (_, None, None) if test.is_none() => LookVerdict::Pass,
        _ => LookVerdict::Inconclusive,
    };
    (f, false)
}

fn errors(signal: Signal, baseline: &[Point], watch: &[Point], limits: &Limits) -> Finding {
    let count = |points: &[Point]| points.iter().map(|p| p.errors[signal.index()]).sum::<u64>();
    let exposure = |points: &[Point]| points.iter().map(|p| p.seconds).sum::<f64>();
    let (b, w) = (count(baseline), count(watch));
    let (be, we) = (exposure(baseline), exposure(watch));
    let mut f = Finding::new(signal.name(), LookVerdict::Inconclusive);
    if be <= 0.0 || we <= 0.0 {
        return f;
    }
    f.baseline = Some(b as f64 * 60.0 / be);
    f.now = Some(w as f64 * 60.0 / we);
    let excess = w as f64 - b as f64 * we / be;
    let p = stats::more_errors(b, be, w, we);
    f.shift = Some(excess);
    f.p_value = Some(p);
    f.verdict = if p < per_test(limits) && excess >= limits.min_excess_errors {
        LookVerdict::Fail
    } else {
        LookVerdict::Pass
    };
    f
}

fn gauge(
    name: &str,
    watch: &[Point],
    threshold: f64,
    run: usize,
    value: fn(&Point) -> f64,
) -> Finding {
    let mut f = Finding::new(name, LookVerdict::Pass);
    f.baseline = Some(threshold);
    f.now = watch.last().map(value);
    let above = watch
        .iter()
        .rev()
        .take_while(|p| value(p) > threshold)
        .count();
    if threshold > 0.0 && run > 0 && above >= run {
        f.verdict = LookVerdict::Fail;
    }
    f
}

/// Judges the samples since the change (after its settling time) against the baseline.
pub fn judge(baseline: &[Point], watch: &[Point], limits: &Limits) -> Look {
    let (latency, brake) = latency(baseline, watch, limits);
    let mut findings = vec![latency];
    findings.extend(
        Signal::ALL
            .iter()
            .map(|s| errors(*s, baseline, watch, limits)),
    );
    findings.push(gauge(
        "lock wait",
        watch,
        limits.lock_wait_ms,
        limits.gauge_run,
        |p| p.lock_wait_ms,
    ));
    findings.push(gauge(
        "replication lag",
        watch,
        limits.lag_bytes,
        limits.gauge_run,
        |p| p.lag_bytes,
    ));
    let verdict = if findings.iter().any(|f| f.verdict == LookVerdict::Fail) {
        LookVerdict::Fail
    } else if watch.len() >= limits.min_samples
        && findings
            .iter()
            .all(|f| matches!(f.verdict, LookVerdict::Pass | LookVerdict::Unavailable))
    {
        LookVerdict::Pass
    } else {
        LookVerdict::Inconclusive
    };
    Look {
        findings,
        verdict,
        brake,
        drift: vec![],
    }
}

/// Which of `looks` is due `elapsed` seconds into a watch of `watch` seconds: its number (1
/// for the first), 0 before the first.
pub fn looks_due(elapsed: f64, watch: f64, looks: &[f64]) -> usize {
    looks.iter().take_while(|f| elapsed >= *f * watch).count()
}

/// What a watch does after a look: its state, and whether its rollback is to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub state: WatchState,
    pub rollback: bool,
}

/// The watch's next state after a look with `verdict`, the `failing` looks in a row now
/// (this one included), and whether it was the last. `rollback` says whether a rollback
/// may run (declared, asked for, and the migration destroyed nothing).
pub fn after_look(
    state: WatchState,
    look: &Look,
    failing: u32,
    last: bool,
    on_regression: OnRegression,
    rollback: bool,
) -> After {
    let failed = look.verdict == LookVerdict::Fail && (look.brake || failing >= 2);
    let stay = After {
        state,
        rollback: false,
    };
    let to = |state| After {
        state,
        rollback: false,
    };
    match state {
        // Neither judged nor rolled back over: a person decides.
        WatchState::Watching if !look.drift.is_empty() => to(WatchState::Held),
        WatchState::Watching => match look.verdict {
            LookVerdict::Pass => to(WatchState::Complete),
            _ if failed && on_regression == OnRegression::Rollback && rollback => After {
                state: WatchState::RollingBack,
                rollback: true,
            },
            _ if failed || last => to(WatchState::Held),
            _ => stay,
        },
        // The rollback is watched against the same baseline: it must be shown to have
        // brought the workload back.
        WatchState::Recovering => match look.verdict {
            LookVerdict::Pass => to(WatchState::RolledBack),
            _ if failed || last => to(WatchState::RollbackFailed),
            _ => stay,
        },
        _ => stay,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    const LIMITS: Limits = Limits {
        alpha: 0.05,
        tolerance: 1.2,
        floor_ms: 0.05,
        min_samples: 6,
        min_excess_errors: 10.0,
        brake: 10.0,
        lock_wait_ms: 1000.0,
        lag_bytes: 0.0,
        gauge_run: 3,
        looks: 4,
    };

    fn points(latencies: &[f64]) -> Vec<Point> {
        latencies
            .iter()
            .map(|l| Point {
                seconds: 10.0,
                latency: Some(*l),
                added_ms: None,
                errors: [0; COUNTERS],
                lock_wait_ms: 0.0,
                lag_bytes: 0.0,
            })
            .collect()
    }

    // Spread like a busy server's ten-second latency indexes.
    const CALM: [f64; 12] = [
        0.97, 1.03, 1.01, 0.95, 1.06, 0.99, 1.02, 0.98, 1.04, 0.96, 1.0, 1.05,
    ];

    #[test]
    fn no_change_passes_once_shown_within_tolerance() {
        let look = judge(&points(&CALM), &points(&CALM[..8]), &LIMITS);
        assert_eq!(look.verdict, LookVerdict::Pass, "{look:?}");
        let latency = &look.findings[0];
        assert!(latency.upper.unwrap() <= 1.2 && latency.upper.unwrap() > 1.0);
        // Too few samples since the change: not yet.
        let early = judge(&points(&CALM), &points(&CALM[..3]), &LIMITS);
        assert_eq!(early.verdict, LookVerdict::Inconclusive);
    }

    #[test]
    fn a_slower_workload_fails_and_a_collapse_brakes() {
        let slow: Vec<f64> = CALM.iter().map(|x| x * 1.6).collect();
        let look = judge(&points(&CALM), &points(&slow[..8]), &LIMITS);
        assert_eq!(look.verdict, LookVerdict::Fail, "{look:?}");
        assert!(!look.brake);
        let ratio = look.findings[0].shift.unwrap();
        assert!((ratio - 1.6).abs() < 0.1, "{ratio}");
        let collapse: Vec<f64> = CALM.iter().map(|x| x * 12.0).collect();
        let look = judge(&points(&CALM), &points(&collapse[..2]), &LIMITS);
        assert!(look.brake && look.verdict == LookVerdict::Fail);
        assert!(look.findings[0].shift.unwrap() > 10.0);
    }

    #[test]
    fn a_small_shift_within_tolerance_is_not_a_regression() {
        let slightly: Vec<f64> = CALM.iter().map(|x| x * 1.05).collect();
        let look = judge(&points(&CALM), &points(&slightly), &LIMITS);
        assert_ne!(look.verdict, LookVerdict::Fail, "{look:?}");
    }

    #[test]
    fn a_shift_no_statement_feels_is_noise_and_one_that_one_statement_feels_is_not() {
        let adding = |ratio: f64, added_ms: f64| -> Vec<Point> {
            points(&CALM.iter().map(|x| x * ratio).collect::<Vec<_>>())
                .into_iter()
                .map(|p| Point {
                    added_ms: Some(added_ms),
                    ..p
                })
                .collect()
        };
        // 1.8x, each statement at most 16 µs slower a call (under the 50 µs floor): passes.
        let tiny = judge(&points(&CALM), &adding(1.8, 0.016), &LIMITS);
        assert_eq!(tiny.verdict, LookVerdict::Pass, "{tiny:?}");
        // What decided it is kept with the finding (migrate.watch_looks.added_ms).
        let latency = |look: &Look| {
            look.findings
                .iter()
                .find(|f| f.signal == "latency")
                .cloned()
        };
        assert_eq!(latency(&tiny).and_then(|f| f.added_ms), Some(0.016));
        // 1.8x with one statement 3.5 ms slower a call, however many cheap calls run beside it.
        let real = judge(&points(&CALM), &adding(1.8, 3.5), &LIMITS);
        assert_eq!(real.verdict, LookVerdict::Fail, "{real:?}");
        // The brake is the ratio's alone.
        assert!(judge(&points(&CALM), &adding(20.0, 0.001)[..2], &LIMITS).brake);
        // A statement slower by 3.5 ms in a third of the samples is not hidden by the rest.
        let now_and_then: Vec<Point> = adding(1.8, 0.016)
            .into_iter()
            .enumerate()
            .map(|(i, p)| Point {
                added_ms: Some(if i % 3 == 0 { 3.5 } else { 0.016 }),
                ..p
            })
            .collect();
        let look = judge(&points(&CALM), &now_and_then, &LIMITS);
        assert_eq!(look.verdict, LookVerdict::Fail, "{look:?}");
        assert_eq!(latency(&look).and_then(|f| f.added_ms), Some(3.5));
        // No statement data: the ratio alone decides.
        let slower: Vec<f64> = CALM.iter().map(|x| x * 1.8).collect();
        assert_eq!(
            judge(&points(&CALM), &points(&slower), &LIMITS).verdict,
            LookVerdict::Fail
        );
    }

    #[test]
    fn errors_where_there_were_none_fail() {
        let baseline = points(&CALM);
        let mut watch = points(&CALM[..6]);
        for p in &mut watch {
            p.errors[Signal::UndefinedObject.index()] = 40;
            p.errors[Signal::AnyError.index()] = 40;
        }
        let look = judge(&baseline, &watch, &LIMITS);
        assert_eq!(look.verdict, LookVerdict::Fail);
        let undefined = look
            .findings
            .iter()
            .find(|f| f.signal == "undefined object")
            .unwrap();
        assert_eq!(undefined.verdict, LookVerdict::Fail);
        assert_eq!(undefined.shift, Some(240.0));
        // A handful, below the minimum excess, is not a regression.
        for p in &mut watch {
            p.errors = [0; COUNTERS];
        }
        watch[0].errors[Signal::Deadlock.index()] = 3;
        assert_ne!(judge(&baseline, &watch, &LIMITS).verdict, LookVerdict::Fail);
    }

    #[test]
    fn gauges_fail_only_when_above_for_a_run_of_samples() {
        let mut watch = points(&CALM[..8]);
        watch[7].lock_wait_ms = 5000.0;
        watch[6].lock_wait_ms = 5000.0;
        assert_eq!(
            judge(&points(&CALM), &watch, &LIMITS).verdict,
            LookVerdict::Pass
        );
        watch[5].lock_wait_ms = 5000.0;
        assert_eq!(
            judge(&points(&CALM), &watch, &LIMITS).verdict,
            LookVerdict::Fail
        );
        // The run is migrate.watch_gauge_run: two in a row fail a run of two, not of four.
        let two = Limits {
            gauge_run: 2,
            ..LIMITS
        };
        let four = Limits {
            gauge_run: 4,
            ..LIMITS
        };
        watch[5].lock_wait_ms = 0.0;
        assert_eq!(
            judge(&points(&CALM), &watch, &two).verdict,
            LookVerdict::Fail
        );
        watch[5].lock_wait_ms = 5000.0;
        assert_eq!(
            judge(&points(&CALM), &watch, &four).verdict,
            LookVerdict::Pass
        );
        // Replication lag by the same rule, once a limit is set (0: none).
        let mut watch = points(&CALM[..8]);
        for p in &mut watch[5..] {
            p.lag_bytes = 64.0 * 1024.0 * 1024.0;
        }
        assert_eq!(
            judge(&points(&CALM), &watch, &LIMITS).verdict,
            LookVerdict::Pass
        );
        let lag = Limits {
            lag_bytes: 16.0 * 1024.0 * 1024.0,
            ..LIMITS
        };
        let look = judge(&points(&CALM), &watch, &lag);
        assert_eq!(look.verdict, LookVerdict::Fail);
        let finding = look.findings.iter().find(|f| f.signal == "replication lag");
        assert_eq!(finding.map(|f| f.verdict), Some(LookVerdict::Fail));
        watch[5].lag_bytes = 0.0;
        assert_eq!(
            judge(&points(&CALM), &watch, &lag).verdict,
            LookVerdict::Pass
        );
    }

    #[test]
    fn without_latency_the_other_signals_decide() {
        let mut watch = points(&CALM[..8]);
        for p in &mut watch {
            p.latency = None;
        }
        let mut baseline = points(&CALM);
        for p in &mut baseline {
            p.latency = None;
        }
        let look = judge(&baseline, &watch, &LIMITS);
        assert_eq!(look.findings[0].verdict, LookVerdict::Unavailable);
        assert_eq!(look.verdict, LookVerdict::Pass);
    }

    #[test]
    fn looks_fall_at_fixed_fractions() {
        let looks = crate::gucs::default_looks();
        assert_eq!(looks, [0.1, 0.2, 0.5, 1.0]);
        assert_eq!(looks_due(59.0, 600.0, &looks), 0);
        assert_eq!(looks_due(60.0, 600.0, &looks), 1);
        assert_eq!(looks_due(299.0, 600.0, &looks), 2);
        assert_eq!(looks_due(600.0, 600.0, &looks), 4);
        assert_eq!(looks_due(1e9, 600.0, &looks), 4);
        assert_eq!(looks_due(299.0, 600.0, &[0.5, 1.0]), 0);
        assert_eq!(looks_due(300.0, 600.0, &[0.5, 1.0]), 1);
    }

    #[test]
    fn fewer_looks_spend_alpha_on_fewer_tests() {
        // Alpha is spread over every look: one look holds each test to four times the level
        // four looks do.
        let one = Limits { looks: 1, ..LIMITS };
        assert!((per_test(&one) - 4.0 * per_test(&LIMITS)).abs() < 1e-15);
        assert!((per_pass(&one) - 0.05).abs() < 1e-15);
        assert!((per_pass(&LIMITS) - 0.0125).abs() < 1e-15);
    }

    #[test]
    fn a_regression_is_rolled_back_after_two_failing_looks() {
        let fail = Look {
            verdict: LookVerdict::Fail,
            ..Look::default()
        };
        let w = WatchState::Watching;
        let r = OnRegression::Rollback;
        assert_eq!(after_look(w, &fail, 1, false, r, true).state, w);
        let second = after_look(w, &fail, 2, false, r, true);
        assert_eq!(
            (second.state, second.rollback),
            (WatchState::RollingBack, true)
        );
        // Without a rollback that may run, or when asked to hold: held.
        assert_eq!(
            after_look(w, &fail, 2, false, r, false).state,
            WatchState::Held
        );
        let hold = OnRegression::Hold;
        assert_eq!(
            after_look(w, &fail, 2, false, hold, true).state,
            WatchState::Held
        );
        let brake = Look {
            brake: true,
            ..fail.clone()
        };
        assert!(after_look(w, &brake, 1, false, r, true).rollback);
        // Inconclusive at the last look: held; a pass completes.
        let unsure = Look {
            verdict: LookVerdict::Inconclusive,
            ..fail.clone()
        };
        assert_eq!(
            after_look(w, &unsure, 0, true, r, true).state,
            WatchState::Held
        );
        let pass = Look {
            verdict: LookVerdict::Pass,
            ..fail.clone()
        };
        assert_eq!(
            after_look(w, &pass, 0, false, r, true).state,
            WatchState::Complete
        );
        let rec = WatchState::Recovering;
        assert_eq!(
            after_look(rec, &pass, 0, false, r, true).state,
            WatchState::RolledBack
        );
        assert_eq!(
            after_look(rec, &unsure, 0, true, r, true).state,
            WatchState::RollbackFailed
        );
        assert!(!after_look(rec, &fail, 2, false, r, true).rollback);
        // Drift holds a watch whatever its verdict, and never rolls it back.
        let drifted = with_context(
            fail.clone(),
            &Context {
                drift: vec!["DROP INDEX public.i".into()],
                ..Context::default()
            },
        );
        let after = after_look(w, &drifted, 2, false, r, true);
        assert_eq!((after.state, after.rollback), (WatchState::Held, false));
        let passed_but_drifted = Look {
            verdict: LookVerdict::Pass,
            ..drifted.clone()
        };
        assert_eq!(
            after_look(w, &passed_but_drifted, 0, false, r, true).state,
            WatchState::Held
        );
    }

    #[test]
    fn checksum_failures_and_unused_indexes_alert_without_deciding() {
        let pass = judge(&points(&CALM), &points(&CALM[..8]), &LIMITS);
        assert_eq!(pass.verdict, LookVerdict::Pass);
        let look = with_context(
            pass,
            &Context {
                checksum_failures: Some(2),
                indexes: Some(IndexUse {
                    created: 2,
                    unused: 1,
                    scans: 40,
                }),
                drift: vec![],
                disconnected_slot_bytes: Some(5e9),
            },
        );
        let verdict = |signal: &str| {
            look.findings
                .iter()
                .find(|f| f.signal == signal)
                .map(|f| f.verdict)
        };
        assert_eq!(verdict("checksum failures"), Some(LookVerdict::Alert));
        assert_eq!(verdict("index use"), Some(LookVerdict::Alert));
        assert_eq!(verdict("drift"), Some(LookVerdict::Pass));
        // A standby gone with its slot kept: said, and the change still passes.
        assert_eq!(verdict("disconnected standbys"), Some(LookVerdict::Alert));
        assert_eq!(look.verdict, LookVerdict::Pass);
        let w = WatchState::Watching;
        assert_eq!(
            after_look(w, &look, 0, false, OnRegression::Rollback, true).state,
            WatchState::Complete
        );
        // Checksums off, no index created: nothing to say.
        let quiet = with_context(Look::default(), &Context::default());
        assert_eq!(
            verdict_of(&quiet, "checksum failures"),
            LookVerdict::Unavailable
        );
        assert_eq!(verdict_of(&quiet, "index use"), LookVerdict::Unavailable);
        assert_eq!(
            verdict_of(&quiet, "disconnected standbys"),
            LookVerdict::Pass
        );
    }

    fn verdict_of(look: &Look, signal: &str) -> LookVerdict {
        look.findings
            .iter()
            .find(|f| f.signal == signal)
            .unwrap()
            .verdict
    }
}
