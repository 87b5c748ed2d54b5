//! The multi-machine backend: one PostgreSQL database (in a schema of the
//! user's choosing) shared by workers on any number of hosts.
//!
//! Behaviour matches the SQLite backend verb for verb (the conformance
//! suite runs on both). What differs is how it is achieved:
//!
//! * Claims are one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
//!   LOCKED)` in priority order, so concurrent claimers on any host never
//!   wait for each other or take the same task.
//! * Keys are unique per queue through `task_key`, across unfinished and
//!   finished tasks, also between concurrent transactions.
//! * Batches travel as arrays: one statement enqueues, completes, releases
//!   or heartbeats a whole batch.
//! * Time comes from the store's clock as a parameter, never from the
//!   server's `now()`, so every host agrees with its own leases and tests
//!   can drive a manual clock.
//! * Wake-ups come by LISTEN/NOTIFY (see `notify.rs`), or by polling.
//! * A connection broken by a server restart is replaced on the next call
//!   (see `pool.rs`); the call that met the break reports
//!   [`Error::Unavailable`].

pub mod config;
mod notify;
mod pool;
mod schema;
pub mod sql;

pub use config::PgConfig;

use super::{
    check_claim, check_lease, CancelParams, ClaimParams, CompleteParams, Enqueued, FailParams,
    FunctionLimit, HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ProgressParams,
    PurgeParams, QueueCount, RecoverParams, ReleaseParams, Retry, Store, WorkerInfo,
};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::task::{NewTask, Status, Task};
use notify::Wake;
use pool::{connection_lost, retryable, to_error, Db, Fail, Pool, R};
use postgres::{GenericClient, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a transaction that lost a deadlock or serialization check is
/// run again before the error is reported.
const TX_TRIES: u32 = 5;
/// How often a call whose connection broke is run again (when it may be).
const LOST_TRIES: u32 = 3;

/// The PostgreSQL backend.
pub struct PostgresStore {
    cfg: Arc<PgConfig>,
    pool: Pool,
    clock: Arc<dyn Clock>,
    wake: Arc<Wake>,
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

/// Parallel arrays for `MOVE_TO_DONE`.
#[derive(Default)]
struct Moves {
    ids: Vec<i64>,
    results: Vec<Option<Vec<u8>>>,
    errors: Vec<Option<String>>,
    workers: Vec<Option<String>>,
}

impl Moves {
    fn push(&mut self, id: i64, result: Option<Vec<u8>>, error: Option<String>, worker: Option<String>) {
        self.ids.push(id);
        self.results.push(result);
        self.errors.push(error);
        self.workers.push(worker);
    }
}

fn read_task(row: &Row, at: usize) -> R<Task> {
    let backoff: Option<String> = row.try_get(at + 22)?;
    let status: i16 = row.try_get(at + 5)?;
    let attempts: i32 = row.try_get(at + 7)?;
    let max_attempts: i32 = row.try_get(at + 8)?;
    Ok(Task {
        id: row.try_get(at)?,
        queue: row.try_get(at + 1)?,
        name: row.try_get(at + 2)?,
        payload: row.try_get(at + 3)?,
        priority: row.try_get(at + 4)?,
        status: Status::from_code(status.into())?,
        run_at: row.try_get(at + 6)?,
        attempts: u32::try_from(attempts).map_err(|_| Error::Corrupt(format!("attempts {attempts}")))?,
        max_attempts: u32::try_from(max_attempts)
            .map_err(|_| Error::Corrupt(format!("max_attempts {max_attempts}")))?,
        lease_until: row.try_get(at + 9)?,
        worker: row.try_get(at + 10)?,
        key: row.try_get(at + 11)?,
        batch: row.try_get(at + 12)?,
        progress: row.try_get(at + 13)?,
        result: row.try_get(at + 14)?,
        error: row.try_get(at + 15)?,
        created_at: row.try_get(at + 16)?,
        started_at: row.try_get(at + 17)?,
        finished_at: row.try_get(at + 18)?,
        expires_at: row.try_get(at + 19)?,
        metadata: row.try_get(at + 20)?,
        cancel_requested: row.try_get(at + 21)?,
        backoff: backoff.as_deref().map(Backoff::decode).transpose()?,
        result_ttl_ms: row.try_get(at + 23)?,
        requires: row.try_get(at + 25)?,
    })
}

fn read_tasks(rows: &[Row]) -> R<Vec<Task>> {
    rows.iter().map(|r| read_task(r, 0)).collect()
}

fn claim_order(a: &Task, b: &Task) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)).then(a.id.cmp(&b.id))
}

/// The statuses of `ids` as they are now.
fn statuses<C: GenericClient>(db: &mut Db<'_, C>, ids: &[i64]) -> R<HashMap<i64, Status>> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in db.query(sql::STATUS_OF, &[&ids])? {
        let code: i16 = r.try_get(1)?;
        out.insert(r.try_get(0)?, Status::from_code(code.into())?);
    }
    Ok(out)
}

/// Names the reason a guarded statement on task `id` changed nothing.
fn explain(found: Option<Status>, id: i64, worker: Option<&str>, guard: Guard, action: &'static str) -> Error {
    let Some(status) = found else { return Error::NotFound(format!("task {id}")) };
    match guard {
        Guard::Retryable => Error::InvalidTransition { id, status, action },
        _ if status.is_finished() => Error::AlreadyFinished { id, status },
        Guard::Held => Error::LeaseLost { id, worker: worker.unwrap_or("").to_string(), status },
        Guard::Unfinished => Error::InvalidTransition { id, status, action },
    }
}

