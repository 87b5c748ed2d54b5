//! Retry delays. A [`Backoff`] is stored with each task (as a short text
//! form) so that whoever retries it — its worker, or the recovery of an
//! expired lease — applies the same policy.

use crate::error::{Error, Result};
use rand::Rng;

/// How the delay grows with the attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffStrategy {
    /// Every retry waits `base`.
    Fixed,
    /// Retry `n` waits `base * n`.
    Linear,
    /// Retry `n` waits `base * multiplier^(n-1)`.
    Exponential,
}

impl std::str::FromStr for BackoffStrategy {
    type Err = Error;

    /// `fixed`, `linear`, or `exponential` (also `exp`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fixed" => Ok(BackoffStrategy::Fixed),
            "linear" => Ok(BackoffStrategy::Linear),
            "exponential" | "exp" => Ok(BackoffStrategy::Exponential),
            other => Err(Error::InvalidArgument(format!(
                "unknown backoff strategy {other:?}: use fixed, linear or exponential"
            ))),
        }
    }
}

/// A retry delay policy: strategy, base delay, growth, cap and jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// How the delay grows.
    pub strategy: BackoffStrategy,
    /// The first delay, in milliseconds.
    pub base_ms: i64,
    /// Growth factor for [`BackoffStrategy::Exponential`].
    pub multiplier: f64,
    /// No delay is longer than this, in milliseconds.
    pub max_ms: i64,
    /// Fraction (0..=1) of the delay that is randomised away: the delay is
    /// drawn uniformly from `[d * (1 - jitter), d]`.
    pub jitter: f64,
}

