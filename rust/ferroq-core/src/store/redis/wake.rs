//! Wake-ups across processes: every commit that makes work ready or
//! finishes a task bumps `P:chg` and publishes on the channel `P:wake`
//! (in the same script). A subscriber thread per store handle turns those
//! messages into a condition-variable notify, so a waiting claimer wakes
//! within a millisecond or so of a commit on any host; waiters also poll
//! `P:chg` every `poll_ms` in case a message was lost (a reconnecting
//! subscriber).

use super::pool::Pool;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The in-process side of wake-ups.
#[derive(Default)]
pub(super) struct Wake {
    local: AtomicU64,
    /// Notifications so far (local changes and messages), changed under
    /// `lock`: a waiter that marked it before reading the change token
    /// sleeps only if nothing came since, so a message that arrives while
    /// it reads the token is not lost (it would sleep a whole `poll_ms`).
    notified: Mutex<u64>,
    cond: Condvar,
    stopped: AtomicBool,
    listening: AtomicBool,
    /// Calls of `Store::wake` (see `Store::wake_count`).
    pub(super) wakes: AtomicU64,
}

impl Wake {
    /// Counts a local change and wakes this process's waiters.
    pub fn bump(&self) {
        self.local.fetch_add(1, Ordering::SeqCst);
        self.notify();
    }

    /// Wakes this process's waiters (a message came, or a local change).
    fn notify(&self) {
        *self.notified.lock() += 1;
        self.cond.notify_all();
    }

    /// What [`Wake::wait_since`] compares with: taken before the caller
    /// reads the state it waits to see change.
    pub fn mark(&self) -> u64 {
        *self.notified.lock()
    }

    /// Local changes so far (part of the change token).
    pub fn local(&self) -> u64 {
        self.local.load(Ordering::SeqCst)
    }

    /// Waits for a notification after `mark` or `timeout`: at once when
    /// one came since `mark` was taken.
    pub fn wait_since(&self, mark: u64, timeout: Duration) {
        let mut g = self.notified.lock();
        if *g == mark {
            self.cond.wait_for(&mut g, timeout);
        }
    }

    /// Stops the subscriber thread (at its next message or timeout).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// True while the subscriber is connected.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }
}

/// Starts the subscriber thread on channel `channel`.
pub(super) fn spawn_listener(wake: Arc<Wake>, pool: Arc<Pool>, channel: String) -> std::io::Result<()> {
    std::thread::Builder::new().name("ferroq-redis-wake".into()).spawn(move || {
        while !wake.stopped.load(Ordering::SeqCst) {
            let Ok(mut conn) = pool.connect() else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let mut ps = conn.as_pubsub();
            if ps.subscribe(&channel).is_err() || ps.set_read_timeout(Some(Duration::from_millis(500))).is_err() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            wake.listening.store(true, Ordering::SeqCst);
            while !wake.stopped.load(Ordering::SeqCst) {
                match ps.get_message() {
                    Ok(_) => wake.notify(),
                    Err(e) if e.is_timeout() => {}
                    Err(_) => break,
                }
            }
            wake.listening.store(false, Ordering::SeqCst);
            // Something may have happened while the subscription was down.
            wake.notify();
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Wake;
    use std::time::{Duration, Instant};

    /// A message that arrives after a waiter read the change token but
    /// before it went to sleep wakes it at once (before the fix it slept
    /// until its poll, 50 ms by default: the W3 benchmark's p99 on Redis).
    #[test]
    fn a_message_between_the_token_read_and_the_wait_is_not_lost() {
        let wake = Wake::default();
        let mark = wake.mark(); // the waiter, before reading the token
        wake.notify(); // the subscriber, while the waiter reads it
        let started = Instant::now();
        wake.wait_since(mark, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(2), "slept {:?}", started.elapsed());
        // Nothing new since the last mark: the wait lasts its timeout.
        let started = Instant::now();
        wake.wait_since(wake.mark(), Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
