//! When to reconcile again: the interval with jitter after success, exponential backoff after
//! failures.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use rand::Rng;

/// Spread of the jitter around an interval, as a fraction (Flux's default is 5%).
pub const JITTER_FRACTION: f64 = 0.05;

/// `interval` ± [`JITTER_FRACTION`], so many objects with one interval don't move in lockstep.
#[must_use]
pub fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_secs_f64() * JITTER_FRACTION;
    if spread <= 0.0 {
        return interval;
    }
    let offset = rand::rng().random_range(-spread..=spread);
    Duration::from_secs_f64((interval.as_secs_f64() + offset).max(0.0))
}

/// Per-object exponential backoff: each consecutive failure doubles the delay, from `min` up to
/// `max`; a success resets it.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: Mutex::default(),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_insert(0);
        let exponent = (*count).min(20);
        *count = count.saturating_add(1);
        self.min
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max)
    }

    /// Forgets the failures of `key`.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

impl Default for Backoff {
    /// Flux's defaults are 750ms to 15m; one second is easier to read in events.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(15 * 60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_five_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(100)).as_secs_f64();
            assert!((95.0..=105.0).contains(&d), "{d}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<_> = (0..6).map(|_| b.failed("ns/a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(
            b.failed("ns/b").as_secs(),
            1,
            "objects back off independently"
        );
        b.succeeded("ns/a");
        assert_eq!(b.failed("ns/a").as_secs(), 1);
    }
}
