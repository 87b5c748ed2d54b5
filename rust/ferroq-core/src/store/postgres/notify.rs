//! Wake-ups. Within a process every write bumps a generation and wakes
//! waiters at once. Across processes and hosts a dedicated connection
//! LISTENs on the store's channel (triggers NOTIFY it on every change that
//! matters to a waiter) and bumps the same generation. When notifications
//! are off (`?notify=off`, e.g. behind a transaction-mode pooler) or the
//! listener is down, waiters poll a change counter instead.

use super::config::PgConfig;
use super::pool::connect;
use super::{sql, PostgresStore};
use crate::error::Result;
use parking_lot::{Condvar, Mutex};
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared between the store, its waiters and its listener thread.
pub(super) struct Wake {
    pub(super) generation: Mutex<u64>,
    pub(super) cv: Condvar,
    listening: AtomicBool,
    stop: AtomicBool,
    /// Calls of `Store::wake` (see `Store::wake_count`).
    pub(super) wakes: std::sync::atomic::AtomicU64,
}

impl Wake {
    pub(super) fn new() -> Self {
        Wake {
            generation: Mutex::new(0),
            cv: Condvar::new(),
            listening: AtomicBool::new(false),
            wakes: std::sync::atomic::AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Records a change and wakes every waiter.
    pub(super) fn bump(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
    }

    /// True while the listener holds a live LISTEN connection.
    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Asks the listener thread to end (it does within a slice).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// How long the listener blocks before checking whether to stop.
const SLICE: Duration = Duration::from_millis(200);
/// After this long without a notification, the listener pings the server
/// so that a dead connection is noticed (and polling takes over) quickly.
const PING_AFTER: Duration = Duration::from_secs(2);

/// Starts the listener thread. It (re)connects with backoff for as long as
/// the store is open; while it has no connection, waiters poll.
pub(super) fn spawn_listener(wake: Arc<Wake>, cfg: Arc<PgConfig>) -> std::io::Result<()> {
    let listen = sql::LISTEN.replace("{schema}", &cfg.schema);
    std::thread::Builder::new()
        .name("ferroq-pg-listen".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(50);
            while !wake.stopped() {
                if let Ok(mut client) = connect(&cfg) {
                    if client.batch_execute(&listen).is_ok() {
                        wake.listening.store(true, Ordering::Release);
                        // Changes made while nobody listened: look again.
                        wake.bump();
                        backoff = Duration::from_millis(50);
                        listen_until_lost(&wake, &mut client);
                        wake.listening.store(false, Ordering::Release);
                        wake.bump();
                    }
                }
                let until = Instant::now() + backoff;
                while !wake.stopped() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        })
        .map(|_| ())
}

fn listen_until_lost(wake: &Wake, client: &mut postgres::Client) {
    let mut quiet_since = Instant::now();
    while !wake.stopped() {
        let got = client.notifications().timeout_iter(SLICE).next();
        match got {
            Ok(Some(_)) => {
                // Drain what else arrived, then wake once.
                while let Ok(Some(_)) = client.notifications().iter().next() {}
                wake.bump();
                quiet_since = Instant::now();
            }
            Err(_) => return,
            Ok(None) => {
                if client.is_closed() {
                    return;
                }
                if quiet_since.elapsed() >= PING_AFTER {
                    if client.simple_query("").is_err() {
                        return;
                    }
                    quiet_since = Instant::now();
                }
            }
        }
    }
}

impl PostgresStore {
    /// The store-wide change counter: the triggers bump it on every commit
    /// that matters to a waiter (what pollers watch).
    fn counter(&self) -> Result<u64> {
        self.run(true, |db| {
            let v: i64 = db.query(sql::CHANGE_COUNTER, &[])?.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
            Ok(v as u64)
        })
    }
}

/// [`Store::change_token`](crate::store::Store::change_token).
pub(super) fn change_token(store: &PostgresStore) -> Result<u64> {
    let generation = *store.wake.generation.lock();
    if store.wake.listening() {
        return Ok(generation);
    }
    Ok(generation.wrapping_add(store.counter()?.wrapping_mul(1 << 20)))
}

/// [`Store::wait_for_change`](crate::store::Store::wait_for_change).
pub(super) fn wait_for_change(store: &PostgresStore, token: u64, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let listening = store.wake.listening();
        if !listening && change_token(store)? != token {
            return Ok(true);
        }
        let mut generation = store.wake.generation.lock();
        if listening && *generation != token {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // Listening, a notification or a local write wakes us; polling,
        // look at the counter again after a poll interval.
        let slice = if listening { deadline - now } else { store.cfg.poll_interval.min(deadline - now) };
        store.wake.cv.wait_for(&mut generation, slice);
    }
}
