//! Injected time. Stores read wall-clock milliseconds (leases and run_at are
//! persisted, so they must mean the same thing to every process); rate
//! limiters read a monotonic clock. Tests swap in [`ManualClock`] so lease
//! expiry, backoff and rate limits are checked without sleeping.

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Monotonic time since an arbitrary fixed point.
    fn monotonic(&self) -> Duration;
    /// Waits for `d` (a manual clock advances itself instead).
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock that moves only when told to; `sleep` advances it.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(i64, Duration)>,
}

impl ManualClock {
    /// A manual clock reading `now_ms` on the wall and zero on the monotonic.
    pub fn new(now_ms: i64) -> Self {
        ManualClock { state: Mutex::new((now_ms, Duration::ZERO)) }
    }
    /// Moves both the wall and the monotonic clock forward, saturating at
    /// the largest time either can hold (a test clock never wraps).
    pub fn advance(&self, d: Duration) {
        let mut s = self.state.lock();
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        s.0 = s.0.saturating_add(ms);
        s.1 = s.1.saturating_add(d);
    }

    /// Moves both clocks forward by `d`, or refuses (changing nothing) when
    /// either would pass the largest time it can hold.
    pub fn try_advance(&self, d: Duration) -> crate::Result<()> {
        let mut s = self.state.lock();
        let wall = i64::try_from(d.as_millis()).ok().and_then(|ms| s.0.checked_add(ms));
        match (wall, s.1.checked_add(d)) {
            (Some(wall), Some(mono)) => {
                *s = (wall, mono);
                Ok(())
            }
            _ => Err(crate::Error::InvalidArgument(format!("the clock cannot move {d:?} past {} ms", s.0))),
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.state.lock().0
    }
    fn monotonic(&self) -> Duration {
        self.state.lock().1
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}
