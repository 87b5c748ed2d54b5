//! Waiting for changes. Within a process every commit bumps a generation
//! and wakes waiters through a condvar. Other processes' commits show in
//! each shard's `PRAGMA data_version`, read on a second connection per
//! shard; one waiting thread of the process (the watcher) blocks on the
//! directory watch (`watch.rs`) where the OS has one, and wakes the others
//! when something was written; where it has not, waiters poll
//! `data_version`.
//!
//! Waiters other than the watcher sleep on the condvar until something
//! happens: a commit here, a write the watcher saw, or the watcher leaving
//! (it hands the watch to one of them). None of them wakes on a timer, so
//! an idle process costs a wake-up per [`WATCHED_POLL`], not one per
//! waiter every few milliseconds.

use super::{sql, watch, SqliteStore};
use crate::error::Result;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the watcher blocks on the directory watch before it looks at
/// `data_version` anyway: a bound on a change the watch did not show.
const WATCHED_POLL: Duration = Duration::from_millis(100);

/// After a write shows in the watch, how soon the watcher looks again for
/// its commit: SQLite publishes a commit just after writing it to the log,
/// and a writer descheduled in between (a loaded machine) publishes it
/// later than the waiters' first look.
const PUBLISH_RECHECK: Duration = Duration::from_millis(2);

/// In-process wake-ups: every commit bumps the generation and wakes waiters.
pub(super) struct Wake {
    pub(super) generation: Mutex<u64>,
    pub(super) cv: Condvar,
    /// Some waiting thread is blocked on the directory watch (changed only
    /// under `generation`'s lock).
    watcher: AtomicBool,
    /// Calls of `Store::wake` (see `Store::wake_count`).
    pub(super) wakes: std::sync::atomic::AtomicU64,
}

impl Wake {
    pub(super) fn new() -> Self {
        Wake {
            generation: Mutex::new(0),
            cv: Condvar::new(),
            watcher: AtomicBool::new(false),
            wakes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records a commit and wakes every waiter.
    pub(super) fn bump(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
    }
}

impl SqliteStore {
    /// The change token at `generation`: the generation plus every shard's
    /// `data_version` (on disk), so another process's commit changes it too.
    fn token_at(&self, generation: u64) -> Result<u64> {
        let mut token = generation;
        for shard in &self.shards {
            if let Some(w) = &shard.watch {
                let v: i64 = w.lock().prepare_cached(sql::DATA_VERSION)?.query_row([], |r| r.get(0))?;
                token = token.wrapping_add(v as u64);
            }
        }
        Ok(token)
    }
}

/// [`Store::change_token`](crate::store::Store::change_token).
pub(super) fn change_token(store: &SqliteStore) -> Result<u64> {
    let generation = *store.wake.generation.lock();
    store.token_at(generation)
}

/// [`Store::wait_for_change`](crate::store::Store::wait_for_change).
pub(super) fn wait_for_change(store: &SqliteStore, token: u64, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let watching = store.shards.iter().any(|s| s.watch.is_some());
    // Armed before the first look at data_version (see DirWatch::arm).
    let armed = store.dir_watch.as_ref().map(|d| d.arm());
    let dir_watch = armed.as_ref().filter(|a| a.watching).and(store.dir_watch.as_ref());
    let mut next_slice = if armed.as_ref().is_some_and(|a| a.fresh) { watch::FRESH_RECHECK } else { WATCHED_POLL };
    let mut generation = store.wake.generation.lock();
    let wake = &store.wake;
    let mut was_watcher = false;
    let changed = loop {
        match store.token_at(*generation) {
            Ok(t) if t != token => break Ok(true),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            break Ok(false);
        }
        if !watching {
            // In memory: only this process writes, and it signals the condvar.
            wake.cv.wait_for(&mut generation, deadline - now);
            continue;
        }
        let Some(dir) = dir_watch else {
            // Other processes cannot signal the condvar: look at
            // data_version again after a short poll interval.
            wake.cv.wait_for(&mut generation, store.config.poll_interval.min(deadline - now));
            continue;
        };
        if wake.watcher.load(Ordering::Relaxed) {
            // Another thread watches: it wakes us when something is
            // written, and hands us the watch when it leaves.
            wake.cv.wait_for(&mut generation, deadline - now);
            continue;
        }
        wake.watcher.store(true, Ordering::Relaxed);
        was_watcher = true;
        let slice = std::mem::replace(&mut next_slice, WATCHED_POLL).min(deadline - now);
        let watched = parking_lot::MutexGuard::unlocked(&mut generation, || dir.wait(slice));
        wake.watcher.store(false, Ordering::Relaxed);
        match watched {
            Some(true) => {
                // The write shows up a moment before SQLite publishes the
                // commit: look just after it, and again soon. The others
                // are woken only once the change is there to see.
                parking_lot::MutexGuard::unlocked(&mut generation, || {
                    std::thread::sleep(Duration::from_micros(150));
                });
                next_slice = PUBLISH_RECHECK;
            }
            Some(false) => {}
            None => {
                // The watch is busy being re-armed: look again shortly.
                wake.cv.wait_for(&mut generation, watch::FRESH_RECHECK.min(deadline - now));
            }
        }
    };
    if was_watcher {
        if matches!(changed, Ok(true)) {
            // What the watch showed is there: every waiter looks.
            wake.cv.notify_all();
        } else {
            // Hand the watch to a thread still waiting (the flag is clear
            // and we hold the lock, so one waiting or about to wait takes
            // it over).
            wake.cv.notify_one();
        }
    }
    changed
}
