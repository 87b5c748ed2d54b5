//! The embedded default backend: a directory of SQLite shard files in WAL
//! mode (or in-memory databases for `memory://`).
//!
//! A task's id says its shard: `id = local_id * shards + shard`. Local ids
//! come from one counter shared by all the shards of a store handle, so id
//! order follows enqueue order across shards (within a process; across
//! processes it is approximate), which is the last tie-break of the claim
//! order. Unkeyed tasks are spread round-robin; tasks with a key are routed
//! by a hash of (queue, key) so that dedup and lookup by key hit one shard.
//!
//! This file opens the store and maps each [`Store`] verb onto the module
//! that implements it: `enqueue/` (with group commit), `claim.rs`,
//! `transitions.rs` (the guarded moves), `read.rs`, `admin.rs` (purge,
//! listen data, workers, capacities, limits) and `wake.rs` (change tokens
//! and waiting, with `watch.rs`). `shard.rs` holds the id arithmetic and
//! the transaction helpers they share; every statement is in `sql.rs`.

mod admin;
mod claim;
mod enqueue;
mod read;
mod schema;
mod shard;
pub mod sql;
mod transitions;
mod tx;
mod wake;
mod watch;

pub use schema::Pragmas;
pub use shard::shard_file;

use schema::ShardInfo;
use shard::Shard;
use wake::Wake;

