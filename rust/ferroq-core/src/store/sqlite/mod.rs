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
//! `transitions.rs` (the guarded moves), `steer.rs` (moves from outside:
//! start, active, requeue, set_*, queue options), `read.rs`, `admin.rs` (purge,
//! listen data, workers, capacities, limits) and `wake.rs` (change tokens
//! and waiting, with `watch.rs`); `reshard.rs` copies a store offline to
//! another shard count. `shard.rs` holds the id arithmetic and
//! the transaction helpers they share; every statement is in `sql.rs`.
//!
//! Damage is found and named: each shard file records its store's id, its
//! index and the shard count (`schema.rs`), checked at open, so an empty,
//! foreign or misplaced shard file is refused rather than taken for a new
//! shard; every payload and result carries a checksum checked on read
//! (`read.rs`); a shard SQLite found malformed refuses further sends
//! (`shard.rs`); and `check.rs` runs the whole check on demand.

mod admin;
mod backup;
mod check;
mod claim;
mod enqueue;
mod events;
mod flow;
mod read;
mod reshard;
mod schema;
mod shard;
pub mod sql;
mod steer;
mod transitions;
mod tx;
mod wake;
mod watch;

pub use reshard::{reshard, store_dir, ReshardParams, ReshardReport, DEFAULT_WORKER_STALE_MS};
pub use schema::Pragmas;
pub use shard::shard_file;

use schema::ShardInfo;
use shard::Shard;
use wake::Wake;