/// Inserts the tasks at `idx` (one statement: `INSERT_TASK` for a single
/// unkeyed task, else `INSERT_TASKS` with arrays); returns their ids in
/// input order.
fn insert_rows<C: GenericClient>(
    db: &mut Db<'_, C>,
    tasks: &[NewTask],
    idx: &[usize],
    ids: Option<&[i64]>,
    now: i64,
    unless_capped: bool,
) -> R<Vec<i64>> {
    if let ([i], None) = (idx, ids) {
        let t = &tasks[*i];
        let backoff = t.backoff.map(|b| b.encode());
        let rows = db.query(
            sql::INSERT_TASK,
            &[
                &t.queue,
                &t.name,
                &t.payload,
                &t.priority,
                &t.run_at,
                &(t.max_attempts as i32),
                &t.batch,
                &t.expires_at,
                &t.metadata,
                &backoff,
                &t.result_ttl_ms,
                &now,
                &unless_capped,
                &t.requires,
            ],
        )?;
        return rows.iter().map(|r| Ok(r.try_get(0)?)).collect();
    }
    let ids: Vec<Option<i64>> = match ids {
        Some(ids) => ids.iter().map(|i| Some(*i)).collect(),
        None => vec![None; idx.len()],
    };
    let t = |i: &usize| &tasks[*i];
    let queue: Vec<&str> = idx.iter().map(|i| t(i).queue.as_str()).collect();
    let name: Vec<&str> = idx.iter().map(|i| t(i).name.as_str()).collect();
    let payload: Vec<&[u8]> = idx.iter().map(|i| t(i).payload.as_slice()).collect();
    let priority: Vec<i32> = idx.iter().map(|i| t(i).priority).collect();
    let run_at: Vec<Option<i64>> = idx.iter().map(|i| t(i).run_at).collect();
    let max_attempts: Vec<i32> = idx.iter().map(|i| t(i).max_attempts as i32).collect();
    let key: Vec<Option<&str>> = idx.iter().map(|i| t(i).key.as_deref()).collect();
    let batch: Vec<Option<&str>> = idx.iter().map(|i| t(i).batch.as_deref()).collect();
    let expires_at: Vec<Option<i64>> = idx.iter().map(|i| t(i).expires_at).collect();
    let metadata: Vec<Option<&str>> = idx.iter().map(|i| t(i).metadata.as_deref()).collect();
    let backoff: Vec<Option<String>> = idx.iter().map(|i| t(i).backoff.map(|b| b.encode())).collect();
    let result_ttl: Vec<Option<i64>> = idx.iter().map(|i| t(i).result_ttl_ms).collect();
    let requires: Vec<Option<&str>> = idx.iter().map(|i| t(i).requires.as_deref()).collect();
    let rows = db.query(
        sql::INSERT_TASKS,
        &[
            &ids,
            &queue,
            &name,
            &payload,
            &priority,
            &run_at,
            &max_attempts,
            &key,
            &batch,
            &expires_at,
            &metadata,
            &backoff,
            &result_ttl,
            &requires,
            &now,
            &unless_capped,
        ],
    )?;
    let mut out = rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<Vec<i64>, _>>()?;
    // Ids were drawn in array order, so ascending ids are in input order.
    out.sort_unstable();
    Ok(out)
}