use super::config::{StoreConfig, MAX_SHARDS};
use super::rules;
use super::{
    CancelParams, CapacityParams, ClaimParams, CompleteParams, Enqueued, FailParams, FunctionLimit, GetByKeyParams,
    HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams, ProgressParams,
    PurgeParams, QueueCount, RecoverParams, ReleaseParams, RetryParams, Store, WorkerInfo,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::task::{NewTask, Status, Task};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The SQLite backend.
pub struct SqliteStore {
    shards: Vec<Shard>,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    next_shard: AtomicUsize,
    /// The last local id handed out, in any shard (see the module doc).
    last_local: AtomicI64,
    wake: Arc<Wake>,
    /// Sees other processes' commits without polling, where the OS allows.
    dir_watch: Option<watch::DirWatch>,
    /// Whether any capacity was set, and when that was read.
    capacity_seen: Mutex<Option<(bool, Instant)>>,
    label: String,
}

/// The file-system reason a shard file cannot be opened for writing, when
/// there is one to find, by opening it (and its write-ahead log) for
/// writing as SQLite must. Called only after SQLite failed to open the
/// shard; at worst it leaves an empty shard or WAL file, which SQLite
/// treats as new.
fn why_unavailable(path: &Path) -> Option<Error> {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    for p in [path, wal.as_path()] {
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p) {
            return Some(io_error(p, e));
        }
    }
    None
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    let what = format!("{}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied(what),
        _ => Error::Unavailable(what),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store `config` describes.
    pub fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        rules::check_max_payload(config.max_payload)?;
        let (shards, label) = match &config.path {
            None => (Self::open_memory(&config)?, "memory://".to_string()),
            Some(dir) => (Self::open_dir(dir, &config)?, dir.display().to_string()),
        };
        let mut last_local = 0;
        for shard in &shards {
            last_local = last_local.max(schema::last_local_id(&shard.conn.lock())?);
        }
        let dir_watch = config.path.as_deref().and_then(watch::DirWatch::start);
        Ok(SqliteStore {
            shards,
            config,
            clock,
            next_shard: AtomicUsize::new(0),
            last_local: AtomicI64::new(last_local),
            wake: Arc::new(Wake::new()),
            dir_watch,
            capacity_seen: Mutex::new(None),
            label,
        })
    }

    fn open_memory(config: &StoreConfig) -> Result<Vec<Shard>> {
        let n = config.shards.unwrap_or(1);
        (0..n)
            .map(|i| {
                let mut conn = Connection::open_in_memory()?;
                schema::configure(&conn, config, true)?;
                schema::prepare(&mut conn, i, Some(n), "memory://")?;
                Ok(Shard::new(conn, None))
            })
            .collect()
    }

    fn open_dir(dir: &Path, config: &StoreConfig) -> Result<Vec<Shard>> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotAStore(format!(
                "{} is a file; a ferroq store is a directory of shard files",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        if !dir.join(shard_file(0)).exists() && dir.join(shard_file(1)).exists() {
            return Err(Error::Corrupt(format!(
                "{} is missing from {} (other shards are there)",
                shard_file(0),
                dir.display()
            )));
        }
        let (first, info) = Self::open_shard(dir, 0, config.shards, config, true)?;
        let n = info.shards;
        if let Some(want) = config.shards {
            if want != n {
                return Err(Error::ShardMismatch { path: dir.display().to_string(), existing: n, requested: want });
            }
        }
        if !(1..=MAX_SHARDS).contains(&n) {
            return Err(Error::Corrupt(format!("{} records {n} shards", dir.display())));
        }
        let mut shards = vec![first];
        for i in 1..n {
            // Until shard 0 says the store is complete, shard files are
            // created as needed; afterwards a missing one is damage, and
            // recreating it empty would silently lose its tasks.
            let (shard, ShardInfo { shards: count, .. }) = Self::open_shard(dir, i, Some(n), config, info.creating)?;
            if count != n {
                return Err(Error::Corrupt(format!(
                    "shard {i} of {} records {count} shards, shard 0 records {n}",
                    dir.display()
                )));
            }
            shards.push(shard);
        }
        if info.creating {
            schema::finish_creating(&shards[0].conn.lock())?;
        }
        Ok(shards)
    }

    fn open_shard(
        dir: &Path,
        i: u32,
        want: Option<u32>,
        config: &StoreConfig,
        may_create: bool,
    ) -> Result<(Shard, ShardInfo)> {
        let path: PathBuf = dir.join(shard_file(i));
        let label = path.display().to_string();
        if !may_create && !path.exists() {
            return Err(Error::Corrupt(format!("{label} is missing")));
        }
        let opened = Connection::open(&path).map_err(Error::from).and_then(|conn| {
            conn.busy_timeout(config.busy_timeout)?;
            schema::identify(&conn, &label)?;
            schema::configure(&conn, config, false)?;
            Ok(conn)
        });
        let mut conn = opened.map_err(|e| match e {
            // SQLite says only "unable to open database file"; ask the
            // file system why, so that a permission problem says so.
            Error::Unavailable(m) => {
                why_unavailable(&path).unwrap_or_else(|| Error::Unavailable(format!("{label}: {m}")))
            }
            other => other,
        })?;
        let n = schema::prepare(&mut conn, i, want, &label)?;
        let watch =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        watch.busy_timeout(config.busy_timeout)?;
        Ok((Shard::new(conn, Some(watch)), n))
    }

    /// The settings each shard's connection reports (for verification).
    pub fn pragmas(&self) -> Result<Vec<Pragmas>> {
        self.shards.iter().map(|s| schema::read_pragmas(&s.conn.lock())).collect()
    }
}

impl Store for SqliteStore {
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        enqueue::enqueue(self, tasks)
    }
    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>> {
        claim::claim(self, p)
    }
    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
        transitions::heartbeat(self, p)
    }
    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
        transitions::progress(self, p)
    }
    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
        transitions::complete(self, p)
    }
    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
        transitions::fail(self, p)
    }
    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
        transitions::cancel(self, p)
    }
    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
        transitions::release(self, p)
    }
    fn retry(&self, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
        transitions::retry(self, p)
    }
    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
        transitions::recover(self, p)
    }
    fn expire(&self) -> Result<Vec<i64>> {
        transitions::expire(self)
    }
    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>> {
        read::get(self, ids)
    }
    fn get_by_key(&self, p: &GetByKeyParams) -> Result<Vec<Option<Task>>> {
        read::get_by_key(self, &p.queue, &p.keys)
    }
    fn list(&self, p: &ListParams) -> Result<Vec<Task>> {
        read::list(self, p)
    }
    fn counts(&self) -> Result<Vec<QueueCount>> {
        read::counts(self)
    }
    fn unfinished(&self, queue: &str) -> Result<u64> {
        read::unfinished(self, queue)
    }
    fn next_run_at(&self, queue: &str) -> Result<Option<i64>> {
        read::next_run_at(self, queue)
    }
    fn purge(&self, p: &PurgeParams) -> Result<u64> {
        admin::purge(self, p)
    }
    fn listen_set(&self, p: &ListenSetParams) -> Result<i64> {
        admin::listen_set(self, p)
    }
    fn listen_changes(&self, p: &ListenChangesParams) -> Result<Vec<ListenChange>> {
        admin::listen_changes(self, p)
    }
    fn listen_get(&self, key: &str) -> Result<Option<ListenChange>> {
        admin::listen_get(self, key)
    }
    fn listen_head(&self) -> Result<i64> {
        admin::listen_head(self)
    }
    fn register_worker(&self, w: &WorkerInfo) -> Result<()> {
        admin::register_worker(self, w)
    }
    fn workers(&self) -> Result<Vec<WorkerInfo>> {
        admin::workers(self)
    }
    fn remove_worker(&self, id: &str) -> Result<bool> {
        admin::remove_worker(self, id)
    }
    fn set_capacity(&self, p: &CapacityParams) -> Result<()> {
        admin::set_capacity(self, p)
    }
    fn capacity(&self, queue: &str) -> Result<Option<u64>> {
        admin::capacity(self, queue)
    }
    fn set_function_limit(&self, limit: &FunctionLimit) -> Result<()> {
        admin::set_function_limit(self, limit)
    }
    fn function_limits(&self) -> Result<Vec<FunctionLimit>> {
        admin::function_limits(self)
    }
    fn change_token(&self) -> Result<u64> {
        wake::change_token(self)
    }
    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool> {
        wake::wait_for_change(self, token, timeout)
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    fn describe(&self) -> String {
        format!("sqlite store {} ({} shard(s))", self.label, self.shards.len())
    }
}
