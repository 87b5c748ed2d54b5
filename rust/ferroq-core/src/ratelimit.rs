//! A thread-safe token bucket. Waiting happens here, in Rust, so the Python
//! binding can release the GIL for the whole wait.

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// Allows `rate` acquisitions per second on average, with bursts of up to
/// `burst` at once.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    clock: Arc<dyn Clock>,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A bucket on the system clock, starting full.
    pub fn new(rate: f64, burst: f64) -> Result<Self> {
        Self::with_clock(rate, burst, Arc::new(SystemClock::new()))
    }

    /// A bucket on the given clock, starting full.
    pub fn with_clock(rate: f64, burst: f64, clock: Arc<dyn Clock>) -> Result<Self> {
        if !rate.is_finite() || rate <= 0.0 {
            return Err(Error::InvalidArgument(format!("rate must be > 0 per second, got {rate}")));
        }
        if !burst.is_finite() || burst < 1.0 {
            return Err(Error::InvalidArgument(format!("burst must be >= 1, got {burst}")));
        }
        let last = clock.monotonic();
        Ok(TokenBucket { rate, burst, clock, state: Mutex::new(BucketState { tokens: burst, last }) })
    }

    /// Tokens added per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The bucket's capacity.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    fn check(&self, n: f64) -> Result<()> {
        if !n.is_finite() || n <= 0.0 || n > self.burst {
            return Err(Error::InvalidArgument(format!(
                "cannot take {n} tokens from a bucket of burst {}",
                self.burst
            )));
        }
        Ok(())
    }

    /// Takes `n` tokens if they are there; otherwise returns how long until
    /// they will be.
    fn take_or_wait(&self, n: f64) -> Option<Duration> {
        let mut s = self.state.lock();
        let now = self.clock.monotonic();
        let elapsed = now.saturating_sub(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now;
        if s.tokens >= n {
            s.tokens -= n;
            None
        } else {
            Some(Duration::from_secs_f64((n - s.tokens) / self.rate))
        }
    }

    /// Takes `n` tokens without waiting; false when there are not enough.
    pub fn try_acquire(&self, n: f64) -> Result<bool> {
        self.check(n)?;
        Ok(self.take_or_wait(n).is_none())
    }

    /// Waits until `n` tokens can be taken, or until `timeout` passes (None
    /// waits as long as needed). Returns whether the tokens were taken.
    pub fn acquire(&self, n: f64, timeout: Option<Duration>) -> Result<bool> {
        self.check(n)?;
        let start = self.clock.monotonic();
        loop {
            let Some(wait) = self.take_or_wait(n) else { return Ok(true) };
            let waited = self.clock.monotonic().saturating_sub(start);
            let wait = match timeout {
                Some(t) if waited >= t => return Ok(false),
                Some(t) if waited + wait > t => {
                    // Not enough time left for the tokens; give up at the deadline.
                    self.clock.sleep(t - waited);
                    return Ok(self.take_or_wait(n).is_none());
                }
                _ => wait,
            };
            self.clock.sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn bucket(rate: f64, burst: f64) -> (TokenBucket, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(0));
        (TokenBucket::with_clock(rate, burst, clock.clone()).unwrap(), clock)
    }

    #[test]
    fn burst_then_rate() {
        let (b, clock) = bucket(10.0, 3.0);
        assert!((0..3).all(|_| b.try_acquire(1.0).unwrap()));
        assert!(!b.try_acquire(1.0).unwrap());
        clock.advance(Duration::from_millis(100));
        assert!(b.try_acquire(1.0).unwrap());
        assert!(!b.try_acquire(1.0).unwrap());
        // Refill never exceeds the burst.
        clock.advance(Duration::from_secs(60));
        assert_eq!((0..10).filter(|_| b.try_acquire(1.0).unwrap()).count(), 3);
    }

    #[test]
    fn acquire_waits_exactly_as_long_as_needed() {
        let (b, clock) = bucket(4.0, 1.0);
        assert!(b.acquire(1.0, None).unwrap());
        let t0 = clock.monotonic();
        assert!(b.acquire(1.0, None).unwrap());
        assert_eq!(clock.monotonic() - t0, Duration::from_millis(250));
        // 100 acquisitions at 4/s take 25 s of (manual) time.
        let t1 = clock.monotonic();
        for _ in 0..100 {
            assert!(b.acquire(1.0, None).unwrap());
        }
        let secs = (clock.monotonic() - t1).as_secs_f64();
        assert!((24.9..=25.1).contains(&secs), "{secs}");
    }

    #[test]
    fn acquire_gives_up_at_its_timeout() {
        let (b, clock) = bucket(1.0, 1.0);
        assert!(b.try_acquire(1.0).unwrap());
        let t0 = clock.monotonic();
        assert!(!b.acquire(1.0, Some(Duration::from_millis(300))).unwrap());
        assert_eq!(clock.monotonic() - t0, Duration::from_millis(300));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert!(TokenBucket::new(0.0, 1.0).is_err());
        assert!(TokenBucket::new(f64::INFINITY, 1.0).is_err());
        assert!(TokenBucket::new(1.0, 0.5).is_err());
        let (b, _) = bucket(1.0, 2.0);
        assert!(b.try_acquire(3.0).is_err());
        assert!(b.try_acquire(-1.0).is_err());
    }

    #[test]
    fn threads_share_one_bucket() {
        let b = Arc::new(TokenBucket::new(1_000_000.0, 50.0).unwrap());
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..20).filter(|_| b.try_acquire(1.0).unwrap()).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert!(taken >= 50, "{taken}");
    }
}