impl PostgresStore {
    /// Connects, creates or checks the schema, and starts the listener
    /// (unless notifications are off).
    pub fn open(cfg: PgConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        if cfg.store.max_payload == 0 {
            return Err(Error::InvalidArgument("max_payload must be > 0".into()));
        }
        let cfg = Arc::new(cfg);
        let mut first = pool::connect(&cfg)?;
        schema::prepare(&mut first, &cfg).map_err(|f| to_error(&cfg, f))?;
        let wake = Arc::new(Wake::new());
        if cfg.notify {
            notify::spawn_listener(wake.clone(), cfg.clone())
                .map_err(|e| Error::Unavailable(format!("cannot start the LISTEN thread: {e}")))?;
        }
        Ok(PostgresStore { pool: Pool::new(cfg.clone(), first), cfg, clock, wake })
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

    /// True while a LISTEN connection delivers wake-ups (false when
    /// notifications are off or the listener is reconnecting).
    pub fn listening(&self) -> bool {
        self.wake.listening()
    }

    /// Runs `f` on a pooled connection outside a transaction (each
    /// statement commits on its own). With `replay`, a call whose
    /// connection broke mid-way is run again on a fresh one: only for
    /// reads and for writes guarded by the state they move from, which a
    /// second run leaves as the first did. Other writes report the break,
    /// since they may have been applied.
    fn run<T>(&self, replay: bool, mut f: impl FnMut(&mut Db<'_, postgres::Client>) -> R<T>) -> Result<T> {
        let mut tries = 0;
        let mut lost = 0;
        loop {
            tries += 1;
            let mut lease = self.pool.get()?;
            let out = lease.db().and_then(|mut db| f(&mut db));
            match out {
                Ok(v) => return Ok(v),
                Err(fail) => {
                    lease.check(&fail);
                    let again = match &fail {
                        Fail::Pg(e) if connection_lost(e) => {
                            lost += 1;
                            replay && lost <= LOST_TRIES
                        }
                        Fail::Pg(e) => retryable(e) && tries < TX_TRIES,
                        Fail::Core(_) => false,
                    };
                    if !again {
                        return Err(to_error(&self.cfg, fail));
                    }
                }
            }
        }
    }

    /// Runs `f` in one transaction, committed when it returns Ok. It runs
    /// again when it lost a deadlock or serialization check, when BEGIN
    /// itself failed on a dead connection (nothing happened yet), and,
    /// with `replay` (see [`Self::run`]), when the connection broke later.
    fn tx<T>(&self, replay: bool, mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> R<T>) -> Result<T> {
        let mut tries = 0;
        let mut lost = 0;
        loop {
            tries += 1;
            let mut lease = self.pool.get()?;
            let mut begun = false;
            match lease.transaction(&mut begun, &mut f) {
                Ok(v) => return Ok(v),
                Err(fail) => {
                    lease.check(&fail);
                    let again = match &fail {
                        Fail::Pg(e) if connection_lost(e) => {
                            lost += 1;
                            (!begun || replay) && lost <= LOST_TRIES
                        }
                        Fail::Pg(e) => retryable(e) && tries < TX_TRIES,
                        Fail::Core(_) => false,
                    };
                    if !again {
                        return Err(to_error(&self.cfg, fail));
                    }
                }
            }
        }
    }

    fn backoff_of(&self, text: Option<&str>) -> Backoff {
        text.and_then(|t| Backoff::decode(t).ok()).unwrap_or(self.cfg.store.default_backoff)
    }

    /// The first occurrence of each id keeps its place; later ones are
    /// reported as the id's status after the batch.
    fn first_of<P>(items: &[P], id_of: impl Fn(&P) -> i64) -> Vec<bool> {
        let mut seen = HashSet::new();
        items.iter().map(|x| seen.insert(id_of(x))).collect()
    }

    /// A batch of guarded moves done by one statement (`run_batch` gives
    /// the ids it moved): items not moved are explained.
    #[allow(clippy::too_many_arguments)]
    fn guarded_batch<P>(
        &self,
        items: &[P],
        id_of: impl Fn(&P) -> i64,
        worker_of: impl Fn(&P) -> Option<&str>,
        guard: Guard,
        action: &'static str,
        mut pre: impl FnMut(&P) -> Option<Error>,
        run_batch: impl Fn(&mut Db<'_, postgres::Client>, &[usize]) -> R<Vec<i64>>,
    ) -> Result<Vec<Result<()>>> {
        // Every batch statement here is guarded by the status it moves
        // from: running it again after a break changes nothing twice.
        let first = Self::first_of(items, &id_of);
        let mut out: Vec<Option<Result<()>>> = items.iter().map(|_| None).collect();
        let mut todo = Vec::new();
        for (i, x) in items.iter().enumerate() {
            if let Some(e) = pre(x) {
                out[i] = Some(Err(e));
            } else if first[i] {
                todo.push(i);
            }
        }
        let moved: HashSet<i64> = if todo.is_empty() {
            HashSet::new()
        } else {
            self.run(true, |db| run_batch(db, &todo))?.into_iter().collect()
        };
        if !moved.is_empty() {
            self.wake.bump();
        }
        for &i in &todo {
            if moved.contains(&id_of(&items[i])) {
                out[i] = Some(Ok(()));
            }
        }
        let unexplained: Vec<i64> =
            out.iter().zip(items).filter(|(o, _)| o.is_none()).map(|(_, x)| id_of(x)).collect();
        let found = if unexplained.is_empty() {
            HashMap::new()
        } else {
            self.run(true, |db| statuses(db, &unexplained))?
        };
        Ok(out
            .into_iter()
            .zip(items)
            .map(|(o, x)| {
                o.unwrap_or_else(|| {
                    let id = id_of(x);
                    Err(explain(found.get(&id).copied(), id, worker_of(x), guard, action))
                })
            })
            .collect())
    }

    /// A batch whose items each need their own statements, in one
    /// transaction; `f` gives each item's outcome.
    fn per_item<P, T>(
        &self,
        items: &[P],
        replay: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>, &P) -> R<Result<T>>,
    ) -> Result<Vec<Result<T>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.tx(replay, |db| items.iter().map(|x| f(db, x)).collect::<R<Vec<Result<T>>>>())?;
        self.wake.bump();
        Ok(out)
    }

    /// Enqueue with keys and/or capacities: one transaction that reserves
    /// keys (the unique index settles races with other hosts), checks
    /// capacities under a lock, then writes the rows.
    fn enqueue_checked(&self, tasks: &[NewTask], now: i64) -> Result<Vec<Enqueued>> {
        self.tx(false, |db| {
            let n = tasks.len();
            let mut ids: Vec<i64> = db
                .query(sql::NEXT_IDS, &[&(n as i32)])?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            ids.sort_unstable();
            if ids.len() != n {
                return Err(Fail::Core(Error::Storage(format!("asked for {n} ids, got {}", ids.len()))));
            }
            // Within the batch, the first task with a key wins it.
            let mut owner: HashMap<(&str, &str), usize> = HashMap::new();
            let mut dup_of: Vec<Option<usize>> = vec![None; n];
            let mut reserve: Vec<usize> = Vec::new();
            for (i, t) in tasks.iter().enumerate() {
                if let Some(k) = &t.key {
                    match owner.get(&(t.queue.as_str(), k.as_str())) {
                        Some(&first) => dup_of[i] = Some(first),
                        None => {
                            owner.insert((t.queue.as_str(), k.as_str()), i);
                            reserve.push(i);
                        }
                    }
                }
            }
            reserve.sort_by(|a, b| (&tasks[*a].queue, &tasks[*a].key).cmp(&(&tasks[*b].queue, &tasks[*b].key)));
            let mut existing: HashMap<usize, i64> = HashMap::new();
            if !reserve.is_empty() {
                let q: Vec<&str> = reserve.iter().map(|i| tasks[*i].queue.as_str()).collect();
                let k: Vec<&str> = reserve.iter().map(|i| tasks[*i].key.as_deref().unwrap_or("")).collect();
                let rid: Vec<i64> = reserve.iter().map(|i| ids[*i]).collect();
                let mut won: HashSet<(String, String)> = HashSet::new();
                for r in db.query(sql::RESERVE_KEYS, &[&q, &k, &rid])? {
                    won.insert((r.try_get(0)?, r.try_get(1)?));
                }
                let lost: Vec<usize> = reserve
                    .iter()
                    .copied()
                    .filter(|i| {
                        let t = &tasks[*i];
                        !won.contains(&(t.queue.clone(), t.key.clone().unwrap_or_default()))
                    })
                    .collect();
                if !lost.is_empty() {
                    let q: Vec<&str> = lost.iter().map(|i| tasks[*i].queue.as_str()).collect();
                    let k: Vec<&str> = lost.iter().map(|i| tasks[*i].key.as_deref().unwrap_or("")).collect();
                    let mut owners: HashMap<(String, String), i64> = HashMap::new();
                    for r in db.query(sql::KEY_OWNERS, &[&q, &k])? {
                        owners.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
                    }
                    for i in lost {
                        let t = &tasks[i];
                        let id = owners.get(&(t.queue.clone(), t.key.clone().unwrap_or_default())).copied().ok_or_else(
                            || Fail::Core(Error::Storage(format!("key {:?} is taken but has no owner", t.key))),
                        )?;
                        existing.insert(i, id);
                    }
                }
            }
            let new: Vec<usize> = (0..n).filter(|i| dup_of[*i].is_none() && !existing.contains_key(i)).collect();
            // Capacities, locked so that concurrent sends are counted one
            // after the other.
            let mut queues: Vec<&str> = new.iter().map(|i| tasks[*i].queue.as_str()).collect();
            queues.sort_unstable();
            queues.dedup();
            if !queues.is_empty() {
                let caps = db.query(sql::CAPACITIES_FOR_UPDATE, &[&queues])?;
                if !caps.is_empty() {
                    let capped: Vec<String> = caps.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?;
                    let mut unfinished: HashMap<String, i64> = HashMap::new();
                    for r in db.query(sql::COUNT_UNFINISHED, &[&capped])? {
                        unfinished.insert(r.try_get(0)?, r.try_get(1)?);
                    }
                    for r in &caps {
                        let queue: String = r.try_get(0)?;
                        let Some(cap) = r.try_get::<_, Option<i64>>(1)? else { continue };
                        let adding = new.iter().filter(|i| tasks[**i].queue == queue).count() as i64;
                        let have = unfinished.get(&queue).copied().unwrap_or(0);
                        if adding > 0 && have + adding > cap {
                            return Err(Fail::Core(Error::QueueFull { queue, limit: cap.max(0) as u64 }));
                        }
                    }
                }
            }
            if !new.is_empty() {
                let new_ids: Vec<i64> = new.iter().map(|i| ids[*i]).collect();
                insert_rows(db, tasks, &new, Some(&new_ids), now, false)?;
            }
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let e = match (dup_of[i], existing.get(&i)) {
                    (_, Some(id)) => Enqueued { id: *id, inserted: false },
                    (Some(first), _) => Enqueued {
                        id: existing.get(&first).copied().unwrap_or(ids[first]),
                        inserted: false,
                    },
                    (None, None) => Enqueued { id: ids[i], inserted: true },
                };
                out.push(e);
            }
            Ok(out)
        })
    }