impl Default for Backoff {
    /// Exponential from 1 s, doubling, capped at 1 hour, 10% jitter.
    fn default() -> Self {
        Backoff {
            strategy: BackoffStrategy::Exponential,
            base_ms: 1_000,
            multiplier: 2.0,
            max_ms: 3_600_000,
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// A validated policy.
    pub fn new(strategy: BackoffStrategy, base_ms: i64, multiplier: f64, max_ms: i64, jitter: f64) -> Result<Self> {
        let b = Backoff { strategy, base_ms, multiplier, max_ms, jitter };
        b.validate()?;
        Ok(b)
    }

    /// Checks every number is in range.
    pub fn validate(&self) -> Result<()> {
        if self.base_ms < 0 {
            return Err(Error::InvalidArgument(format!("backoff base must be >= 0 ms, got {}", self.base_ms)));
        }
        if self.max_ms < self.base_ms {
            return Err(Error::InvalidArgument(format!(
                "backoff max ({} ms) is below its base ({} ms)",
                self.max_ms, self.base_ms
            )));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(Error::InvalidArgument(format!(
                "backoff multiplier must be a finite number >= 1, got {}",
                self.multiplier
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::InvalidArgument(format!("backoff jitter must be within 0..=1, got {}", self.jitter)));
        }
        Ok(())
    }

    /// The delay before retry number `attempt` (1 = the first retry), before
    /// jitter.
    pub fn nominal_ms(&self, attempt: u32) -> i64 {
        let n = attempt.max(1);
        let raw = match self.strategy {
            BackoffStrategy::Fixed => self.base_ms as f64,
            BackoffStrategy::Linear => self.base_ms as f64 * n as f64,
            BackoffStrategy::Exponential => {
                // powi saturates to inf for huge exponents; min() below caps it.
                self.base_ms as f64 * self.multiplier.powi((n - 1).min(1_000) as i32)
            }
        };
        raw.min(self.max_ms as f64).max(0.0) as i64
    }

    /// The delay before retry number `attempt`, with jitter drawn from `rng`.
    pub fn delay_ms_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> i64 {
        let d = self.nominal_ms(attempt);
        if self.jitter <= 0.0 || d == 0 {
            return d;
        }
        let cut = rng.random_range(0.0..=self.jitter);
        (d as f64 * (1.0 - cut)).round() as i64
    }

    /// The delay before retry number `attempt`, with jitter.
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        self.delay_ms_with(attempt, &mut rand::rng())
    }

    /// The compact text form stored with a task: `exp,1000,2,3600000,0.1`.
    pub fn encode(&self) -> String {
        let s = match self.strategy {
            BackoffStrategy::Fixed => "fixed",
            BackoffStrategy::Linear => "linear",
            BackoffStrategy::Exponential => "exp",
        };
        format!("{s},{},{},{},{}", self.base_ms, self.multiplier, self.max_ms, self.jitter)
    }

    /// Parses [`Backoff::encode`]'s form.
    pub fn decode(text: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("malformed backoff {text:?}"));
        let parts: Vec<&str> = text.split(',').collect();
        if parts.len() != 5 {
            return Err(bad());
        }
        let strategy = match parts[0] {
            "fixed" => BackoffStrategy::Fixed,
            "linear" => BackoffStrategy::Linear,
            "exp" | "exponential" => BackoffStrategy::Exponential,
            _ => return Err(bad()),
        };
        let base_ms = parts[1].parse().map_err(|_| bad())?;
        let multiplier = parts[2].parse().map_err(|_| bad())?;
        let max_ms = parts[3].parse().map_err(|_| bad())?;
        let jitter = parts[4].parse().map_err(|_| bad())?;
        Backoff::new(strategy, base_ms, multiplier, max_ms, jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn strategy_names_parse() {
        assert_eq!("fixed".parse::<BackoffStrategy>().unwrap(), BackoffStrategy::Fixed);
        assert_eq!("linear".parse::<BackoffStrategy>().unwrap(), BackoffStrategy::Linear);
        assert_eq!("exp".parse::<BackoffStrategy>().unwrap(), BackoffStrategy::Exponential);
        assert_eq!("exponential".parse::<BackoffStrategy>().unwrap(), BackoffStrategy::Exponential);
        assert!(matches!("cubic".parse::<BackoffStrategy>(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn strategies_grow_as_documented() {
        let fixed = Backoff::new(BackoffStrategy::Fixed, 500, 1.0, 10_000, 0.0).unwrap();
        assert_eq!([1, 2, 5].map(|a| fixed.nominal_ms(a)), [500, 500, 500]);
        let lin = Backoff::new(BackoffStrategy::Linear, 500, 1.0, 1_800, 0.0).unwrap();
        assert_eq!([1, 2, 3, 4].map(|a| lin.nominal_ms(a)), [500, 1_000, 1_500, 1_800]);
        let exp = Backoff::new(BackoffStrategy::Exponential, 100, 3.0, 5_000, 0.0).unwrap();
        assert_eq!([1, 2, 3, 4, 9].map(|a| exp.nominal_ms(a)), [100, 300, 900, 2_700, 5_000]);
        assert_eq!(exp.nominal_ms(u32::MAX), 5_000);
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff::new(BackoffStrategy::Fixed, 1_000, 1.0, 1_000, 0.25).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let ds: Vec<i64> = (0..500).map(|_| b.delay_ms_with(1, &mut rng)).collect();
        assert!(ds.iter().all(|d| (750..=1_000).contains(d)), "{ds:?}");
        assert!(ds.iter().any(|d| *d < 900), "jitter never moved the delay");
    }

    #[test]
    fn bad_numbers_are_rejected() {
        assert!(Backoff::new(BackoffStrategy::Fixed, -1, 1.0, 10, 0.0).is_err());
        assert!(Backoff::new(BackoffStrategy::Fixed, 10, 1.0, 5, 0.0).is_err());
        assert!(Backoff::new(BackoffStrategy::Exponential, 10, 0.5, 50, 0.0).is_err());
        assert!(Backoff::new(BackoffStrategy::Exponential, 10, f64::NAN, 50, 0.0).is_err());
        assert!(Backoff::new(BackoffStrategy::Fixed, 10, 1.0, 50, 1.5).is_err());
    }

    #[test]
    fn text_form_round_trips() {
        let b = Backoff::new(BackoffStrategy::Linear, 250, 1.5, 9_000, 0.2).unwrap();
        assert_eq!(Backoff::decode(&b.encode()).unwrap(), b);
        assert!(Backoff::decode("exp,1,2").is_err());
        assert!(Backoff::decode("zigzag,1,2,3,0").is_err());
    }
}
