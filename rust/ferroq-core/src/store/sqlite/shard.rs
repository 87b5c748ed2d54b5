//! Shards and ids. A task's id says its shard: `id = local_id * shards +
//! shard` (see the module doc of `sqlite`). Unkeyed tasks are spread
//! round-robin; keyed ones are routed by a hash of (queue, key). Also the
//! two ways every verb writes: one transaction on one shard ([`write`]),
//! or one transaction per shard for a batch of items ([`per_item`]).
//!
//! [`write`]: SqliteStore::write
//! [`per_item`]: SqliteStore::per_item

use super::enqueue::group::Group;
use super::tx::WriteTx;
use super::{sql, SqliteStore};
use crate::error::{Error, Result};
use crate::store::rules;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::time::Duration;

/// One shard: a writer connection, and (on disk) a second connection used
/// only to watch `PRAGMA data_version` for other processes' commits.
pub(super) struct Shard {
    pub(super) conn: Mutex<Connection>,
    pub(super) watch: Option<Mutex<Connection>>,
    /// Enqueues waiting to share a transaction (group commit).
    pub(super) group: Group,
    /// The shard file's path (`memory://` in memory), for messages.
    pub(super) label: String,
    /// Set once SQLite reported the file damaged: the error later sends
    /// into this shard fail with (see [`SqliteStore::shard_err`]).
    pub(super) unhealthy: Mutex<Option<Error>>,
}

impl Shard {
    /// A shard over an open writer connection (and, on disk, its watcher).
    pub(super) fn new(conn: Connection, watch: Option<Connection>, label: String) -> Self {
        Shard {
            conn: Mutex::new(conn),
            watch: watch.map(Mutex::new),
            group: Group::default(),
            label,
            unhealthy: Mutex::new(None),
        }
    }

    /// The error this shard was marked unhealthy with, if it was.
    pub(super) fn unhealthy(&self) -> Option<Error> {
        self.unhealthy.lock().clone()
    }
}

/// Names the shard file in a corruption error that does not name it yet
/// (SQLite's own "database disk image is malformed" names nothing).
pub(super) fn name_file(e: Error, label: &str) -> Error {
    match e {
        Error::Corrupt(m) if !m.contains(label) => rules::damaged_file(label, &m),
        Error::NotAStore(m) if !m.contains(label) => Error::NotAStore(format!("{label}: {m}")),
        other => other,
    }
}

/// How long a closing shard waits for other processes to let it checkpoint.
const CLOSE_CHECKPOINT_WAIT: Duration = Duration::from_millis(250);

impl Drop for Shard {
    /// Leaves every commit in the shard file itself. SQLite checkpoints on
    /// closing only the last connection to a file, and only a writable one
    /// can: the read-only watcher closed last after a waiter had used it,
    /// so the newest commits stayed in `-wal` and a copy of the `.db` files
    /// silently lost them. The watcher closes first, then the writer
    /// checkpoints. Failure (another process reading or writing) leaves the
    /// log to that process's close; a drop must not panic or report.
    fn drop(&mut self) {
        if self.watch.take().is_some() {
            let conn = self.conn.get_mut();
            // Waiting out another process's long transaction would stall
            // the close; that process checkpoints when it closes.
            let _ = conn.busy_timeout(CLOSE_CHECKPOINT_WAIT);
            let _ = conn.query_row(sql::CHECKPOINT_TRUNCATE, [], |_| Ok(()));
        }
    }
}

/// The file name of shard `i` inside the store directory.
pub fn shard_file(i: u32) -> String {
    format!("shard-{i:03}.db")
}