use super::config::{StoreConfig, MAX_SHARDS};
use super::rules;
use super::{
    ActiveParams, EnqueueParams, FlowTask, OnDuplicate, PauseParams, QueueOptions, RequeueParams, SetMetadataParams,
    SetPriorityParams, SetRunAtParams, StartParams,
};
use super::{
    BackupParams, CancelParams, CapacityParams, ClaimParams, CompleteParams, Enqueued, FailParams, FunctionLimit,
    GetByKeyParams, HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams,
    ProgressParams, PurgeParams, QueueCount, RecoverParams, ReleaseParams, RetryParams, Store, WorkerInfo,
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
    /// Dependents of finished tasks still to settle once the finishing
    /// verb holds no shard (`flow.rs`).
    unsettled: Mutex<Vec<i64>>,
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

/// The label of in-memory shards in messages and check reports.
const MEMORY_LABEL: &str = "memory://";

/// Creates shard file `i` of the store `store_id` (of `shards` shards):
/// written whole under a temporary name in the store directory, then
/// hard-linked into place, so that `shard-NNN.db` never exists without its
/// schema and identity, even if the process dies half-way. When another
/// process created the shard first, its file stays and this one is dropped.
fn create_shard_file(dir: &Path, i: u32, shards: u32, store_id: &str) -> Result<()> {
    let path = dir.join(shard_file(i));
    let tmp = dir.join(format!(".{}.new-{}-{:08x}", shard_file(i), std::process::id(), rand::random::<u32>()));
    let made = (|| -> Result<()> {
        let mut conn = Connection::open(&tmp)?;
        conn.execute_batch(&sql::set_page_size(schema::PAGE_SIZE))?;
        schema::create(&mut conn, i, shards, store_id)?;
        conn.close().map_err(|(_, e)| Error::from(e))
    })();
    let placed = made
        .map_err(|e| match e {
            Error::Unavailable(m) => {
                why_unavailable(&tmp).unwrap_or_else(|| Error::Unavailable(format!("{}: {m}", tmp.display())))
            }
            other => other,
        })
        .and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // A file system without hard links: a rename, unless another
            // process got there first.
            Err(_) if !path.exists() => std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e)),
            Err(_) => Ok(()),
        });
    let _ = std::fs::remove_file(&tmp);
    for suffix in ["-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    placed
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
            events::install(&shard.conn.lock(), clock.clone(), config.events)
                .map_err(|e| shard::name_file(e, &shard.label))?;
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
            unsettled: Mutex::new(Vec::new()),
            label,
        })
    }

    fn open_memory(config: &StoreConfig) -> Result<Vec<Shard>> {
        let n = config.shards.unwrap_or(1);
        let store_id = schema::new_store_id();
        (0..n)
            .map(|i| {
                let mut conn = Connection::open_in_memory()?;
                schema::configure(&conn, config, true)?;
                schema::create(&mut conn, i, n, &store_id)?;
                schema::prepare(&mut conn, i, Some(&store_id), MEMORY_LABEL)?;
                Ok(Shard::new(conn, None, MEMORY_LABEL.to_string()))
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
        // Shard files are created whole under a temporary name and then
        // linked into place (see `create_shard_file`), so a shard file that
        // exists without the schema is damage, never a store being made.
        let want = config.shards.unwrap_or(1);
        if !dir.join(shard_file(0)).exists() {
            create_shard_file(dir, 0, want, &schema::new_store_id())?;
        }
        let (first, info) = Self::open_shard(dir, 0, None, config)?;
        let n = info.shards;
        if let Some(want) = config.shards {
            if want != n {
                return Err(Error::ShardMismatch { path: dir.display().to_string(), existing: n, requested: want });
            }
        }
        if !(1..=MAX_SHARDS).contains(&n) {
            let label = dir.join(shard_file(0)).display().to_string();
            return Err(rules::damaged_file(&label, &format!("it records {n} shards")));
        }
        let mut shards = vec![first];
        for i in 1..n {
            // Until shard 0 says the store is complete, shard files are
            // created as needed; afterwards a missing one is damage, and
            // recreating it empty would silently lose its tasks.
            let path = dir.join(shard_file(i));
            if !path.exists() {
                if !info.creating {
                    return Err(rules::damaged_file(&path.display().to_string(), "the shard file is missing"));
                }
                create_shard_file(dir, i, n, &info.store_id)?;
            }
            let (shard, ShardInfo { shards: count, .. }) = Self::open_shard(dir, i, Some(&info.store_id), config)?;
            if count != n {
                let what = format!("the shard records {count} shards, shard 0 records {n}");
                return Err(rules::damaged_file(&path.display().to_string(), &what));
            }
            shards.push(shard);
        }
        if info.creating {
            schema::finish_creating(&shards[0].conn.lock())?;
        }
        Ok(shards)
    }

    /// Opens the existing shard file `i` (of the store `store_id`, once
    /// shard 0 has told it).
    fn open_shard(dir: &Path, i: u32, store_id: Option<&str>, config: &StoreConfig) -> Result<(Shard, ShardInfo)> {
        let path: PathBuf = dir.join(shard_file(i));
        let label = path.display().to_string();
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
            other => shard::name_file(other, &label),
        })?;
        let info = schema::prepare(&mut conn, i, store_id, &label).map_err(|e| shard::name_file(e, &label))?;
        let watch =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        watch.busy_timeout(config.busy_timeout)?;
        // The reader runs the peeks of every claim and the change checks
        // of every wait: keep all of them prepared.
        watch.set_prepared_statement_cache_capacity(32);
        schema::plan_once(&watch)?;
        Ok((Shard::new(conn, Some(watch), label), info))
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
    fn enqueue_with(&self, p: &EnqueueParams<'_>) -> Result<Vec<Enqueued>> {
        match p.on_duplicate {
            OnDuplicate::Existing => enqueue::enqueue(self, p.tasks),
            OnDuplicate::Error => enqueue::strict::enqueue_strict(self, p.tasks),
        }
    }
    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>> {
        let out = claim::claim(self, p);
        self.settle_pending();
        out
    }
    fn start(&self, p: &[StartParams]) -> Result<Vec<Result<Task>>> {
        let out = steer::start(self, p);
        self.settle_pending();
        out
    }
    fn active(&self, p: &ActiveParams) -> Result<Option<Task>> {
        let out = steer::active(self, p);
        self.settle_pending();
        out
    }
    fn requeue(&self, p: &[RequeueParams]) -> Result<Vec<Result<()>>> {
        steer::requeue(self, p)
    }
    fn set_priority(&self, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>> {
        steer::set_priority(self, p)
    }
    fn set_run_at(&self, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>> {
        steer::set_run_at(self, p)
    }
    fn set_metadata(&self, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>> {
        steer::set_metadata(self, p)
    }
    fn set_queue_options(&self, o: &QueueOptions) -> Result<()> {
        steer::set_queue_options(self, o)
    }
    fn set_paused(&self, p: &PauseParams) -> Result<()> {
        steer::set_paused(self, p)
    }
    fn queue_options(&self, queue: &str) -> Result<QueueOptions> {
        steer::queue_options(self, queue)
    }
    fn all_queue_options(&self) -> Result<Vec<QueueOptions>> {
        steer::all_queue_options(self)
    }
    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
        transitions::heartbeat(self, p)
    }
    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
        transitions::progress(self, p)
    }
    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
        let out = transitions::complete(self, p);
        self.settle_pending();
        out
    }
    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
        let out = transitions::fail(self, p);
        self.settle_pending();
        out
    }
    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
        let out = transitions::cancel(self, p);
        self.settle_pending();
        out
    }
    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
        let out = transitions::release(self, p);
        self.settle_pending();
        out
    }
    fn retry(&self, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
        transitions::retry(self, p)
    }
    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
        let mut out = transitions::recover(self, p)?;
        self.settle_pending();
        out.extend(flow::sweep(self)?);
        Ok(out)
    }
    fn enqueue_flow(&self, tasks: &[FlowTask]) -> Result<Vec<Enqueued>> {
        flow::enqueue_flow(self, tasks)
    }
    fn dependencies(&self, ids: &[i64]) -> Result<Vec<Vec<i64>>> {
        flow::dependencies(self, ids)
    }
    fn expire(&self) -> Result<Vec<i64>> {
        let out = transitions::expire(self);
        self.settle_pending();
        out
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
    fn delete(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        admin::delete(self, ids)
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
    fn check(&self) -> Result<Vec<super::ShardCheck>> {
        check::check(self)
    }
    fn backup(&self, p: &BackupParams) -> Result<()> {
        backup::backup(self, p)
    }
    fn change_token(&self) -> Result<u64> {
        wake::change_token(self)
    }
    fn wake(&self) {
        self.wake.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wake.bump()
    }
    fn wake_count(&self) -> u64 {
        self.wake.wakes.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool> {
        wake::wait_for_change(self, token, timeout)
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    fn events(&self, p: &crate::store::EventsParams) -> Result<crate::store::EventsPage> {
        events::events(self, p)
    }
    fn events_head(&self) -> Result<String> {
        events::events_head(self)
    }
    fn event_cursor_set(&self, consumer: &str, cursor: &str) -> Result<()> {
        events::event_cursor_set(self, consumer, cursor)
    }
    fn event_cursor_get(&self, consumer: &str) -> Result<Option<String>> {
        events::event_cursor_get(self, consumer)
    }
    fn ack_callbacks(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        events::ack_callbacks(self, ids)
    }
    fn listen_keys(&self) -> Result<Vec<ListenChange>> {
        events::listen_keys(self)
    }
    fn listen_cursor_set(&self, consumer: &str, version: i64) -> Result<()> {
        events::listen_cursor_set(self, consumer, version)
    }
    fn listen_cursor_get(&self, consumer: &str) -> Result<Option<i64>> {
        events::listen_cursor_get(self, consumer)
    }
    fn describe(&self) -> String {
        format!("sqlite store {} ({} shard(s))", self.label, self.shards.len())
    }
}
