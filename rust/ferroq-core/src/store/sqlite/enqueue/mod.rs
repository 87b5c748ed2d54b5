//! Enqueue: validation, capacity checks, routing to shards, and the inserts
//! themselves: multi-row statements for batches, one statement for a single
//! send, and group commit for concurrent sends to one shard (`group.rs`).

pub(super) mod group;
pub(super) mod strict;

use super::tx::WriteTx;
use super::{read, schema, sql, SqliteStore};
use crate::error::{Error, Result};
use crate::store::{rules, Enqueued};
use crate::task::NewTask;
use rusqlite::{Connection, OptionalExtension, ToSql};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Batches at least this big write their shards in parallel threads.
const PARALLEL_ENQUEUE_MIN: usize = 2_000;

/// How long "no queue has a capacity" is trusted before it is read again
/// (another process may set one; this process's own changes apply at once).
const CAPACITY_RECHECK: Duration = Duration::from_millis(250);

/// Rows per multi-row insert (see `insert_tasks`).
const INSERT_ROWS: usize = 64;

/// The text of the `INSERT_ROWS`-row insert, built once.
fn insert_rows_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| sql::insert_task_rows(INSERT_ROWS, false))
}

/// The `INSERT_ROWS`-row insert of keyed tasks (`INSERT OR IGNORE`), built once.
fn insert_keyed_rows_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| sql::insert_task_rows(INSERT_ROWS, true))
}

/// What each row insert binds beside the task itself: its local id, its
/// backoff as text, and its payload's checksum (`rules::checksum`).
pub(super) struct RowExtras {
    local: i64,
    backoff: Option<String>,
    sum: i64,
}

impl RowExtras {
    pub(super) fn new(t: &NewTask, local: i64) -> Self {
        RowExtras { local, backoff: t.backoff.map(|b| b.encode()), sum: rules::checksum(&t.payload) }
    }
}

/// The values of `sql::INSERT_TASK` (and `INSERT_TASK_ALONE`) for task `t`
/// enqueued at `now`.
pub(super) fn insert_values<'a>(
    t: &'a NewTask,
    now: &'a i64,
    x: &'a RowExtras,
) -> [&'a dyn ToSql; sql::INSERT_TASK_PARAMS] {
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
        &x.backoff,
        &t.result_ttl_ms,
        &x.local,
        &t.requires,
        &x.sum,
    ]
}

/// The tasks (by index) each shard takes: a keyed task goes where its key
/// lives, the others round-robin.
pub(super) fn route(store: &SqliteStore, tasks: &[NewTask]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); store.shards.len()];
    for (i, t) in tasks.iter().enumerate() {
        let s = match &t.key {
            Some(k) => store.route_key(&t.queue, k),
            None => store.next_shard.fetch_add(1, Ordering::Relaxed) % store.shards.len(),
        };
        groups[s].push(i);
    }
    groups
}

/// [`Store::enqueue`](crate::store::Store::enqueue).
pub(super) fn enqueue(store: &SqliteStore, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
    for t in tasks {
        t.validate(store.config.max_payload)?;
    }
    store.check_capacity(tasks)?;
    let now = store.clock.now_ms();
    let groups = route(store, tasks);
    // Local ids for the batch, in input order (see the module doc); a
    // shard whose own sequence is ahead (another process, or another
    // thread's batch committed first) continues from there instead.
    let first_local = store.last_local.fetch_add(tasks.len() as i64, Ordering::Relaxed) + 1;
    let busy: Vec<usize> = (0..groups.len()).filter(|s| !groups[*s].is_empty()).collect();
    for &s in &busy {
        store.check_healthy(s)?;
    }
    let bytes: usize = tasks.iter().map(|t| t.payload.len()).sum();
    if let [s] = busy[..] {
        if bytes <= group::GROUP_MAX_BYTES {
            let out = store.enqueue_grouped(s, group::Pending::new(tasks.to_vec(), first_local, now))?;
            store.wake.bump();
            return Ok(out);
        }
    }
    let mut out = vec![Enqueued { id: 0, inserted: false }; tasks.len()];
    let write_shard = |s: usize| store.write(s, |tx| store.insert_tasks(tx, s, tasks, &groups[s], first_local, now));
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
        store.wake.bump();
    }
    Ok(out)
}

