//! The statistics of the health gate: is the workload after a change worse than before it?
//! Latency by a one-sided Mann-Whitney U test with a Hodges-Lehmann estimate of the shift
//! (on logarithms, so that a shift is a ratio); errors by a conditional binomial test,
//! valid when the baseline had none. Plain Rust over plain numbers: the unit tests check
//! them against R's `wilcox.test` and `binom.test` (R 4.2.2), whose p-values SciPy's
//! `mannwhitneyu` and `binom.sf` give to the last digit too.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal};

/// A one-sided Mann-Whitney U test that `watch` tends to be larger than `baseline`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of `watch`: how many (watch, baseline) pairs have the watch value larger, ties
    /// counting a half.
    pub u: f64,
    /// The probability of a U at least this large if both came from one distribution.
    pub p: f64,
}

fn standard_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("the standard normal distribution")
}

/// Ranks of `values` (1-based), ties sharing the mean of their ranks, and the sum over tie
/// groups of t³ - t (for the variance's tie correction).
fn ranks(values: &[f64]) -> (Vec<f64>, f64) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let mut ranks = vec![0.0; values.len()];
    let mut ties = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let t = (end - start) as f64;
        // Ranks start+1 ..= end, averaged.
        let rank = (start + 1 + end) as f64 / 2.0;
        for i in &order[start..end] {
            ranks[*i] = rank;
        }
        ties += t * t * t - t;
        start = end;
    }
    (ranks, ties)
}

/// The test by its normal approximation, with the tie and continuity corrections (SciPy's
/// `mannwhitneyu(watch, baseline, alternative="greater", method="asymptotic")`, R's
/// `wilcox.test(watch, baseline, alternative = "greater", exact = FALSE)`). None when a
/// side is empty or every value is the same.
pub fn mann_whitney_greater(baseline: &[f64], watch: &[f64]) -> Option<MannWhitney> {
    let (nb, nw) = (baseline.len() as f64, watch.len() as f64);
    if baseline.is_empty() || watch.is_empty() {
        return None;
    }
    let all: Vec<f64> = watch.iter().chain(baseline).copied().collect();
    let (ranks, ties) = ranks(&all);
    let n = nb + nw;
    let rank_sum: f64 = ranks[..watch.len()].iter().sum();
    let u = rank_sum - nw * (nw + 1.0) / 2.0;
    let variance = nb * nw / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        return None;
    }
    let z = (u - nb * nw / 2.0 - 0.5) / variance.sqrt();
    Some(MannWhitney {
        u,
        p: standard_normal().sf(z),
    })
}

/// How much larger `watch` is than `baseline`: the Hodges-Lehmann estimate (the median of
/// every pairwise difference) and the upper bound of its one-sided confidence interval at
/// `confidence`, by the normal approximation of U's distribution (Moses' method).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    pub estimate: f64,
    pub upper: f64,
}

pub fn hodges_lehmann(baseline: &[f64], watch: &[f64], confidence: f64) -> Option<Shift> {
    if baseline.is_empty() || watch.is_empty() || !(0.5..1.0).contains(&confidence) {
        return None;
    }
    let mut differences: Vec<f64> = watch
        .iter()
        .flat_map(|w| baseline.iter().map(move |b| w - b))
        .collect();
    differences.sort_by(f64::total_cmp);
    let count = differences.len();
    let estimate = if count % 2 == 1 {
        differences[count / 2]
    } else {
        (differences[count / 2 - 1] + differences[count / 2]) / 2.0
    };
    let (nb, nw) = (baseline.len() as f64, watch.len() as f64);
    let z = standard_normal().inverse_cdf(confidence);
    // The C-th smallest difference is the lower bound, the C-th largest the upper one.
    let c = (nb * nw / 2.0 - z * (nb * nw * (nb + nw + 1.0) / 12.0).sqrt()).floor();
    let c = (c.max(1.0) as usize).min(count);
    Some(Shift {
        estimate,
        upper: differences[count - c],
    })
}

