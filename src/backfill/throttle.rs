//! How big the next batch is: sized to hold the target batch time, within the job's bounds.
//! A batch holds its rows' locks until it commits, so its duration is what a writer touching
//! one of those rows may wait; the target keeps that wait short whatever the rows cost.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: i32,
    pub max: i32,
}

impl Bounds {
    pub fn clamp(&self, size: f64) -> i32 {
        (size.round() as i64).clamp(self.min as i64, self.max as i64) as i32
    }
}

/// The share of a table's rows one batch may lock. A writer updating a random row waits
/// only if the batch under way holds it: with batches of at most 0.5% of the table (0.25% held
/// on average while one runs), fewer than 1 in 100 writes can wait at all, so the writers'
/// 99th percentile is not a batch's duration.
pub const TABLE_SHARE: f64 = 0.005;

impl Bounds {
    /// These bounds with the largest batch at most `TABLE_SHARE` of a table of `rows` rows
    /// (never below the smallest). A table of unknown size (no estimate) keeps them.
    pub fn for_table(self, rows: i64) -> Bounds {
        if rows <= 0 {
            return self;
        }
        let share = (rows as f64 * TABLE_SHARE).round() as i64;
        Bounds {
            min: self.min,
            max: share.clamp(self.min as i64, self.max as i64) as i32,
        }
    }
}

/// The size after a batch of `size` rows took `took`: proportional to how far it was from
/// `target`, but at most halved or doubled at once, so one odd batch (a checkpoint, a cold
/// cache) does not swing it. When writers were waiting for the batch's rows as it ended, it
/// was too long for them whatever the target: the next is at most half as big.
pub fn after_batch(
    size: i32,
    took: Duration,
    target: Duration,
    bounds: Bounds,
    writers_waited: bool,
) -> i32 {
    let took = took.as_secs_f64().max(1e-4);
    let mut factor = (target.as_secs_f64() / took).clamp(0.5, 2.0);
    if writers_waited {
        factor = factor.min(0.5);
    }
    bounds.clamp(size as f64 * factor)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTimeout {
    /// Try the same batch again (after a backoff).
    Retry(i32),
    /// Try a batch of this smaller size.
    Split(i32),
    /// Even the smallest batch keeps timing out: the job fails, resumable.
    GiveUp,
}

/// After the `attempt`-th lock timeout in a row on a batch of `size`: the first is retried
/// as is, later ones halve the batch, and once it is at its minimum size `retries` more
/// timeouts give up (migrate.lock_retries).
pub fn after_lock_timeout(size: i32, attempt: i32, retries: i32, bounds: Bounds) -> AfterTimeout {
    if attempt <= 1 {
        return AfterTimeout::Retry(size);
    }
    if size > bounds.min {
        return AfterTimeout::Split(bounds.clamp((size / 2) as f64));
    }
    if attempt > retries.max(1) {
        AfterTimeout::GiveUp
    } else {
        AfterTimeout::Retry(size)
    }
}

/// Rows per second, smoothed over recent batches (the last few weigh most), counting the
/// pause between batches: what the ETA divides by.
pub fn rate(previous: Option<f64>, rows: i64, took: Duration, pause: Duration) -> Option<f64> {
    let seconds = (took + pause).as_secs_f64();
    if seconds <= 0.0 {
        return previous;
    }
    let now = rows as f64 / seconds;
    Some(previous.map_or(now, |p| 0.8 * p + 0.2 * now))
}

#[cfg(test)]
mod unit {
    use super::*;

    const B: Bounds = Bounds {
        min: 100,
        max: 10_000,
    };
    const TARGET: Duration = Duration::from_millis(200);

    #[test]
    fn fast_batches_grow_and_slow_ones_shrink_within_bounds() {
        let after = |size, ms| after_batch(size, Duration::from_millis(ms), TARGET, B, false);
        assert_eq!(after(1_000, 100), 2_000);
        assert_eq!(after(1_000, 10), 2_000);
        assert_eq!(after(1_000, 250), 800);
        assert_eq!(after(1_000, 5_000), 500);
        assert_eq!(after(8_000, 50), 10_000);
        assert_eq!(after(150, 1_000), 100);
        assert_eq!(after(1_000, 0), 2_000);
    }

    #[test]
    fn writers_waiting_for_a_batch_halve_the_next_whatever_its_time() {
        let fast = Duration::from_millis(10);
        assert_eq!(after_batch(1_000, fast, TARGET, B, true), 500);
        assert_eq!(after_batch(150, fast, TARGET, B, true), 100);
        assert_eq!(
            after_batch(1_000, Duration::from_secs(5), TARGET, B, true),
            500
        );
    }

    #[test]
    fn a_batch_locks_at_most_half_a_percent_of_the_table() {
        assert_eq!(
            B.for_table(1_000_000),
            Bounds {
                min: 100,
                max: 5_000
            }
        );
        assert_eq!(B.for_table(100_000_000), B);
        assert_eq!(B.for_table(1_000), Bounds { min: 100, max: 100 });
        assert_eq!(B.for_table(0), B);
        assert_eq!(B.for_table(-1), B);
    }

    #[test]
    fn lock_timeouts_retry_then_split_then_give_up() {
        assert_eq!(
            after_lock_timeout(1_000, 1, 5, B),
            AfterTimeout::Retry(1_000)
        );
        assert_eq!(after_lock_timeout(1_000, 2, 5, B), AfterTimeout::Split(500));
        assert_eq!(after_lock_timeout(150, 3, 5, B), AfterTimeout::Split(100));
        assert_eq!(after_lock_timeout(100, 4, 5, B), AfterTimeout::Retry(100));
        assert_eq!(after_lock_timeout(100, 6, 5, B), AfterTimeout::GiveUp);
    }

    #[test]
    fn the_rate_follows_recent_batches() {
        let r = rate(
            None,
            1_000,
            Duration::from_millis(100),
            Duration::from_millis(100),
        );
        assert_eq!(r, Some(5_000.0));
        let r = rate(r, 1_000, Duration::from_millis(50), Duration::ZERO);
        assert_eq!(r, Some(0.8 * 5_000.0 + 0.2 * 20_000.0));
        assert_eq!(rate(r, 0, Duration::ZERO, Duration::ZERO), r);
    }
}