    /// A claim while function limits are in force: the limit rows are
    /// locked for the transaction, which serialises such claims
    /// store-wide, so running counts and rate buckets are exact across
    /// hosts.
    fn claim_limited(&self, p: &ClaimParams, resources: &str) -> Result<Vec<Task>> {
        self.tx(false, |db| {
            let rows = db.query(sql::LIMITS_FOR_UPDATE, &[])?;
            // Read the clock under the lock: a claimer that read it earlier
            // but got the lock later would move refilled_at backwards, and
            // the next claim would refill the same interval twice.
            let now = self.clock.now_ms();
            let mut limits = Vec::new();
            for r in rows {
                let max_running: Option<i64> = r.try_get(1)?;
                limits.push(super::StoredLimit {
                    limit: FunctionLimit {
                        name: r.try_get(0)?,
                        max_running: max_running.map(|m| m.clamp(0, u32::MAX as i64) as u32),
                        rate_per_s: r.try_get(2)?,
                        burst: r.try_get(3)?,
                    },
                    tokens: r.try_get(4)?,
                    refilled_at: r.try_get(5)?,
                });
            }
            let names: Vec<&str> = limits.iter().map(|l| l.limit.name.as_str()).collect();
            let mut running: HashMap<String, u64> = HashMap::new();
            for r in db.query(sql::RUNNING_BY_NAME, &[&names])? {
                running.insert(r.try_get(0)?, r.try_get::<_, i64>(1)?.max(0) as u64);
            }
            let (allowance, levels) = super::allowances(&limits, &running, now);
            let excluded: Vec<&str> = allowance.iter().filter(|(_, a)| **a == 0).map(|(n, _)| n.as_str()).collect();
            let mut chosen = Vec::new();
            let mut used: HashMap<&str, u64> = HashMap::new();
            let rows = db.query(
                sql::CLAIM_CANDIDATES,
                &[&p.queue, &now, &(p.limit as i64), &resources, &excluded],
            )?;
            for r in &rows {
                let id: i64 = r.try_get(0)?;
                let name: &str = r.try_get(1)?;
                match allowance.get(name) {
                    Some(allow) => {
                        let u = used.entry(name).or_default();
                        if *u < *allow {
                            *u += 1;
                            chosen.push(id);
                        }
                    }
                    None => chosen.push(id),
                }
            }
            let mut tasks = if chosen.is_empty() {
                Vec::new()
            } else {
                read_tasks(&db.query(sql::CLAIM_IDS, &[&chosen, &now, &p.worker, &(now + p.lease_ms)])?)?
            };
            for l in &limits {
                let Some(level) = levels.get(&l.limit.name) else { continue };
                let spent = used.get(l.limit.name.as_str()).copied().unwrap_or(0) as f64;
                let at = now.max(l.refilled_at);
                db.execute(sql::LIMIT_TOKENS, &[&l.limit.name, &(level - spent), &at])?;
            }
            tasks.sort_by(claim_order);
            Ok(tasks)
        })
    }