/// A one-sided test that errors come more often in the watch than in the baseline: given
/// the `baseline` and `watch` counts over exposures (seconds, or calls) of each, the watch's
/// share of all the errors is binomial with the share of the exposure if the rate did not
/// change. The probability of a share at least as large. 1 when there were no errors in the
/// watch; valid when the baseline had none.
pub fn more_errors(baseline: u64, baseline_exposure: f64, watch: u64, watch_exposure: f64) -> f64 {
    if watch == 0 || baseline_exposure <= 0.0 || watch_exposure <= 0.0 {
        return 1.0;
    }
    let share = watch_exposure / (baseline_exposure + watch_exposure);
    let Ok(binomial) = Binomial::new(share, baseline + watch) else {
        return 1.0;
    };
    // P(X >= watch) = 1 - P(X <= watch - 1).
    binomial.sf(watch - 1)
}

/// The level each of `looks` tests is held to, so that the chance of any false alarm over
/// all of them stays within `alpha` (Bonferroni: conservative, and simple to state).
pub fn per_look(alpha: f64, looks: u32) -> f64 {
    alpha / f64::from(looks.max(1))
}

#[cfg(test)]
mod unit {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-300)
    }

    // Figures from R 4.2.2: wilcox.test(watch, baseline, alternative = "greater",
    // exact = FALSE) (SciPy's mannwhitneyu(..., method="asymptotic") gives the same digits),
    // and binom.test.
    const BASELINE: [f64; 40] = [
        1.0, 1.094, 0.921, 0.766, 0.872, 0.743, 1.018, 1.495, 0.863, 0.83, 1.158, 1.113, 1.032,
        0.756, 0.991, 1.232, 0.668, 0.872, 0.565, 0.679, 0.575, 0.932, 0.684, 1.085, 1.048, 0.945,
        0.47, 0.851, 0.986, 1.035, 0.632, 0.866, 0.746, 0.785, 1.375, 0.785, 0.99, 1.304, 0.839,
        0.967,
    ];
    const WATCH: [f64; 30] = [
        1.263, 1.245, 0.846, 1.25, 1.836, 0.768, 1.581, 1.266, 1.008, 2.226, 1.535, 0.852, 1.249,
        1.452, 1.154, 1.499, 1.197, 1.492, 1.881, 0.997, 1.298, 1.063, 1.269, 0.855, 1.027, 1.152,
        1.599, 1.722, 0.821, 0.962,
    ];

    // Untied samples (R: round(rnorm(12, 1, 0.1), 6) and round(rnorm(9, 1.2, 0.1), 6) after
    // set.seed(1)), for which R's interval is exact.
    const UNTIED_BASELINE: [f64; 12] = [
        0.937355, 1.018364, 0.916437, 1.159528, 1.032951, 0.917953, 1.048743, 1.073832, 1.057578,
        0.969461, 1.151178, 1.038984,
    ];
    const UNTIED_WATCH: [f64; 9] = [
        1.137876, 0.97853, 1.312493, 1.195507, 1.198381, 1.294384, 1.282122, 1.25939, 1.291898,
    ];

    #[test]
    fn mann_whitney_matches_r_with_ties_and_without() {
        let tied = mann_whitney_greater(
            &[1.1, 2.2, 3.3, 4.4, 5.5, 2.2, 3.0],
            &[3.1, 4.2, 5.3, 6.4, 2.2, 7.5],
        )
        .unwrap();
        assert_eq!(tied.u, 31.0);
        assert!(close(tied.p, 0.0861796994807183), "{tied:?}");
        let slower = mann_whitney_greater(&BASELINE, &WATCH).unwrap();
        assert_eq!(slower.u, 973.0);
        assert!(close(slower.p, 4.9159199113093895e-06), "{slower:?}");
        // The other way round: no sign that the baseline was slower.
        let faster = mann_whitney_greater(&WATCH, &BASELINE).unwrap();
        assert_eq!(faster.u, 227.0);
        assert!(close(faster.p, 0.9999953471366678), "{faster:?}");
        // Untied: W = 98, p = 0.000996040507835925.
        let untied = mann_whitney_greater(&UNTIED_BASELINE, &UNTIED_WATCH).unwrap();
        assert_eq!(untied.u, 98.0);
        assert!(close(untied.p, 0.000996040507835925), "{untied:?}");
        assert_eq!(mann_whitney_greater(&[], &[1.0]), None);
        assert_eq!(mann_whitney_greater(&[2.0, 2.0], &[2.0]), None);
    }

    #[test]
    fn the_shift_is_the_median_difference_and_its_bound_lies_above_it() {
        let shift = hodges_lehmann(
            &[1.1, 2.2, 3.3, 4.4, 5.5, 2.2, 3.0],
            &[3.1, 4.2, 5.3, 6.4, 2.2, 7.5],
            0.95,
        )
        .unwrap();
        // numpy.median of the 42 differences.
        assert!(close(shift.estimate, 2.0), "{shift:?}");
        // C = floor(21 - 1.6449 * sqrt(42 * 14 / 12)) = floor(9.49) = 9: the 9th largest of
        // the 42 differences, 34th smallest.
        let mut d: Vec<f64> = [3.1, 4.2, 5.3, 6.4, 2.2, 7.5]
            .iter()
            .flat_map(|w| [1.1, 2.2, 3.3, 4.4, 5.5, 2.2, 3.0].map(|b| w - b))
            .collect();
        d.sort_by(f64::total_cmp);
        assert_eq!(shift.upper, d[33]);
        let wide = hodges_lehmann(&BASELINE, &WATCH, 0.99).unwrap();
        let narrow = hodges_lehmann(&BASELINE, &WATCH, 0.9).unwrap();
        assert!(narrow.estimate == wide.estimate && narrow.upper <= wide.upper);
        assert!(wide.estimate > 0.0 && wide.upper > wide.estimate);
        assert_eq!(hodges_lehmann(&BASELINE, &WATCH, 1.0), None);
    }

    /// R's wilcox.test(watch, baseline, alternative = "less", conf.int = TRUE): its estimate
    /// and the upper end of its one-sided 95% interval. The bound here takes the number of
    /// differences above it from the normal approximation of U without continuity
    /// correction, so it is R's or one order statistic beyond it: never narrower, so never
    /// passes a change R's would not.
    #[test]
    fn the_shift_and_its_bound_match_r() {
        // No ties, exact = TRUE: the estimate is the median of the 108 differences, the bound
        // the 78th smallest (qwilcox(0.05, 9, 12) = 31 from the top); here C = 30.
        let untied = hodges_lehmann(&UNTIED_BASELINE, &UNTIED_WATCH, 0.95).unwrap();
        assert!(close(untied.estimate, 0.2201645000000001), "{untied:?}");
        let r_upper = 0.26374999999999993;
        assert!(untied.upper >= r_upper && close(untied.upper, 0.26375799999999994));
        // Ties, exact = FALSE: R finds the estimate and the bound by root finding between the
        // differences (0.33049887794640165 and 0.4619896498077786); the median of the
        // differences and the bound here fall on the differences beside them.
        let tied = hodges_lehmann(&BASELINE, &WATCH, 0.95).unwrap();
        assert!(
            (tied.estimate - 0.33049887794640165).abs() < 1e-5,
            "{tied:?}"
        );
        assert!(tied.upper >= 0.4619896498077786 && tied.upper - 0.4619896498077786 < 1e-4);
    }

    #[test]
    fn more_errors_is_a_binomial_tail_valid_with_no_baseline_errors() {
        // 2 errors in 300 s before, 9 in 60 s after: R's binom.test(9, 11, 1/6,
        // alternative = "greater")$p.value.
        assert!(close(more_errors(2, 300.0, 9, 60.0), 3.944353947568971e-06));
        // None before, 3 in as long a watch: 0.5³ = binom.test(3, 3, 0.5, "greater").
        assert!(close(more_errors(0, 60.0, 3, 60.0), 0.12500000000000003));
        assert_eq!(more_errors(5, 60.0, 0, 60.0), 1.0);
        assert_eq!(per_look(0.05, 4), 0.0125);
    }
}
