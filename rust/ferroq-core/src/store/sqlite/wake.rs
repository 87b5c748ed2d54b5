//! Waiting for changes. Within a process every commit bumps a generation
//! and wakes waiters through a condvar. Other processes' commits show in
//! each shard's `PRAGMA data_version`, read on a second connection per
//! shard; a waiter blocks on the directory watch (`watch.rs`) where the OS
//! has one, and polls `data_version` where it has not.

use super::{sql, watch, SqliteStore};
use crate::error::Result;
use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Fallback poll interval while a directory watch is active.
const WATCHED_POLL: Duration = Duration::from_millis(25);

/// In-process wake-ups: every commit bumps the generation and wakes waiters.
pub(super) struct Wake {
    pub(super) generation: Mutex<u64>,
    pub(super) cv: Condvar,
}

impl Wake {
    pub(super) fn new() -> Self {
        Wake { generation: Mutex::new(0), cv: Condvar::new() }
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
                let v: i64 = w.lock().query_row(sql::DATA_VERSION, [], |r| r.get(0))?;
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
    let mut fresh = armed.as_ref().is_some_and(|a| a.fresh);
    let mut generation = store.wake.generation.lock();
    loop {
        if store.token_at(*generation)? != token {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        if !watching {
            // In memory: only this process writes, and it signals the condvar.
            store.wake.cv.wait_for(&mut generation, deadline - now);
            continue;
        }
        let Some(dir) = dir_watch else {
            // Other processes cannot signal the condvar: look at
            // data_version again after a short poll interval.
            store.wake.cv.wait_for(&mut generation, store.config.poll_interval.min(deadline - now));
            continue;
        };
        // One waiting thread blocks on the directory watch (any commit,
        // from any process, wakes it) and wakes the others through the
        // condvar; a long fallback slice bounds every wait.
        let slice = if std::mem::take(&mut fresh) { watch::FRESH_RECHECK } else { WATCHED_POLL };
        let slice = slice.min(deadline - now);
        let watched = parking_lot::MutexGuard::unlocked(&mut generation, || dir.wait(slice));
        match watched {
            Some(true) => {
                // The write shows up a moment before SQLite publishes the
                // commit: wake everyone now, and once more just after.
                store.wake.cv.notify_all();
                parking_lot::MutexGuard::unlocked(&mut generation, || {
                    std::thread::sleep(Duration::from_micros(150));
                });
                store.wake.cv.notify_all();
            }
            Some(false) => {}
            None => {
                store.wake.cv.wait_for(&mut generation, slice);
            }
        }
    }
}
