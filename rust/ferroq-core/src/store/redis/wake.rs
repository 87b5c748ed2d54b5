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
    lock: Mutex<()>,
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
        let _g = self.lock.lock();
        self.cond.notify_all();
    }

    /// Local changes so far (part of the change token).
    pub fn local(&self) -> u64 {
        self.local.load(Ordering::SeqCst)
    }

    /// Waits for a notify or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut g = self.lock.lock();
        self.cond.wait_for(&mut g, timeout);
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
                    Ok(_) => {
                        let _g = wake.lock.lock();
                        wake.cond.notify_all();
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(_) => break,
                }
            }
            wake.listening.store(false, Ordering::SeqCst);
            // Something may have happened while the subscription was down.
            let _g = wake.lock.lock();
            wake.cond.notify_all();
        }
    })?;
    Ok(())
}
