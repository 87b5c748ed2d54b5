//! The embedded default backend: a directory of SQLite shard files in WAL
//! mode (or in-memory databases for `memory://`).
//!
//! A task's id says its shard: `id = local_id * shards + shard`. Local ids
//! come from one counter shared by all the shards of a store handle, so id
//! order follows enqueue order across shards (within a process; across
//! processes it is approximate), which is the last tie-break of the claim
//! order. Unkeyed tasks are spread round-robin; tasks with a key are routed
//! by a hash of (queue, key) so that dedup and lookup by key hit one shard.

mod group;
mod schema;
pub mod sql;
mod tx;
mod watch;

pub use schema::Pragmas;

use schema::ShardInfo;

use super::config::{StoreConfig, MAX_SHARDS};
use super::{
    check_claim, check_lease, CancelParams, FunctionLimit, WorkerInfo, ClaimParams, CompleteParams, Enqueued, FailParams,
    HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ProgressParams, PurgeParams,
    QueueCount, RecoverParams, ReleaseParams, Retry, Store,
};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::task::{NewTask, Status, Task};
use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, ToSql};
use tx::WriteTx;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One shard: a writer connection, and (on disk) a second connection used
/// only to watch `PRAGMA data_version` for other processes' commits.
struct Shard {
    conn: Mutex<Connection>,
    watch: Option<Mutex<Connection>>,
    /// Enqueues waiting to share a transaction (group commit).
    group: group::Group,
}

/// Batches at least this big write their shards in parallel threads.
const PARALLEL_ENQUEUE_MIN: usize = 2_000;

/// How long "no queue has a capacity" is trusted before it is read again
/// (another process may set one; this process's own changes apply at once).
const CAPACITY_RECHECK: Duration = Duration::from_millis(250);

/// Fallback poll interval while a directory watch is active.
const WATCHED_POLL: Duration = Duration::from_millis(25);

/// In-process wake-ups: every commit bumps the generation and wakes waiters.
struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Wake {
    fn bump(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
    }
}



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

/// Rows per multi-row insert (see `insert_tasks`).
const INSERT_ROWS: usize = 32;

/// The text of the `INSERT_ROWS`-row insert, built once.
fn insert_rows_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| sql::insert_task_rows(INSERT_ROWS))
}

/// The values of `sql::INSERT_TASK` (and `INSERT_TASK_ALONE`) for task `t`
/// with local id `local`, enqueued at `now`.
fn insert_values<'a>(t: &'a NewTask, now: &'a i64, backoff: &'a Option<String>, local: &'a i64) -> [&'a dyn ToSql; 15] {
    [
        &t.queue,
        &t.name,
        &t.payload,
        &t.priority,
        t.run_at.as_ref().unwrap_or(now),
        &t.max_attempts,
        &t.key,
        &t.batch,
        now,
        &t.expires_at,
        &t.metadata,
        backoff,
        &t.result_ttl_ms,
        local,
        &t.requires,
    ]
}