/// A stable 64-bit FNV-1a hash of (queue, key): routing must agree across
/// processes and builds, so no randomly seeded hasher.
pub(super) fn route_hash(queue: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in queue.bytes().chain(std::iter::once(0)).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl SqliteStore {
    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The shard a task id lives in.
    pub fn shard_of(&self, id: i64) -> Option<u32> {
        self.split(id).map(|(s, _)| s as u32)
    }

    /// The task id of local id `local` in shard `shard`.
    pub(super) fn global(&self, shard: usize, local: i64) -> i64 {
        local * i64::from(self.shard_count()) + shard as i64
    }

    /// The (shard, local id) of a task id; None for an id no shard hands out.
    pub(super) fn split(&self, id: i64) -> Option<(usize, i64)> {
        let n = i64::from(self.shard_count());
        if id < n {
            return None;
        }
        Some(((id % n) as usize, id / n))
    }

    /// The shard that holds (queue, key).
    pub(super) fn route_key(&self, queue: &str, key: &str) -> usize {
        (route_hash(queue, key) % self.shards.len() as u64) as usize
    }

    /// Runs `f` in one IMMEDIATE transaction on a shard.
    pub(super) fn write<T>(&self, shard: usize, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        let conn = self.shards[shard].conn.lock();
        let run = || -> Result<T> {
            let tx = WriteTx::begin(&conn)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| self.shard_err(shard, e))
    }

    /// Runs `f` on a shard's connection, outside any transaction (reads).
    pub(super) fn read<T>(&self, shard: usize, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.shards[shard].conn.lock();
        f(&conn).map_err(|e| self.shard_err(shard, e))
    }

    /// Every error out of a shard passes here. A corruption error is made
    /// to name the shard file. One that SQLite raised about the file itself
    /// (a malformed page: everything in the file is suspect) marks the
    /// shard unhealthy, so that later sends into it fail at once instead of
    /// adding work a worker can never finish. Damage confined to one task
    /// row (a checksum or text that does not decode) is reported already
    /// naming the file and the task (`rules::damaged_task`) and does not
    /// mark the shard: the rest of the file is sound.
    pub(super) fn shard_err(&self, shard: usize, e: Error) -> Error {
        let sh = &self.shards[shard];
        let raised_by_sqlite = match &e {
            Error::Corrupt(m) | Error::NotAStore(m) => m.contains(crate::error::SQLITE_DAMAGE),
            _ => false,
        };
        let e = name_file(e, &sh.label);
        if raised_by_sqlite {
            let mut unhealthy = sh.unhealthy.lock();
            if unhealthy.is_none() {
                let why = match &e {
                    Error::Corrupt(m) | Error::NotAStore(m) => m.clone(),
                    other => other.to_string(),
                };
                *unhealthy = Some(Error::Corrupt(format!(
                    "{why} (the shard was found damaged earlier; sends into it are refused until the store is \
                     repaired: run `ferroq check --url <store>` to see what is wrong)"
                )));
            }
        }
        e
    }

    /// Refuses work for a shard marked unhealthy (see [`Self::shard_err`]).
    pub(super) fn check_healthy(&self, shard: usize) -> Result<()> {
        match self.shards[shard].unhealthy() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Applies `f` to each item in one transaction per shard. The outer
    /// error aborts the batch (storage failure); inner errors are per item.
    pub(super) fn per_item<P, T>(
        &self,
        items: &[P],
        id_of: impl Fn(&P) -> i64,
        f: impl FnMut(&WriteTx, usize, i64, &P) -> Result<Result<T>>,
    ) -> Result<Vec<Result<T>>> {
        self.per_item_then(items, id_of, f, |_, _| Ok(()))
    }

    /// [`Self::per_item`], running `then` in each shard's transaction
    /// after its items (before it commits).
    pub(super) fn per_item_then<P, T>(
        &self,
        items: &[P],
        id_of: impl Fn(&P) -> i64,
        mut f: impl FnMut(&WriteTx, usize, i64, &P) -> Result<Result<T>>,
        mut then: impl FnMut(&WriteTx, usize) -> Result<()>,
    ) -> Result<Vec<Result<T>>> {
        let mut out: Vec<Option<Result<T>>> = items.iter().map(|_| None).collect();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, item) in items.iter().enumerate() {
            match self.split(id_of(item)) {
                Some((s, _)) => groups[s].push(i),
                None => out[i] = Some(Err(rules::task_not_found(id_of(item)))),
            }
        }
        let mut wrote = false;
        for (s, idxs) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            self.write(s, |tx| {
                for &i in idxs {
                    let id = id_of(&items[i]);
                    let local = id / i64::from(self.shard_count());
                    out[i] = Some(f(tx, s, local, &items[i])?);
                }
                then(tx, s)
            })?;
            wrote = true;
        }
        if wrote {
            self.wake.bump();
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_else(|| Err(Error::Storage("item left unprocessed".into())))).collect())
    }
}
