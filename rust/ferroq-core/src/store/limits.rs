//! Store-wide limits on task functions: the limit itself, and the
//! arithmetic of a limited claim that every backend shares.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// A store-wide limit on one task function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionLimit {
    /// The task name.
    pub name: String,
    /// At most this many running at once, across every worker.
    pub max_running: Option<u32>,
    /// At most this many claims per second, across every worker.
    pub rate_per_s: Option<f64>,
    /// Burst for the rate (default: max(1, rate)).
    pub burst: Option<f64>,
}

impl FunctionLimit {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::InvalidArgument("limit needs a task name".into()));
        }
        if self.max_running == Some(0) {
            return Err(Error::InvalidArgument("max_running must be >= 1".into()));
        }
        if let Some(r) = self.rate_per_s {
            if !r.is_finite() || r <= 0.0 {
                return Err(Error::InvalidArgument(format!("rate must be > 0 per second, got {r}")));
            }
        }
        if let Some(b) = self.burst {
            if !b.is_finite() || b < 1.0 {
                return Err(Error::InvalidArgument(format!("burst must be >= 1, got {b}")));
            }
        }
        Ok(())
    }

    /// The bucket size in effect.
    pub fn effective_burst(&self) -> f64 {
        self.burst.unwrap_or_else(|| self.rate_per_s.unwrap_or(1.0).max(1.0))
    }
}

/// A function limit with its stored token bucket, as a backend reads it.
pub(crate) struct StoredLimit {
    pub(crate) limit: FunctionLimit,
    pub(crate) tokens: f64,
    pub(crate) refilled_at: i64,
}

/// The arithmetic of a limited claim, shared by every backend: how many
/// tasks of each limited name a claim at `now` may take (given `running`,
/// the tasks of each name running now), and each rate-limited bucket's level
/// after refilling up to `now`. `now` must be read under the lock that
/// serialises limited claims, or a bucket could be refilled twice.
pub(crate) fn allowances(
    limits: &[StoredLimit],
    running: &HashMap<String, u64>,
    now: i64,
) -> (HashMap<String, u64>, HashMap<String, f64>) {
    let mut allowance = HashMap::new();
    let mut levels = HashMap::new();
    for l in limits {
        let mut allow = u64::MAX;
        if let Some(max) = l.limit.max_running {
            allow = allow.min((max as u64).saturating_sub(running.get(&l.limit.name).copied().unwrap_or(0)));
        }
        if let Some(rate) = l.limit.rate_per_s {
            let elapsed = (now - l.refilled_at).max(0) as f64 / 1000.0;
            let level = (l.tokens + elapsed * rate).min(l.limit.effective_burst());
            levels.insert(l.limit.name.clone(), level);
            allow = allow.min(level.floor().max(0.0) as u64);
        }
        allowance.insert(l.limit.name.clone(), allow);
    }
    (allowance, levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(
        name: &str,
        max_running: Option<u32>,
        rate_per_s: Option<f64>,
        tokens: f64,
        refilled_at: i64,
    ) -> StoredLimit {
        StoredLimit {
            limit: FunctionLimit { name: name.into(), max_running, rate_per_s, burst: None },
            tokens,
            refilled_at,
        }
    }

    #[test]
    fn allowances_take_the_tighter_of_running_and_rate() {
        let limits = [stored("slots", Some(3), None, 0.0, 0), stored("rated", Some(10), Some(2.0), 0.5, 1_000)];
        let running = HashMap::from([("slots".to_string(), 2), ("rated".to_string(), 1)]);
        // 1.5 s after the last refill at 2/s: 0.5 + 3 = 3.5 tokens, capped at the burst of 2.
        let (allow, levels) = allowances(&limits, &running, 2_500);
        assert_eq!(allow["slots"], 1);
        assert_eq!(allow["rated"], 2);
        assert_eq!(levels["rated"], 2.0);
        assert!(!levels.contains_key("slots"));
        // A full pool allows nothing; a clock behind the refill adds nothing.
        let running = HashMap::from([("slots".to_string(), 5)]);
        let (allow, levels) = allowances(&limits, &running, 0);
        assert_eq!(allow["slots"], 0);
        assert_eq!(allow["rated"], 0);
        assert_eq!(levels["rated"], 0.5);
    }

    #[test]
    fn validate_and_effective_burst() {
        let limit = |max_running, rate_per_s, burst| FunctionLimit { name: "f".into(), max_running, rate_per_s, burst };
        assert!(limit(Some(1), Some(0.5), Some(1.0)).validate().is_ok());
        assert!(limit(None, Some(0.0), None).validate().is_err());
        assert!(limit(None, Some(f64::NAN), None).validate().is_err());
        assert!(limit(None, Some(1.0), Some(0.5)).validate().is_err());
        assert_eq!(limit(None, Some(0.5), None).effective_burst(), 1.0);
        assert_eq!(limit(None, Some(5.0), None).effective_burst(), 5.0);
        assert_eq!(limit(None, Some(5.0), Some(2.0)).effective_burst(), 2.0);
    }
}