    /// The change counter triggers bump (for polling).
    fn counter(&self) -> Result<u64> {
        self.run(true, |db| {
            let v: i64 = db.query(sql::CHANGE_COUNTER, &[])?.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
            Ok(v as u64)
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.wake.stop();
    }
}

impl Store for PostgresStore {
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        for t in tasks {
            t.validate(self.cfg.store.max_payload)?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let out = if tasks.iter().all(|t| t.key.is_none()) {
            // The common case: one statement, no transaction. It inserts
            // nothing when some queue has a capacity; then the checked path runs.
            let all: Vec<usize> = (0..tasks.len()).collect();
            let ids = self.run(false, |db| insert_rows(db, tasks, &all, None, now, true))?;
            if ids.len() == tasks.len() {
                ids.into_iter().map(|id| Enqueued { id, inserted: true }).collect()
            } else {
                self.enqueue_checked(tasks, now)?
            }
        } else {
            self.enqueue_checked(tasks, now)?
        };
        self.wake.bump();
        Ok(out)
    }

    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>> {
        check_claim(p)?;
        let now = self.clock.now_ms();
        let resources = p.resources.as_deref().unwrap_or("{}");
        let rows = self.run(false, |db| {
            db.query(sql::CLAIM, &[&p.queue, &now, &(p.limit as i64), &p.worker, &(now + p.lease_ms), &resources])
        })?;
        let limited = match rows.first() {
            Some(r) => r.try_get::<_, bool>(0).map_err(|e| to_error(&self.cfg, Fail::Pg(e)))?,
            None => false,
        };
        if limited {
            return self.claim_limited(p, resources);
        }
        let mut tasks = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Option<i64> = r.try_get(1).map_err(|e| to_error(&self.cfg, Fail::Pg(e)))?;
            if id.is_some() {
                tasks.push(read_task(r, 1).map_err(|f| to_error(&self.cfg, f))?);
            }
        }
        tasks.sort_by(claim_order);
        Ok(tasks)
    }

    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
        check_lease(p.lease_ms)?;
        let until = self.clock.now_ms() + p.lease_ms;
        let held: HashMap<i64, bool> = if p.ids.is_empty() {
            HashMap::new()
        } else {
            self.run(true, |db| {
                db.query(sql::HEARTBEAT, &[&p.ids, &p.worker, &until])?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })?
        };
        Ok(p.ids
            .iter()
            .map(|id| match held.get(id) {
                Some(cancel) => HeartbeatOutcome { id: *id, held: true, cancel_requested: *cancel },
                None => HeartbeatOutcome { id: *id, held: false, cancel_requested: false },
            })
            .collect())
    }

    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
        self.per_item(p, true, |db, x| {
            if !(0.0..=1.0).contains(&x.progress) {
                return Ok(Err(Error::InvalidArgument(format!(
                    "progress must be within 0..=1, got {}",
                    x.progress
                ))));
            }
            if db.execute(sql::PROGRESS, &[&x.id, &x.worker, &x.progress])? == 1 {
                return Ok(Ok(()));
            }
            let found = statuses(db, &[x.id])?.get(&x.id).copied();
            Ok(Err(explain(found, x.id, Some(&x.worker), Guard::Held, "report progress of")))
        })
    }

    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
        let now = self.clock.now_ms();
        let max = self.cfg.store.max_payload;
        let retention = self.cfg.store.retention_ms;
        self.guarded_batch(
            p,
            |x| x.id,
            |x| Some(x.worker.as_str()),
            Guard::Held,
            "complete",
            |x| {
                (x.result.len() > max).then_some(Error::PayloadTooLarge { what: "result", size: x.result.len(), limit: max })
            },
            |db, idx| {
                let mut m = Moves::default();
                for &i in idx {
                    m.push(p[i].id, Some(p[i].result.clone()), None, Some(p[i].worker.clone()));
                }
                let done = Status::Done.code() as i16;
                let running = Status::Running.code() as i16;
                db.query(sql::MOVE_TO_DONE, &[&m.ids, &m.results, &m.errors, &m.workers, &done, &running, &now, &retention])?
                    .iter()
                    .map(|r| Ok(r.try_get(0)?))
                    .collect()
            },
        )
    }

    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
        let now = self.clock.now_ms();
        let retention = self.cfg.store.retention_ms;
        self.per_item(p, false, |db, x| {
            let Some(row) = db.query_opt(sql::FAIL_LOOKUP, &[&x.id, &x.worker])? else {
                let found = statuses(db, &[x.id])?.get(&x.id).copied();
                return Ok(Err(explain(found, x.id, Some(&x.worker), Guard::Held, "fail")));
            };
            let attempts = row.try_get::<_, i32>(0)?.max(0) as u32;
            let max_attempts = row.try_get::<_, i32>(1)?.max(0) as u32;
            let backoff: Option<String> = row.try_get(2)?;
            let delay = match x.retry {
                _ if attempts >= max_attempts => None,
                Retry::Never => None,
                Retry::After(ms) => Some(ms.max(0)),
                Retry::Backoff => Some(self.backoff_of(backoff.as_deref()).delay_ms(attempts)),
            };
            if let Some(d) = delay {
                db.execute(sql::REQUEUE, &[&vec![x.id], &vec![x.worker.as_str()], &vec![now + d], &vec![x.error.as_str()]])?;
                return Ok(Ok(Status::Queued));
            }
            let failed = Status::Failed.code() as i16;
            let running = Status::Running.code() as i16;
            let none: Vec<Option<Vec<u8>>> = vec![None];
            db.execute(
                sql::MOVE_TO_DONE,
                &[&vec![x.id], &none, &vec![Some(x.error.as_str())], &vec![Some(x.worker.as_str())], &failed, &running, &now, &retention],
            )?;
            Ok(Ok(Status::Failed))
        })
    }

    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
        let now = self.clock.now_ms();
        let retention = self.cfg.store.retention_ms;
        let cancelled = Status::Cancelled.code() as i16;
        self.per_item(p, false, |db, x| {
            let why = vec![Some("cancelled")];
            let none: Vec<Option<Vec<u8>>> = vec![None];
            let ids = vec![x.id];
            let from = |s: Status| s.code() as i16;
            if let Some(w) = &x.worker {
                let workers = vec![Some(w.as_str())];
                let moved = db.query(
                    sql::MOVE_TO_DONE,
                    &[&ids, &none, &why, &workers, &cancelled, &from(Status::Running), &now, &retention],
                )?;
                if !moved.is_empty() {
                    return Ok(Ok(Status::Cancelled));
                }
                let found = statuses(db, &ids)?.get(&x.id).copied();
                return Ok(Err(explain(found, x.id, Some(w), Guard::Held, "cancel")));
            }
            let anyone: Vec<Option<&str>> = vec![None];
            let moved = db.query(
                sql::MOVE_TO_DONE,
                &[&ids, &none, &why, &anyone, &cancelled, &from(Status::Queued), &now, &retention],
            )?;
            if !moved.is_empty() {
                return Ok(Ok(Status::Cancelled));
            }
            if db.execute(sql::FLAG_CANCEL, &[&x.id])? == 1 {
                return Ok(Ok(Status::Running));
            }
            let found = statuses(db, &ids)?.get(&x.id).copied();
            Ok(Err(explain(found, x.id, None, Guard::Unfinished, "cancel")))
        })
    }

    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
        self.guarded_batch(
            p,
            |x| x.id,
            |x| Some(x.worker.as_str()),
            Guard::Held,
            "release",
            |_| None,
            |db, idx| {
                let ids: Vec<i64> = idx.iter().map(|i| p[*i].id).collect();
                let workers: Vec<&str> = idx.iter().map(|i| p[*i].worker.as_str()).collect();
                db.query(sql::RELEASE, &[&ids, &workers])?.iter().map(|r| Ok(r.try_get(0)?)).collect()
            },
        )
    }

    fn retry(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        let now = self.clock.now_ms();
        self.guarded_batch(
            ids,
            |id| *id,
            |_| None,
            Guard::Retryable,
            "retry",
            |_| None,
            |db, idx| {
                let todo: Vec<i64> = idx.iter().map(|i| ids[*i]).collect();
                db.query(sql::RETRY_FROM_DONE, &[&todo, &now])?.iter().map(|r| Ok(r.try_get(0)?)).collect()
            },
        )
    }

    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
        let now = self.clock.now_ms();
        let retention = self.cfg.store.retention_ms;
        let out = self.tx(true, |db| {
            let mut requeue: (Vec<i64>, Vec<String>, Vec<i64>, Vec<String>) = Default::default();
            let mut fail = Moves::default();
            let mut out = Vec::new();
            for r in db.query(sql::EXPIRED_LEASES, &[&now, &p.worker])? {
                let id: i64 = r.try_get(0)?;
                let attempts: i32 = r.try_get(1)?;
                let max_attempts: i32 = r.try_get(2)?;
                let worker: Option<String> = r.try_get(3)?;
                let worker = worker.unwrap_or_default();
                let run_at: i64 = r.try_get(4)?;
                let why = format!("lease lost: worker {worker} stopped before finishing attempt {attempts}");
                // A crash is not the task's failure (see RECOVERY_MIN_ATTEMPTS).
                if attempts < max_attempts.max(super::RECOVERY_MIN_ATTEMPTS as i32) {
                    requeue.0.push(id);
                    requeue.1.push(worker);
                    // Back in its old place in the queue (its original
                    // run_at), not behind everything sent since.
                    requeue.2.push(run_at.min(now));
                    requeue.3.push(why);
                    out.push((id, Status::Queued));
                } else {
                    fail.push(id, None, Some(why), None);
                    out.push((id, Status::Failed));
                }
            }
            if !requeue.0.is_empty() {
                db.execute(sql::REQUEUE, &[&requeue.0, &requeue.1, &requeue.2, &requeue.3])?;
            }
            if !fail.ids.is_empty() {
                let failed = Status::Failed.code() as i16;
                let running = Status::Running.code() as i16;
                db.execute(
                    sql::MOVE_TO_DONE,
                    &[&fail.ids, &fail.results, &fail.errors, &fail.workers, &failed, &running, &now, &retention],
                )?;
            }
            Ok(out)
        })?;
        if !out.is_empty() {
            self.wake.bump();
        }
        Ok(out)
    }

    fn expire(&self) -> Result<Vec<i64>> {
        let now = self.clock.now_ms();
        let retention = self.cfg.store.retention_ms;
        let mut out = self.tx(true, |db| {
            let mut m = Moves::default();
            for r in db.query(sql::PAST_DEADLINE, &[&now])? {
                m.push(r.try_get(0)?, None, Some("deadline passed before the task started".into()), None);
            }
            if m.ids.is_empty() {
                return Ok(Vec::new());
            }
            let expired = Status::Expired.code() as i16;
            let queued = Status::Queued.code() as i16;
            db.query(sql::MOVE_TO_DONE, &[&m.ids, &m.results, &m.errors, &m.workers, &expired, &queued, &now, &retention])?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect::<R<Vec<i64>>>()
        })?;
        out.sort_unstable();
        if !out.is_empty() {
            self.wake.bump();
        }
        Ok(out)
    }

    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: HashMap<i64, Task> = self.run(true, |db| {
            Ok(read_tasks(&db.query(sql::GET, &[&ids])?)?.into_iter().map(|t| (t.id, t)).collect())
        })?;
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    fn get_by_key(&self, queue: &str, keys: &[String]) -> Result<Vec<Option<Task>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found: HashMap<String, Task> = self.run(true, |db| {
            Ok(read_tasks(&db.query(sql::GET_BY_KEY, &[&queue, &keys])?)?
                .into_iter()
                .filter_map(|t| t.key.clone().map(|k| (k, t)))
                .collect())
        })?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn list(&self, p: &ListParams) -> Result<Vec<Task>> {
        if !(1..=100_000).contains(&p.limit) {
            return Err(Error::InvalidArgument(format!("list limit {} is outside 1..=100000", p.limit)));
        }
        let (active, done) = match p.status {
            None => (true, true),
            Some(s) => (!s.is_finished(), s.is_finished()),
        };
        let status = p.status.map(|s| s.code() as i16);
        self.run(true, |db| {
            read_tasks(&db.query(
                sql::LIST,
                &[&p.queue, &status, &p.batch, &p.after_id, &(p.limit as i64), &active, &done],
            )?)
        })
    }

    fn counts(&self) -> Result<Vec<QueueCount>> {
        let rows = self.run(true, |db| {
            db.query(sql::COUNTS, &[])?
                .iter()
                .map(|r| {
                    let code: i16 = r.try_get(1)?;
                    Ok((r.try_get::<_, String>(0)?, Status::from_code(code.into())?, r.try_get::<_, i64>(2)?))
                })
                .collect::<R<Vec<_>>>()
        })?;
        let mut sums: BTreeMap<(String, Status), u64> = BTreeMap::new();
        for (queue, status, n) in rows {
            *sums.entry((queue, status)).or_default() += n.max(0) as u64;
        }
        Ok(sums.into_iter().map(|((queue, status), count)| QueueCount { queue, status, count }).collect())
    }

    fn unfinished(&self, queue: &str) -> Result<u64> {
        self.run(true, |db| {
            let rows = db.query(sql::COUNT_UNFINISHED, &[&vec![queue]])?;
            Ok(rows.first().map(|r| r.try_get::<_, i64>(1)).transpose()?.unwrap_or(0).max(0) as u64)
        })
    }

    fn purge(&self, p: &PurgeParams) -> Result<u64> {
        let now = self.clock.now_ms();
        let retention = self.cfg.store.retention_ms;
        self.tx(true, |db| {
            let n: i64 = db.query(sql::PURGE, &[&now, &p.finished_before])?.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
            if let Some(r) = retention {
                db.execute(sql::LISTEN_PRUNE, &[&(now - r)])?;
            }
            Ok(n.max(0) as u64)
        })
    }

    fn listen_set(&self, key: &str, value: &[u8]) -> Result<i64> {
        if key.is_empty() || key.len() > 1_000 {
            return Err(Error::InvalidArgument("listen key must be 1..=1000 bytes".into()));
        }
        let max = self.cfg.store.max_payload;
        if value.len() > max {
            return Err(Error::PayloadTooLarge { what: "listen value", size: value.len(), limit: max });
        }
        let now = self.clock.now_ms();
        let v = self.tx(false, |db| {
            db.execute(sql::LISTEN_LOCK, &[])?;
            let row = db.query(sql::LISTEN_SET, &[&key, &value, &now])?;
            Ok(row.first().map(|r| r.try_get::<_, i64>(0)).transpose()?.unwrap_or(0))
        })?;
        self.wake.bump();
        Ok(v)
    }

    fn listen_changes(&self, since: i64, limit: u32) -> Result<Vec<ListenChange>> {
        let limit = i64::from(limit.max(1));
        self.run(true, |db| {
            db.query(sql::LISTEN_SINCE, &[&since, &limit])?
                .iter()
                .map(|r| Ok(ListenChange { version: r.try_get(0)?, key: r.try_get(1)?, value: r.try_get(2)?, at: r.try_get(3)? }))
                .collect()
        })
    }

    fn listen_get(&self, key: &str) -> Result<Option<ListenChange>> {
        self.run(true, |db| {
            db.query_opt(sql::LISTEN_GET, &[&key])?
                .map(|r| Ok(ListenChange { version: r.try_get(0)?, key: r.try_get(1)?, value: r.try_get(2)?, at: r.try_get(3)? }))
                .transpose()
        })
    }

    fn listen_head(&self) -> Result<i64> {
        self.run(true, |db| Ok(db.query(sql::LISTEN_HEAD, &[])?.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0)))
    }

    fn next_run_at(&self, queue: &str) -> Result<Option<i64>> {
        let now = self.clock.now_ms();
        self.run(true, |db| Ok(db.query(sql::NEXT_RUN_AT, &[&queue, &now])?.first().map(|r| r.try_get(0)).transpose()?.flatten()))
    }

    fn register_worker(&self, w: &WorkerInfo) -> Result<()> {
        let queues = serde_json::to_string(&w.queues).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let now = self.clock.now_ms();
        let pid = i64::from(w.pid);
        self.run(true, |db| {
            db.execute(sql::WORKER_UPSERT, &[&w.id, &w.host, &pid, &now, &queues])?;
            Ok(())
        })
    }

    fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.run(true, |db| {
            db.query(sql::WORKERS, &[])?
                .iter()
                .map(|r| {
                    let queues: String = r.try_get(5)?;
                    let pid: i64 = r.try_get(2)?;
                    Ok(WorkerInfo {
                        id: r.try_get(0)?,
                        host: r.try_get(1)?,
                        pid: u32::try_from(pid).map_err(|_| Error::Corrupt(format!("worker pid {pid}")))?,
                        started_at: r.try_get(3)?,
                        heartbeat_at: r.try_get(4)?,
                        queues: serde_json::from_str(&queues).map_err(|e| Error::Corrupt(e.to_string()))?,
                    })
                })
                .collect()
        })
    }

    fn remove_worker(&self, id: &str) -> Result<bool> {
        self.run(true, |db| Ok(db.execute(sql::WORKER_DELETE, &[&id])? == 1))
    }

    fn set_capacity(&self, queue: &str, capacity: Option<u64>) -> Result<()> {
        if queue.is_empty() {
            return Err(Error::InvalidArgument("queue name must not be empty".into()));
        }
        let cap = capacity.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        self.run(true, |db| {
            match cap {
                Some(c) => db.execute(sql::CAPACITY_SET, &[&queue, &c])?,
                None => db.execute(sql::CAPACITY_DELETE, &[&queue])?,
            };
            Ok(())
        })
    }

    fn capacity(&self, queue: &str) -> Result<Option<u64>> {
        self.run(true, |db| {
            let cap: Option<i64> = db.query_opt(sql::CAPACITY_GET, &[&queue])?.map(|r| r.try_get(0)).transpose()?.flatten();
            Ok(cap.map(|c| c.max(0) as u64))
        })
    }

    fn set_function_limit(&self, limit: &FunctionLimit) -> Result<()> {
        limit.validate()?;
        let now = self.clock.now_ms();
        let max_running = limit.max_running.map(i64::from);
        self.run(true, |db| {
            if limit.max_running.is_none() && limit.rate_per_s.is_none() {
                db.execute(sql::LIMIT_DELETE, &[&limit.name])?;
            } else {
                db.execute(
                    sql::LIMIT_SET,
                    &[&limit.name, &max_running, &limit.rate_per_s, &limit.burst, &now, &limit.effective_burst()],
                )?;
            }
            Ok(())
        })?;
        self.wake.bump();
        Ok(())
    }

    fn function_limits(&self) -> Result<Vec<FunctionLimit>> {
        self.run(true, |db| {
            db.query(sql::LIMITS, &[])?
                .iter()
                .map(|r| {
                    let max_running: Option<i64> = r.try_get(1)?;
                    Ok(FunctionLimit {
                        name: r.try_get(0)?,
                        max_running: max_running.map(|m| m.clamp(0, u32::MAX as i64) as u32),
                        rate_per_s: r.try_get(2)?,
                        burst: r.try_get(3)?,
                    })
                })
                .collect()
        })
    }

    fn change_token(&self) -> Result<u64> {
        let generation = *self.wake.generation.lock();
        if self.wake.listening() {
            return Ok(generation);
        }
        Ok(generation.wrapping_add(self.counter()?.wrapping_mul(1 << 20)))
    }

    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let listening = self.wake.listening();
            if !listening && self.change_token()? != token {
                return Ok(true);
            }
            let mut generation = self.wake.generation.lock();
            if listening && *generation != token {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Listening, a notification or a local write wakes us; polling,
            // look at the counter again after a poll interval.
            let slice = if listening { deadline - now } else { self.cfg.poll_interval.min(deadline - now) };
            self.wake.cv.wait_for(&mut generation, slice);
        }
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn describe(&self) -> String {
        format!(
            "postgresql store {} schema {} (pool {}, {})",
            self.cfg.redacted(),
            self.cfg.schema,
            self.cfg.pool_size,
            if self.cfg.notify { "LISTEN/NOTIFY" } else { "polling" }
        )
    }
}