/// The file name of shard `i` inside the store directory.
pub fn shard_file(i: u32) -> String {
    format!("shard-{i:03}.db")
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

/// A stable 64-bit FNV-1a hash of (queue, key): routing must agree across
/// processes and builds, so no randomly seeded hasher.
fn route_hash(queue: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in queue.bytes().chain(std::iter::once(0)).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A running task whose lease ended, as `EXPIRED_LEASES` reads it:
/// (local id, attempts, max_attempts, run_at, worker).
type ExpiredLease = (i64, u32, u32, i64, Option<String>);

/// The parts of a claim every shard's statement shares.
struct ClaimCtx<'a> {
    now: i64,
    resources: &'a str,
    /// JSON array of task names that must not be claimed now.
    excluded: Option<&'a str>,
}


fn read_limits(conn: &Connection) -> Result<Vec<super::StoredLimit>> {
    let mut stmt = conn.prepare_cached(sql::LIMITS)?;
    let rows = stmt.query_map([], |r| {
        Ok(super::StoredLimit {
            limit: FunctionLimit {
                name: r.get(0)?,
                max_running: r.get(1)?,
                rate_per_s: r.get(2)?,
                burst: r.get(3)?,
            },
            tokens: r.get(4)?,
            refilled_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Why a guarded statement changed no row.
#[derive(Clone, Copy)]
enum Guard {
    /// Needed: running under this worker.
    Held,
    /// Needed: some unfinished status.
    Unfinished,
    /// Needed: a failed, cancelled or expired task.
    Retryable,
}

impl SqliteStore {
    /// Opens (creating if needed) the store `config` describes.
    pub fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        if config.max_payload == 0 {
            return Err(Error::InvalidArgument("max_payload must be > 0".into()));
        }
        let (shards, label) = match &config.path {
            None => (Self::open_memory(&config)?, "memory://".to_string()),
            Some(dir) => (Self::open_dir(dir, &config)?, dir.display().to_string()),
        };
        let mut last_local = 0;
        for shard in &shards {
            last_local = last_local.max(schema::last_local_id(&shard.conn.lock())?);
        }
        let wake = Arc::new(Wake { generation: Mutex::new(0), cv: Condvar::new() });
        let dir_watch = config.path.as_deref().and_then(watch::DirWatch::start);
        Ok(SqliteStore {
            shards,
            config,
            clock,
            next_shard: AtomicUsize::new(0),
            last_local: AtomicI64::new(last_local),
            wake,
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
                Ok(Shard { conn: Mutex::new(conn), watch: None, group: group::Group::default() })
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
                return Err(Error::ShardMismatch {
                    path: dir.display().to_string(),
                    existing: n,
                    requested: want,
                });
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
            Error::Unavailable(m) => why_unavailable(&path).unwrap_or_else(|| Error::Unavailable(format!("{label}: {m}"))),
            other => other,
        })?;
        let n = schema::prepare(&mut conn, i, want, &label)?;
        let watch = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        watch.busy_timeout(config.busy_timeout)?;
        Ok((Shard { conn: Mutex::new(conn), watch: Some(Mutex::new(watch)), group: group::Group::default() }, n))
    }

    /// The settings each shard's connection reports (for verification).
    pub fn pragmas(&self) -> Result<Vec<Pragmas>> {
        self.shards.iter().map(|s| schema::read_pragmas(&s.conn.lock())).collect()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The shard a task id lives in.
    pub fn shard_of(&self, id: i64) -> Option<u32> {
        self.split(id).map(|(s, _)| s as u32)
    }

    fn n(&self) -> i64 {
        self.shards.len() as i64
    }

    fn global(&self, shard: usize, local: i64) -> i64 {
        local * self.n() + shard as i64
    }

    fn split(&self, id: i64) -> Option<(usize, i64)> {
        let n = self.n();
        if id < n {
            return None;
        }
        Some(((id % n) as usize, id / n))
    }

    fn route_key(&self, queue: &str, key: &str) -> usize {
        (route_hash(queue, key) % self.shards.len() as u64) as usize
    }

    /// Runs `f` in one IMMEDIATE transaction on a shard.
    fn write<T>(&self, shard: usize, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        let conn = self.shards[shard].conn.lock();
        let tx = WriteTx::begin(&conn)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Applies `f` to each item in one transaction per shard. The outer
    /// error aborts the batch (storage failure); inner errors are per item.
    fn per_item<P, T>(
        &self,
        items: &[P],
        id_of: impl Fn(&P) -> i64,
        mut f: impl FnMut(&WriteTx, usize, i64, &P) -> Result<Result<T>>,
    ) -> Result<Vec<Result<T>>> {
        let mut out: Vec<Option<Result<T>>> = items.iter().map(|_| None).collect();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, item) in items.iter().enumerate() {
            match self.split(id_of(item)) {
                Some((s, _)) => groups[s].push(i),
                None => out[i] = Some(Err(Error::NotFound(format!("task {}", id_of(item))))),
            }
        }
        let mut wrote = false;
        for (s, idxs) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            self.write(s, |tx| {
                for &i in idxs {
                    let id = id_of(&items[i]);
                    let local = id / self.n();
                    out[i] = Some(f(tx, s, local, &items[i])?);
                }
                Ok(())
            })?;
            wrote = true;
        }
        if wrote {
            self.wake.bump();
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Storage("item left unprocessed".into()))))
            .collect())
    }

    /// Names the reason a guarded statement on task `id` changed nothing.
    fn explain(&self, tx: &WriteTx, id: i64, local: i64, worker: Option<&str>, guard: Guard, action: &'static str) -> Result<Error> {
        let found: Option<(i64, Option<String>)> = tx
            .prepare_cached(sql::STATUS_OF)?
            .query_row([local], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((code, _)) = found else { return Ok(Error::NotFound(format!("task {id}"))) };
        let status = Status::from_code(code)?;
        Ok(match guard {
            Guard::Retryable => Error::InvalidTransition { id, status, action },
            _ if status.is_finished() => Error::AlreadyFinished { id, status },
            Guard::Held => Error::LeaseLost { id, worker: worker.unwrap_or("").to_string(), status },
            Guard::Unfinished => Error::InvalidTransition { id, status, action },
        })
    }

    /// Moves a task to `task_done` if it is in status `from` (and held by
    /// `worker` when given). True when it moved.
    #[allow(clippy::too_many_arguments)]
    fn move_to_done(
        &self,
        tx: &WriteTx,
        local: i64,
        to: Status,
        result: Option<&[u8]>,
        error: Option<&str>,
        from: Status,
        worker: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let moved = tx.prepare_cached(sql::MOVE_TO_DONE)?.execute(params![
            local,
            to.code(),
            result,
            error,
            now,
            self.config.retention_ms,
            from.code(),
            worker
        ])?;
        if moved == 1 {
            tx.prepare_cached(sql::DELETE_ACTIVE)?.execute([local])?;
        }
        Ok(moved == 1)
    }

    fn read_task(&self, row: &Row, shard: usize) -> Result<Task> {
        let backoff: Option<String> = row.get(22)?;
        Ok(Task {
            id: self.global(shard, row.get(0)?),
            queue: row.get(1)?,
            name: row.get(2)?,
            payload: row.get(3)?,
            priority: row.get(4)?,
            status: Status::from_code(row.get(5)?)?,
            run_at: row.get(6)?,
            attempts: row.get(7)?,
            max_attempts: row.get(8)?,
            lease_until: row.get(9)?,
            worker: row.get(10)?,
            key: row.get(11)?,
            batch: row.get(12)?,
            progress: row.get(13)?,
            result: row.get(14)?,
            error: row.get(15)?,
            created_at: row.get(16)?,
            started_at: row.get(17)?,
            finished_at: row.get(18)?,
            expires_at: row.get(19)?,
            metadata: row.get(20)?,
            cancel_requested: row.get::<_, i64>(21)? != 0,
            backoff: backoff.as_deref().map(Backoff::decode).transpose()?,
            result_ttl_ms: row.get(23)?,
            requires: row.get(25)?,
        })
    }

    fn query_tasks<P: rusqlite::Params>(&self, conn: &Connection, shard: usize, sql: &str, p: P) -> Result<Vec<Task>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(p)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(self.read_task(row, shard)?);
        }
        Ok(out)
    }

    /// Claims up to `limit` tasks in one shard's transaction. With an
    /// allowance (function limits in force), tasks of a limited name beyond
    /// what it allows are given back at once, uncounted.
    fn claim_in(&self, tx: &WriteTx, shard: usize, p: &ClaimParams, limit: u32, c: &ClaimCtx<'_>, allowance: &mut Option<HashMap<String, u64>>) -> Result<Vec<Task>> {
        let claimed = self.query_tasks(
            tx,
            shard,
            sql::CLAIM,
            params![p.queue, c.now, limit, p.worker, c.now + p.lease_ms, c.resources, c.excluded],
        )?;
        let Some(allow) = allowance else { return Ok(claimed) };
        let mut kept = Vec::with_capacity(claimed.len());
        let mut sorted = claimed;
        sorted.sort_by(Self::claim_order);
        for t in sorted {
            match allow.get_mut(&t.name) {
                Some(0) => {
                    tx.prepare_cached(sql::UNCLAIM)?.execute([t.id / self.n()])?;
                }
                Some(n) => {
                    *n -= 1;
                    kept.push(t);
                }
                None => kept.push(t),
            }
        }
        Ok(kept)
    }

    /// Peeks every shard, merges the heads in claim order and claims the
    /// best `p.limit`. `tx0` is shard 0's open transaction when the caller
    /// holds it (limited claims), so shard 0 is used through it.
    fn claim_merged(&self, p: &ClaimParams, c: &ClaimCtx<'_>, tx0: Option<&WriteTx>, allowance: &mut Option<HashMap<String, u64>>) -> Result<Vec<Task>> {
        // Peek (a read, no write lock) so an idle claim never blocks writers,
        // and so several shards can be merged in priority order.
        let peek_limit = if self.shards.len() == 1 { 1 } else { p.limit };
        let mut heads: Vec<(i32, i64, i64, usize)> = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let guard;
            let conn: &Connection = match tx0 {
                Some(tx) if s == 0 => tx,
                _ => {
                    guard = shard.conn.lock();
                    &guard
                }
            };
            let mut stmt = conn.prepare_cached(sql::PEEK_READY)?;
            let mut rows = stmt.query(params![p.queue, c.now, peek_limit, c.resources, c.excluded])?;
            while let Some(r) = rows.next()? {
                heads.push((r.get(0)?, r.get(1)?, self.global(s, r.get(2)?), s));
            }
        }
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        let mut per_shard = vec![0u32; self.shards.len()];
        if self.shards.len() == 1 {
            per_shard[0] = p.limit;
        } else {
            heads.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            for h in heads.iter().take(p.limit as usize) {
                per_shard[h.3] += 1;
            }
        }
        let mut all = Vec::new();
        for (s, k) in per_shard.into_iter().enumerate().filter(|(_, k)| *k > 0) {
            let got = match tx0 {
                Some(tx) if s == 0 => self.claim_in(tx, s, p, k, c, allowance)?,
                _ => self.write(s, |tx| self.claim_in(tx, s, p, k, c, allowance))?,
            };
            all.extend(got);
        }
        all.sort_by(Self::claim_order);
        Ok(all)
    }

    /// A claim while function limits are in force: shard 0's write lock
    /// serialises every such claim store-wide, so running counts and rate
    /// buckets are exact across processes.
    fn claim_limited(&self, p: &ClaimParams, resources: &str, conn0: parking_lot::MutexGuard<'_, Connection>) -> Result<Vec<Task>> {
        let tx0 = WriteTx::begin(&conn0)?;
        // Read the clock only now that the lock is held: a time read before
        // waiting for it could be older than a bucket's last refill, and
        // moving `refilled_at` back would hand out its tokens twice.
        let now = self.clock.now_ms();
        let limits = read_limits(&tx0)?;
        let mut running: HashMap<String, u64> = HashMap::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let guard;
            let conn: &Connection = if s == 0 {
                &tx0
            } else {
                guard = shard.conn.lock();
                &guard
            };
            let mut stmt = conn.prepare_cached(sql::RUNNING_BY_NAME)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                *running.entry(r.get(0)?).or_default() += r.get::<_, i64>(1)? as u64;
            }
        }
        let (allowance, levels) = super::allowances(&limits, &running, now);
        let full: Vec<&String> = allowance.iter().filter(|(_, a)| **a == 0).map(|(n, _)| n).collect();
        let excluded = if full.is_empty() { None } else { serde_json::to_string(&full).ok() };
        let before = allowance.clone();
        let c = ClaimCtx { now, resources, excluded: excluded.as_deref() };
        let mut allow = Some(allowance);
        let tasks = self.claim_merged(p, &c, Some(&tx0), &mut allow)?;
        let after = allow.unwrap_or_default();
        for (name, level) in levels {
            let used = before.get(&name).copied().unwrap_or(0) - after.get(&name).copied().unwrap_or(0);
            tx0.prepare_cached(sql::LIMIT_TOKENS)?.execute(params![name, level - used as f64, now])?;
        }
        tx0.commit()?;
        Ok(tasks)
    }

    /// Inserts `tasks[i]` for each `i` in `idxs` into shard `s` (within the
    /// caller's transaction); a task whose key exists stores nothing. Tasks
    /// without a key go in multi-row statements of `INSERT_ROWS` rows: a
    /// statement's fixed cost (opening a cursor on the table and each of its
    /// indexes) is a large share of a one-row insert.
    fn insert_tasks(&self, tx: &Connection, s: usize, tasks: &[NewTask], idxs: &[usize], first_local: i64, now: i64) -> Result<Vec<Enqueued>> {
        let mut last = schema::last_local_id(tx)?;
        let mut out = Vec::with_capacity(idxs.len());
        // Unkeyed rows waiting for a full multi-row statement: (task, local id, backoff text).
        let mut rows: Vec<(&NewTask, i64, Option<String>)> = Vec::with_capacity(INSERT_ROWS);
        for &i in idxs {
            let t = &tasks[i];
            if let Some(k) = &t.key {
                let existing: Option<i64> =
                    tx.prepare_cached(sql::FIND_KEY)?.query_row((&t.queue, k), |r| r.get(0)).optional()?;
                if let Some(local) = existing {
                    out.push(Enqueued { id: self.global(s, local), inserted: false });
                    continue;
                }
            }
            let local = (first_local + i as i64).max(last + 1);
            last = local;
            out.push(Enqueued { id: self.global(s, local), inserted: true });
            let backoff = t.backoff.map(|b| b.encode());
            if t.key.is_some() {
                tx.prepare_cached(sql::INSERT_TASK)?.execute(&insert_values(t, &now, &backoff, &local)[..])?;
                continue;
            }
            rows.push((t, local, backoff));
            if rows.len() == INSERT_ROWS {
                let values: Vec<&dyn ToSql> =
                    rows.iter().flat_map(|(t, local, backoff)| insert_values(t, &now, backoff, local)).collect();
                tx.prepare_cached(insert_rows_sql())?.execute(&values[..])?;
                rows.clear();
            }
        }
        for (t, local, backoff) in &rows {
            tx.prepare_cached(sql::INSERT_TASK)?.execute(&insert_values(t, &now, backoff, local)[..])?;
        }
        self.last_local.fetch_max(last, Ordering::Relaxed);
        Ok(out)
    }

    /// Inserts one task without a key as a statement of its own (see
    /// `sql::INSERT_TASK_ALONE`): the common single send, at the cost of
    /// one statement.
    fn insert_alone(&self, conn: &Connection, s: usize, t: &NewTask, first_local: i64, now: i64) -> Result<Enqueued> {
        let backoff = t.backoff.map(|b| b.encode());
        conn.prepare_cached(sql::INSERT_TASK_ALONE)?.execute(&insert_values(t, &now, &backoff, &first_local)[..])?;
        let local = conn.last_insert_rowid();
        self.last_local.fetch_max(local, Ordering::Relaxed);
        Ok(Enqueued { id: self.global(s, local), inserted: true })
    }

    /// Enqueues through the shard's group commit (see `group.rs`).
    fn enqueue_grouped(&self, s: usize, req: Arc<group::Pending>) -> Result<Vec<Enqueued>> {
        let shard = &self.shards[s];
        shard.group.push(req.clone());
        loop {
            if let Some(r) = req.take() {
                return r;
            }
            if let Some(conn) = shard.conn.try_lock() {
                // Lead one batch: every request queued now, ours included
                // unless another leader took it already. Requests queued
                // during the commit get a leader of their own, so this
                // caller returns without waiting for them.
                let batch = shard.group.drain();
                if !batch.is_empty() {
                    self.commit_group(&conn, s, &batch);
                }
                drop(conn);
                shard.group.hand_over();
                continue;
            }
            if let Some(r) = req.wait() {
                return r;
            }
        }
    }

    /// Commits a batch of queued enqueues in one transaction.
    fn commit_group(&self, conn: &Connection, s: usize, batch: &[Arc<group::Pending>]) {
        if let [p] = batch {
            if let [t] = &p.tasks[..] {
                if t.key.is_none() {
                    p.finish(self.insert_alone(conn, s, t, p.first_local, p.now).map(|e| vec![e]));
                    return;
                }
            }
        }
        // Requests were validated before they were queued, so what can fail
        // here is the storage itself, and then it fails for all of them: no
        // savepoint per request (one would cost about as much as the insert).
        let run = |conn: &Connection| -> Result<Vec<Result<Vec<Enqueued>>>> {
            let tx = WriteTx::begin(conn)?;
            let mut results = Vec::with_capacity(batch.len());
            for p in batch {
                let all: Vec<usize> = (0..p.tasks.len()).collect();
                results.push(Ok(self.insert_tasks(&tx, s, &p.tasks, &all, p.first_local, p.now)?));
            }
            tx.commit()?;
            Ok(results)
        };
        match run(conn) {
            Ok(results) => {
                for (p, r) in batch.iter().zip(results) {
                    p.finish(r);
                }
            }
            Err(e) => {
                for p in batch {
                    p.finish(Err(group::replicate(&e)));
                }
            }
        }
    }

    /// Refuses a batch that would take a capped queue over its capacity.
    /// Checked before writing; producers in other processes racing this one
    /// can overshoot by their own in-flight sends.
    fn check_capacity(&self, tasks: &[NewTask]) -> Result<()> {
        // Whether any queue has a capacity is read at most every
        // CAPACITY_RECHECK (and at once after a change in this process):
        // a send should not pay a query for a feature it does not use.
        let now = Instant::now();
        {
            let mut cached = self.capacity_seen.lock();
            match *cached {
                Some((false, at)) if now.duration_since(at) < CAPACITY_RECHECK => return Ok(()),
                Some((true, at)) if now.duration_since(at) < CAPACITY_RECHECK => {}
                _ => {
                    let conn = self.shards[0].conn.lock();
                    let any: i64 = conn.prepare_cached(sql::CAPACITY_ANY)?.query_row([], |r| r.get(0))?;
                    *cached = Some((any > 0, now));
                    if any == 0 {
                        return Ok(());
                    }
                }
            }
        }
        let caps: Vec<(String, u64)> = {
            let conn = self.shards[0].conn.lock();
            let mut queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
            queues.sort_unstable();
            queues.dedup();
            let mut caps = Vec::new();
            for q in queues {
                let cap: Option<i64> =
                    conn.prepare_cached(sql::CAPACITY_GET)?.query_row([q], |r| r.get(0)).optional()?;
                if let Some(cap) = cap {
                    caps.push((q.to_string(), cap.max(0) as u64));
                }
            }
            caps
        };
        for (queue, cap) in caps {
            let mut new = 0u64;
            for t in tasks.iter().filter(|t| t.queue == queue) {
                let exists = match &t.key {
                    Some(k) => self.get_by_key(&queue, std::slice::from_ref(k))?.pop().flatten().is_some(),
                    None => false,
                };
                new += u64::from(!exists);
            }
            if new > 0 && self.unfinished(&queue)? + new > cap {
                return Err(Error::QueueFull { queue, limit: cap });
            }
        }
        Ok(())
    }

    fn claim_order(a: &Task, b: &Task) -> std::cmp::Ordering {
        b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)).then(a.id.cmp(&b.id))
    }

    fn backoff_of(&self, text: Option<&str>) -> Backoff {
        text.and_then(|t| Backoff::decode(t).ok()).unwrap_or(self.config.default_backoff)
    }

    fn token_at(&self, generation: u64) -> Result<u64> {
        let mut token = generation;
        for shard in &self.shards {
            if let Some(w) = &shard.watch {
                let v: i64 = w.lock().query_row("PRAGMA data_version", [], |r| r.get(0))?;
                token = token.wrapping_add(v as u64);
            }
        }
        Ok(token)
    }
}

