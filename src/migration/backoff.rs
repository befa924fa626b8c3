//! Backoff between attempts of a migration that timed out on a lock.
//!
//! Exponential, capped, with jitter: the delay before retry `n` (1-based) is drawn uniformly
//! from the upper half of `min(max, base * 2^(n-1))`, so two appliers blocked by the same
//! session do not come back in lock-step and queue behind each other again.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    pub fn from_settings() -> Backoff {
        Backoff {
            base_ms: crate::gucs::LOCK_RETRY_DELAY_MS.get().max(0) as u64,
            max_ms: crate::gucs::LOCK_RETRY_MAX_DELAY_MS.get().max(0) as u64,
        }
    }

    /// The delay before retry `retry` (1-based), given a uniform random `unit` in [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(32);
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        let unit = unit.clamp(0.0, 1.0);
        Duration::from_millis(ceiling / 2 + ((ceiling - ceiling / 2) as f64 * unit) as u64)
    }
}

/// A uniform value in [0, 1) from the standard library's per-process random keys, which is
/// all jitter needs.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps on the process latch, so a cancel request or postmaster death interrupts the wait.
pub fn sleep(duration: Duration) {
    let deadline = std::time::Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        crate::pg::process::sleep_on_latch(left);
        pgrx::check_for_interrupts!();
    }
}

/// Lock timeouts, deadlocks and serialization failures: another attempt may well succeed.
pub fn transient(error: &crate::pg::subxact::Caught) -> bool {
    matches!(
        error.code,
        pgrx::PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
            | pgrx::PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
            | pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn delays_double_then_cap_and_stay_in_the_upper_half() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 1_000,
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(1, 0.999_999), Duration::from_millis(99));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(4, 0.5), Duration::from_millis(600));
        assert_eq!(b.delay(5, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(60, 0.0), Duration::from_millis(500));
        assert!(b.delay(60, 1.0) <= Duration::from_millis(1_000));
    }

    #[test]
    fn zero_base_means_no_wait() {
        assert_eq!(
            Backoff {
                base_ms: 0,
                max_ms: 1_000
            }
            .delay(3, 0.7),
            Duration::ZERO
        );
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let draws: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }
}