impl SqliteStore {
    /// Inserts `tasks[i]` for each `i` in `idxs` into shard `s` (within the
    /// caller's transaction); a task whose key exists stores nothing. Rows
    /// go in multi-row statements of `INSERT_ROWS` rows: a statement's
    /// fixed cost (opening a cursor on the table and each of its indexes) is
    /// a large share of a one-row insert. Keyed rows are inserted with `OR
    /// IGNORE` and only the rows the key index refused are looked up
    /// afterwards (a fresh batch looks nothing up); finished tasks are
    /// looked up by key first, only in a queue that has keyed ones.
    fn insert_tasks(
        &self,
        tx: &Connection,
        s: usize,
        tasks: &[NewTask],
        idxs: &[usize],
        first_local: i64,
        now: i64,
    ) -> Result<Vec<Enqueued>> {
        let mut last = schema::last_local_id(tx)?;
        let mut out = Vec::with_capacity(idxs.len());
        // Rows waiting for a full multi-row statement, with their place in
        // `out` and their claim rank.
        let mut rows: Vec<(usize, &NewTask, RowExtras, i64)> = Vec::with_capacity(INSERT_ROWS);
        let mut keyed: Vec<(usize, &NewTask, RowExtras, i64)> = Vec::with_capacity(INSERT_ROWS);
        // Per queue: whether any finished task of it has a key.
        let mut done_keys: Vec<(&str, bool)> = Vec::new();
        // Per queue: its aging step (read in this transaction, once).
        let mut agings: Vec<(&str, Option<i64>)> = Vec::new();
        for &i in idxs {
            let t = &tasks[i];
            let aging = match agings.iter().find(|(q, _)| *q == t.queue) {
                Some(&(_, a)) => a,
                None => {
                    let a: Option<Option<i64>> =
                        tx.prepare_cached(sql::AGING_GET)?.query_row([&t.queue], |r| r.get(0)).optional()?;
                    agings.push((&t.queue, a.flatten()));
                    a.flatten()
                }
            };
            if let Some(k) = &t.key {
                let any_done = match done_keys.iter().find(|(q, _)| *q == t.queue) {
                    Some(&(_, any)) => any,
                    None => {
                        let any: bool = tx.prepare_cached(sql::ANY_DONE_KEY)?.query_row([&t.queue], |r| r.get(0))?;
                        done_keys.push((&t.queue, any));
                        any
                    }
                };
                if any_done {
                    let existing: Option<i64> =
                        tx.prepare_cached(sql::FIND_KEY_DONE)?.query_row((&t.queue, k), |r| r.get(0)).optional()?;
                    if let Some(local) = existing {
                        out.push(Enqueued { id: self.global(s, local), inserted: false });
                        continue;
                    }
                }
            }
            let local = (first_local + i as i64).max(last + 1);
            last = local;
            out.push(Enqueued { id: self.global(s, local), inserted: true });
            let extras = RowExtras::new(t, local);
            let rank = rules::claim_rank(t.priority, t.run_at.unwrap_or(now), aging);
            let buf = if t.key.is_some() { &mut keyed } else { &mut rows };
            buf.push((out.len() - 1, t, extras, rank));
            if buf.len() == INSERT_ROWS {
                let values: Vec<&dyn ToSql> = buf
                    .iter()
                    .flat_map(|(_, t, x, rank)| {
                        insert_values(t, &now, x).into_iter().chain(std::iter::once(rank as &dyn ToSql))
                    })
                    .collect();
                if t.key.is_some() {
                    let stored = tx.prepare_cached(insert_keyed_rows_sql())?.execute(&values[..])?;
                    drop(values);
                    if stored < keyed.len() {
                        self.take_existing(tx, s, &keyed, &mut out)?;
                    }
                    keyed.clear();
                } else {
                    tx.prepare_cached(insert_rows_sql())?.execute(&values[..])?;
                    drop(values);
                    rows.clear();
                }
            }
        }
        for (_, t, x, _) in &rows {
            tx.prepare_cached(sql::INSERT_TASK)?.execute(&insert_values(t, &now, x)[..])?;
        }
        let mut stored = 0;
        for (_, t, x, _) in &keyed {
            stored += tx.prepare_cached(sql::INSERT_TASK_OR_IGNORE)?.execute(&insert_values(t, &now, x)[..])?;
        }
        if stored < keyed.len() {
            self.take_existing(tx, s, &keyed, &mut out)?;
        }
        self.last_local.fetch_max(last, Ordering::Relaxed);
        Ok(out)
    }