impl Store for SqliteStore {
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        for t in tasks {
            t.validate(self.config.max_payload)?;
        }
        self.check_capacity(tasks)?;
        let now = self.clock.now_ms();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, t) in tasks.iter().enumerate() {
            let s = match &t.key {
                Some(k) => self.route_key(&t.queue, k),
                None => self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len(),
            };
            groups[s].push(i);
        }
        // Local ids for the batch, in input order (see the module doc); a
        // shard whose own sequence is ahead (another process, or another
        // thread's batch committed first) continues from there instead.
        let first_local = self.last_local.fetch_add(tasks.len() as i64, Ordering::Relaxed) + 1;
        let busy: Vec<usize> = (0..groups.len()).filter(|s| !groups[*s].is_empty()).collect();
        let bytes: usize = tasks.iter().map(|t| t.payload.len()).sum();
        if let [s] = busy[..] {
            if bytes <= group::GROUP_MAX_BYTES {
                let out = self.enqueue_grouped(s, group::Pending::new(tasks.to_vec(), first_local, now))?;
                self.wake.bump();
                return Ok(out);
            }
        }
        let mut out = vec![Enqueued { id: 0, inserted: false }; tasks.len()];
        let write_shard = |s: usize| self.write(s, |tx| self.insert_tasks(tx, s, tasks, &groups[s], first_local, now));
        let written: Vec<(usize, Result<Vec<Enqueued>>)> = if busy.len() > 1 && tasks.len() >= PARALLEL_ENQUEUE_MIN {
            // Big batches write their shards at the same time: each shard is
            // its own file and connection, so the work spreads over the cores.
            std::thread::scope(|scope| {
                let running: Vec<_> = busy.iter().map(|&s| (s, scope.spawn(move || write_shard(s)))).collect();
                running
                    .into_iter()
                    .map(|(s, h)| (s, h.join().unwrap_or_else(|_| Err(Error::Storage("shard writer panicked".into())))))
                    .collect()
            })
        } else {
            busy.iter().map(|&s| (s, write_shard(s))).collect()
        };
        for (s, got) in written {
            for (&i, e) in groups[s].iter().zip(got?) {
                out[i] = e;
            }
        }
        if !tasks.is_empty() {
            self.wake.bump();
        }
        Ok(out)
    }

    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>> {
        check_claim(p)?;
        let now = self.clock.now_ms();
        let resources = p.resources.as_deref().unwrap_or("{}");
        let conn0 = self.shards[0].conn.lock();
        let limited: i64 = conn0.prepare_cached(sql::LIMITS_ANY)?.query_row([], |r| r.get(0))?;
        if limited > 0 {
            return self.claim_limited(p, resources, conn0);
        }
        drop(conn0);
        self.claim_merged(p, &ClaimCtx { now, resources, excluded: None }, None, &mut None)
    }

    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
        check_lease(p.lease_ms)?;
        let until = self.clock.now_ms() + p.lease_ms;
        let results = self.per_item(&p.ids, |id| *id, |tx, _, local, id| {
            let flag: Option<i64> = tx
                .prepare_cached(sql::HEARTBEAT)?
                .query_row(params![local, p.worker, until], |r| r.get(0))
                .optional()?;
            Ok(Ok(HeartbeatOutcome { id: *id, held: flag.is_some(), cancel_requested: flag == Some(1) }))
        })?;
        Ok(results
            .into_iter()
            .zip(&p.ids)
            .map(|(r, id)| r.unwrap_or(HeartbeatOutcome { id: *id, held: false, cancel_requested: false }))
            .collect())
    }

    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
        self.per_item(p, |x| x.id, |tx, _, local, x| {
            if !(0.0..=1.0).contains(&x.progress) {
                return Ok(Err(Error::InvalidArgument(format!(
                    "progress must be within 0..=1, got {}",
                    x.progress
                ))));
            }
            let n = tx.prepare_cached(sql::PROGRESS)?.execute(params![local, x.worker, x.progress])?;
            if n == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(self.explain(tx, x.id, local, Some(&x.worker), Guard::Held, "report progress of")?))
        })
    }

    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
        let now = self.clock.now_ms();
        self.per_item(p, |x| x.id, |tx, _, local, x| {
            if x.result.len() > self.config.max_payload {
                return Ok(Err(Error::PayloadTooLarge {
                    what: "result",
                    size: x.result.len(),
                    limit: self.config.max_payload,
                }));
            }
            if self.move_to_done(tx, local, Status::Done, Some(&x.result), None, Status::Running, Some(&x.worker), now)? {
                return Ok(Ok(()));
            }
            Ok(Err(self.explain(tx, x.id, local, Some(&x.worker), Guard::Held, "complete")?))
        })
    }

    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
        let now = self.clock.now_ms();
        self.per_item(p, |x| x.id, |tx, _, local, x| {
            let found: Option<(u32, u32, Option<String>)> = tx
                .prepare_cached(sql::FAIL_LOOKUP)?
                .query_row(params![local, x.worker], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((attempts, max_attempts, backoff)) = found else {
                return Ok(Err(self.explain(tx, x.id, local, Some(&x.worker), Guard::Held, "fail")?));
            };
            let delay = match x.retry {
                _ if attempts >= max_attempts => None,
                Retry::Never => None,
                Retry::After(ms) => Some(ms.max(0)),
                Retry::Backoff => Some(self.backoff_of(backoff.as_deref()).delay_ms(attempts)),
            };
            if let Some(d) = delay {
                tx.prepare_cached(sql::REQUEUE)?.execute(params![local, x.worker, now + d, x.error])?;
                return Ok(Ok(Status::Queued));
            }
            self.move_to_done(tx, local, Status::Failed, None, Some(&x.error), Status::Running, Some(&x.worker), now)?;
            Ok(Ok(Status::Failed))
        })
    }

    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
        let now = self.clock.now_ms();
        self.per_item(p, |x| x.id, |tx, _, local, x| {
            let why = Some("cancelled");
            if let Some(w) = &x.worker {
                if self.move_to_done(tx, local, Status::Cancelled, None, why, Status::Running, Some(w), now)? {
                    return Ok(Ok(Status::Cancelled));
                }
                return Ok(Err(self.explain(tx, x.id, local, Some(w), Guard::Held, "cancel")?));
            }
            if self.move_to_done(tx, local, Status::Cancelled, None, why, Status::Queued, None, now)? {
                return Ok(Ok(Status::Cancelled));
            }
            if tx.prepare_cached(sql::FLAG_CANCEL)?.execute([local])? == 1 {
                return Ok(Ok(Status::Running));
            }
            Ok(Err(self.explain(tx, x.id, local, None, Guard::Unfinished, "cancel")?))
        })
    }

    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
        self.per_item(p, |x| x.id, |tx, _, local, x| {
            if tx.prepare_cached(sql::RELEASE)?.execute(params![local, x.worker])? == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(self.explain(tx, x.id, local, Some(&x.worker), Guard::Held, "release")?))
        })
    }

    fn retry(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        let now = self.clock.now_ms();
        self.per_item(ids, |id| *id, |tx, _, local, id| {
            if tx.prepare_cached(sql::RETRY_FROM_DONE)?.execute(params![local, now])? == 1 {
                tx.prepare_cached(sql::DELETE_DONE)?.execute([local])?;
                return Ok(Ok(()));
            }
            Ok(Err(self.explain(tx, *id, local, None, Guard::Retryable, "retry")?))
        })
    }

    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for s in 0..self.shards.len() {
            let moved = self.write(s, |tx| {
                let expired: Vec<ExpiredLease> = tx
                    .prepare_cached(sql::EXPIRED_LEASES)?
                    .query_map(params![now, p.worker], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut moved = Vec::new();
                for (local, attempts, max_attempts, run_at, worker) in expired {
                    let why = format!(
                        "lease lost: worker {} stopped before finishing attempt {attempts}",
                        worker.as_deref().unwrap_or("?")
                    );
                    let status = if attempts < max_attempts.max(super::RECOVERY_MIN_ATTEMPTS) {
                        // Back in its old place in the queue (its original run_at),
                        // not behind everything sent since: it was next once already.
                        tx.prepare_cached(sql::REQUEUE)?.execute(params![local, worker, run_at.min(now), why])?;
                        Status::Queued
                    } else {
                        self.move_to_done(tx, local, Status::Failed, None, Some(&why), Status::Running, None, now)?;
                        Status::Failed
                    };
                    moved.push((self.global(s, local), status));
                }
                Ok(moved)
            })?;
            out.extend(moved);
        }
        if !out.is_empty() {
            self.wake.bump();
        }
        Ok(out)
    }

    fn expire(&self) -> Result<Vec<i64>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for s in 0..self.shards.len() {
            let moved = self.write(s, |tx| {
                let due: Vec<i64> = tx
                    .prepare_cached(sql::PAST_DEADLINE)?
                    .query_map([now], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let why = Some("deadline passed before the task started");
                let mut moved = Vec::new();
                for local in due {
                    if self.move_to_done(tx, local, Status::Expired, None, why, Status::Queued, None, now)? {
                        moved.push(self.global(s, local));
                    }
                }
                Ok(moved)
            })?;
            out.extend(moved);
        }
        if !out.is_empty() {
            self.wake.bump();
        }
        Ok(out)
    }

    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>> {
        ids.iter()
            .map(|&id| match self.split(id) {
                None => Ok(None),
                Some((s, local)) => {
                    let conn = self.shards[s].conn.lock();
                    Ok(self.query_tasks(&conn, s, sql::GET, [local])?.pop())
                }
            })
            .collect()
    }

    fn get_by_key(&self, queue: &str, keys: &[String]) -> Result<Vec<Option<Task>>> {
        keys.iter()
            .map(|k| {
                let s = self.route_key(queue, k);
                let conn = self.shards[s].conn.lock();
                Ok(self.query_tasks(&conn, s, sql::GET_BY_KEY, (queue, k))?.pop())
            })
            .collect()
    }

    fn list(&self, p: &ListParams) -> Result<Vec<Task>> {
        if !(1..=100_000).contains(&p.limit) {
            return Err(Error::InvalidArgument(format!("list limit {} is outside 1..=100000", p.limit)));
        }
        let (active, done) = match p.status {
            None => (true, true),
            Some(s) => (!s.is_finished(), s.is_finished()),
        };
        let n = self.n();
        let mut all = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let from_local = p.after_id.map(|a| (a - s as i64).div_euclid(n) + 1).unwrap_or(0);
            let conn = shard.conn.lock();
            all.extend(self.query_tasks(
                &conn,
                s,
                sql::LIST,
                params![p.queue, p.status.map(Status::code), p.batch, from_local, p.limit, active, done],
            )?);
        }
        all.sort_by_key(|t| t.id);
        all.truncate(p.limit as usize);
        Ok(all)
    }

    fn counts(&self) -> Result<Vec<QueueCount>> {
        let mut sums: BTreeMap<(String, Status), u64> = BTreeMap::new();
        for shard in &self.shards {
            let conn = shard.conn.lock();
            let mut stmt = conn.prepare_cached(sql::COUNTS)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let status = Status::from_code(r.get(1)?)?;
                *sums.entry((r.get(0)?, status)).or_default() += r.get::<_, i64>(2)? as u64;
            }
        }
        Ok(sums.into_iter().map(|((queue, status), count)| QueueCount { queue, status, count }).collect())
    }

    fn unfinished(&self, queue: &str) -> Result<u64> {
        let mut total = 0u64;
        for shard in &self.shards {
            let conn = shard.conn.lock();
            total += conn.prepare_cached(sql::COUNT_UNFINISHED)?.query_row([queue], |r| r.get::<_, i64>(0))? as u64;
        }
        Ok(total)
    }

    fn purge(&self, p: &PurgeParams) -> Result<u64> {
        let now = self.clock.now_ms();
        let mut total = 0u64;
        for s in 0..self.shards.len() {
            total += self.write(s, |tx| {
                let high = schema::last_local_id(tx)?;
                tx.prepare_cached(sql::SET_HIGH_ID)?.execute([high.to_string()])?;
                let n = tx.prepare_cached(sql::PURGE)?.execute(params![now, p.finished_before])?;
                if s == 0 {
                    if let Some(r) = self.config.retention_ms {
                        tx.prepare_cached(sql::LISTEN_PRUNE)?.execute([now - r])?;
                    }
                }
                Ok(n as u64)
            })?;
        }
        Ok(total)
    }

    fn listen_set(&self, key: &str, value: &[u8]) -> Result<i64> {
        if key.is_empty() || key.len() > 1_000 {
            return Err(Error::InvalidArgument("listen key must be 1..=1000 bytes".into()));
        }
        if value.len() > self.config.max_payload {
            return Err(Error::PayloadTooLarge { what: "listen value", size: value.len(), limit: self.config.max_payload });
        }
        let now = self.clock.now_ms();
        let v = self.write(0, |tx| {
            Ok(tx.prepare_cached(sql::LISTEN_SET)?.query_row(params![key, value, now], |r| r.get(0))?)
        })?;
        self.wake.bump();
        Ok(v)
    }

    fn listen_changes(&self, since: i64, limit: u32) -> Result<Vec<ListenChange>> {
        let conn = self.shards[0].conn.lock();
        let mut stmt = conn.prepare_cached(sql::LISTEN_SINCE)?;
        let rows = stmt.query_map(params![since, limit.max(1)], |r| {
            Ok(ListenChange { version: r.get(0)?, key: r.get(1)?, value: r.get(2)?, at: r.get(3)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn listen_get(&self, key: &str) -> Result<Option<ListenChange>> {
        let conn = self.shards[0].conn.lock();
        let found = conn
            .prepare_cached(sql::LISTEN_GET)?
            .query_row([key], |r| {
                Ok(ListenChange { version: r.get(0)?, key: r.get(1)?, value: r.get(2)?, at: r.get(3)? })
            })
            .optional()?;
        Ok(found)
    }

    fn listen_head(&self) -> Result<i64> {
        let conn = self.shards[0].conn.lock();
        let head = conn.prepare_cached(sql::LISTEN_HEAD)?.query_row([], |r| r.get(0))?;
        Ok(head)
    }

    fn next_run_at(&self, queue: &str) -> Result<Option<i64>> {
        let mut best: Option<i64> = None;
        let now = self.clock.now_ms();
        for shard in &self.shards {
            let conn = shard.conn.lock();
            let at: Option<i64> =
                conn.prepare_cached(sql::NEXT_RUN_AT)?.query_row(params![queue, now], |r| r.get(0))?;
            best = match (best, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(best)
    }

    fn register_worker(&self, w: &WorkerInfo) -> Result<()> {
        let queues = serde_json::to_string(&w.queues).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let now = self.clock.now_ms();
        self.write(0, |tx| {
            tx.prepare_cached(sql::WORKER_UPSERT)?.execute(params![w.id, w.host, w.pid, now, queues])?;
            Ok(())
        })
    }

    fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let conn = self.shards[0].conn.lock();
        let mut stmt = conn.prepare_cached(sql::WORKERS)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let queues: String = r.get(5)?;
            out.push(WorkerInfo {
                id: r.get(0)?,
                host: r.get(1)?,
                pid: r.get(2)?,
                started_at: r.get(3)?,
                heartbeat_at: r.get(4)?,
                queues: serde_json::from_str(&queues).map_err(|e| Error::Corrupt(e.to_string()))?,
            });
        }
        Ok(out)
    }

    fn remove_worker(&self, id: &str) -> Result<bool> {
        self.write(0, |tx| Ok(tx.prepare_cached(sql::WORKER_DELETE)?.execute([id])? == 1))
    }

    fn set_capacity(&self, queue: &str, capacity: Option<u64>) -> Result<()> {
        if queue.is_empty() {
            return Err(Error::InvalidArgument("queue name must not be empty".into()));
        }
        let cap = capacity.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        self.write(0, |tx| {
            match cap {
                Some(c) => tx.prepare_cached(sql::CAPACITY_SET)?.execute(params![queue, c])?,
                None => tx.prepare_cached(sql::CAPACITY_DELETE)?.execute([queue])?,
            };
            Ok(())
        })?;
        // After the commit: a reader in between must not cache the old answer.
        *self.capacity_seen.lock() = None;
        Ok(())
    }

    fn capacity(&self, queue: &str) -> Result<Option<u64>> {
        let conn = self.shards[0].conn.lock();
        let cap: Option<i64> = conn.prepare_cached(sql::CAPACITY_GET)?.query_row([queue], |r| r.get(0)).optional()?;
        Ok(cap.map(|c| c.max(0) as u64))
    }

    fn set_function_limit(&self, limit: &FunctionLimit) -> Result<()> {
        limit.validate()?;
        let now = self.clock.now_ms();
        self.write(0, |tx| {
            if limit.max_running.is_none() && limit.rate_per_s.is_none() {
                tx.prepare_cached(sql::LIMIT_DELETE)?.execute([&limit.name])?;
            } else {
                tx.prepare_cached(sql::LIMIT_SET)?.execute(params![
                    limit.name,
                    limit.max_running,
                    limit.rate_per_s,
                    limit.burst,
                    now,
                    limit.effective_burst()
                ])?;
            }
            Ok(())
        })?;
        self.wake.bump();
        Ok(())
    }

    fn function_limits(&self) -> Result<Vec<FunctionLimit>> {
        let conn = self.shards[0].conn.lock();
        Ok(read_limits(&conn)?.into_iter().map(|l| l.limit).collect())
    }

    fn change_token(&self) -> Result<u64> {
        let generation = *self.wake.generation.lock();
        self.token_at(generation)
    }

    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let watching = self.shards.iter().any(|s| s.watch.is_some());
        // Armed before the first look at data_version (see DirWatch::arm).
        let armed = self.dir_watch.as_ref().map(|d| d.arm());
        let dir_watch = armed.as_ref().filter(|a| a.watching).and(self.dir_watch.as_ref());
        let mut fresh = armed.as_ref().is_some_and(|a| a.fresh);
        let mut generation = self.wake.generation.lock();
        loop {
            if self.token_at(*generation)? != token {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if !watching {
                // In memory: only this process writes, and it signals the condvar.
                self.wake.cv.wait_for(&mut generation, deadline - now);
                continue;
            }
            let Some(dir) = dir_watch else {
                // Other processes cannot signal the condvar: look at
                // data_version again after a short poll interval.
                self.wake.cv.wait_for(&mut generation, self.config.poll_interval.min(deadline - now));
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
                    self.wake.cv.notify_all();
                    parking_lot::MutexGuard::unlocked(&mut generation, || {
                        std::thread::sleep(Duration::from_micros(150));
                    });
                    self.wake.cv.notify_all();
                }
                Some(false) => {}
                None => {
                    self.wake.cv.wait_for(&mut generation, slice);
                }
            }
        }
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn describe(&self) -> String {
        format!("sqlite store {} ({} shard(s))", self.label, self.shards.len())
    }
}
