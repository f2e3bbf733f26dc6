//! One backoff type for reconnects, token refresh, REST retries and actor restarts.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Exponential backoff `min * 2^attempt`, capped at `max`, with a random jitter that takes off up
/// to `jitter` (a fraction in `0.0..=1.0`) of the delay, so that many shards or many pods that
/// lost the same service do not come back in lock step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExponentialBackoff {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// Largest delay, however many attempts failed.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Fraction of the delay that may be taken off at random (0 = none, 1 = anything down to 0).
    pub jitter: f64,
}

/// Why a backoff configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidBackoff {
    #[error("min must be greater than zero")]
    ZeroMin,
    #[error("min ({min:?}) must not exceed max ({max:?})")]
    MinAboveMax { min: Duration, max: Duration },
    #[error("jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
}

impl ExponentialBackoff {
    /// Builds a validated backoff.
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        let backoff = Self { min, max, jitter };
        backoff.validate()?;
        Ok(backoff)
    }

    /// Checks the invariants that [`Self::delay`] relies on.
    pub fn validate(&self) -> Result<(), InvalidBackoff> {
        if self.min.is_zero() {
            return Err(InvalidBackoff::ZeroMin);
        }
        if self.min > self.max {
            return Err(InvalidBackoff::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) || self.jitter.is_nan() {
            return Err(InvalidBackoff::Jitter(self.jitter));
        }
        Ok(())
    }

    /// The un-jittered delay before retry number `attempt` (0-based).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`, jittered with `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let taken_off = rng.gen_range(0.0..=self.jitter);
        base.mul_f64(1.0 - taken_off)
    }

    /// The delay before retry number `attempt`, jittered with the thread's RNG.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::thread_rng())
    }
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn doubles_until_capped() {
        let backoff =
            ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(10), 0.0).unwrap();
        let delays: Vec<u64> = (0..6).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let backoff =
            ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(60), 0.5).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut seen_below_base = false;
        for attempt in 0..10 {
            let base = backoff.base_delay(attempt);
            for _ in 0..100 {
                let delay = backoff.delay_with(attempt, &mut rng);
                assert!(delay <= base && delay >= base / 2, "{delay:?} vs {base:?}");
                seen_below_base |= delay < base;
            }
        }
        assert!(seen_below_base, "jitter never applied");
    }

    #[test]
    fn refuses_invalid_settings() {
        let second = Duration::from_secs(1);
        assert_eq!(
            ExponentialBackoff::new(Duration::ZERO, second, 0.1),
            Err(InvalidBackoff::ZeroMin)
        );
        assert!(matches!(
            ExponentialBackoff::new(second * 2, second, 0.1),
            Err(InvalidBackoff::MinAboveMax { .. })
        ));
        assert_eq!(
            ExponentialBackoff::new(second, second, 1.5),
            Err(InvalidBackoff::Jitter(1.5))
        );
    }
}