    /// After an `OR IGNORE` insert of `rows` stored fewer than all: each row
    /// not stored under its own id had its key taken (by a queued or
    /// running task, or by an earlier row of this batch), and gets that
    /// task's id instead.
    fn take_existing(
        &self,
        tx: &Connection,
        s: usize,
        rows: &[(usize, &NewTask, RowExtras, i64)],
        out: &mut [Enqueued],
    ) -> Result<()> {
        for (at, t, x, _) in rows {
            let stored: bool = tx.prepare_cached(sql::TASK_ID_EXISTS)?.query_row([x.local], |r| r.get(0))?;
            if stored {
                continue;
            }
            let existing: Option<i64> =
                tx.prepare_cached(sql::FIND_KEY_LIVE)?.query_row((&t.queue, &t.key), |r| r.get(0)).optional()?;
            let Some(local) = existing else {
                return Err(Error::Storage(format!("task {} was neither stored nor found by its key", x.local)));
            };
            out[*at] = Enqueued { id: self.global(s, local), inserted: false };
        }
        Ok(())
    }

    /// Inserts one task without a key as a statement of its own (see
    /// `sql::INSERT_TASK_ALONE`): the common single send, at the cost of
    /// one statement.
    fn insert_alone(&self, conn: &Connection, s: usize, t: &NewTask, first_local: i64, now: i64) -> Result<Enqueued> {
        let extras = RowExtras::new(t, first_local);
        conn.prepare_cached(sql::INSERT_TASK_ALONE)?.execute(&insert_values(t, &now, &extras)[..])?;
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
                return r.map_err(|e| self.shard_err(s, e));
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
                return r.map_err(|e| self.shard_err(s, e));
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
                    p.finish(Err(e.clone()));
                }
            }
        }
    }

    /// Refuses a batch that would take a capped queue over its capacity.
    /// Checked before writing; producers in other processes racing this one
    /// can overshoot by their own in-flight sends.
    pub(super) fn check_capacity(&self, tasks: &[NewTask]) -> Result<()> {
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
                    let any: i64 = self
                        .read(0, |conn| Ok(conn.prepare_cached(sql::CAPACITY_ANY)?.query_row([], |r| r.get(0))?))?;
                    *cached = Some((any > 0, now));
                    if any == 0 {
                        return Ok(());
                    }
                }
            }
        }
        let caps: Vec<(String, u64)> = self.read(0, |conn| {
            let mut queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
            queues.sort_unstable();
            queues.dedup();
            let mut caps = Vec::new();
            for q in queues {
                // A queue with options but no capacity has a row whose capacity is NULL.
                let cap: Option<Option<i64>> =
                    conn.prepare_cached(sql::CAPACITY_GET)?.query_row([q], |r| r.get(0)).optional()?;
                let cap = cap.flatten();
                if let Some(cap) = cap {
                    caps.push((q.to_string(), cap.max(0) as u64));
                }
            }
            Ok(caps)
        })?;
        for (queue, cap) in caps {
            let mut new = 0u64;
            for t in tasks.iter().filter(|t| t.queue == queue) {
                let exists = match &t.key {
                    Some(k) => read::get_by_key(self, &queue, std::slice::from_ref(k))?.pop().flatten().is_some(),
                    None => false,
                };
                new += u64::from(!exists);
            }
            if new > 0 && read::unfinished(self, &queue)? + new > cap {
                return Err(Error::QueueFull { queue, limit: cap });
            }
        }
        Ok(())
    }
}
