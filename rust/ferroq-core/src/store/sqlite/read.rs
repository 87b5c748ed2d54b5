//! Reads: tasks by id, by key and by page, counts, and the next run time.
//! Reads take a shard's connection without a transaction.

use super::{sql, SqliteStore};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::store::rules::{self, TaskCol as C};
use crate::store::{ListParams, QueueCount};
use crate::task::{Status, Task};
use rusqlite::{params, Connection, Row};
use std::collections::BTreeMap;

/// Where a task row's payload checksum is (after the shared columns; see `sql::task_row`).
const PAYLOAD_SUM: usize = C::Requires.at(1);
/// Where a task row's result checksum is.
const RESULT_SUM: usize = C::Requires.at(2);

/// A task row that could not be read: the task's id and why, for the
/// caller to report (`get`) or to settle (`claim`).
pub(super) struct DamagedRow {
    /// The task id.
    pub id: i64,
    /// The error naming the file and the task.
    pub error: Error,
}

impl SqliteStore {
    /// A task from a row of `sql::task_row`, found in `shard`. A row that
    /// does not decode (text that is not UTF-8, an unknown status) or whose
    /// payload or result does not match its checksum is damage, reported
    /// as [`Error::Corrupt`] naming the shard file and the task.
    fn read_task(&self, row: &Row, shard: usize) -> std::result::Result<Task, DamagedRow> {
        let label = &self.shards[shard].label;
        let id = match row.get::<_, i64>(C::Id.at(0)) {
            Ok(local) => self.global(shard, local),
            Err(e) => return Err(DamagedRow { id: 0, error: rules::damaged_file(label, &format!("a task id: {e}")) }),
        };
        let damaged = |what: String| DamagedRow { id, error: rules::damaged_task(label, id, &what) };
        let task = self.decode_task(row, id).map_err(|e| {
            damaged(match e {
                Error::Storage(m) | Error::Corrupt(m) | Error::InvalidArgument(m) => m,
                other => other.to_string(),
            })
        })?;
        let payload_sum: Option<i64> = row.get(PAYLOAD_SUM).map_err(|e| damaged(e.to_string()))?;
        let result_sum: Option<i64> = row.get(RESULT_SUM).map_err(|e| damaged(e.to_string()))?;
        if !rules::checksum_matches(&task.payload, payload_sum) {
            return Err(damaged("its payload does not match its checksum".into()));
        }
        let result_ok = match &task.result {
            Some(r) => rules::checksum_matches(r, result_sum),
            None => true,
        };
        if !result_ok {
            return Err(damaged("its result does not match its checksum".into()));
        }
        Ok(task)
    }

    /// The columns of a task row as a [`Task`] with id `id`.
    fn decode_task(&self, row: &Row, id: i64) -> Result<Task> {
        let at = |c: C| c.at(0);
        let backoff: Option<String> = row.get(at(C::Backoff))?;
        Ok(Task {
            id,
            queue: row.get(at(C::Queue))?,
            name: row.get(at(C::Name))?,
            payload: row.get(at(C::Payload))?,
            priority: row.get(at(C::Priority))?,
            status: Status::from_code(row.get(at(C::Status))?)?,
            run_at: row.get(at(C::RunAt))?,
            attempts: row.get(at(C::Attempts))?,
            max_attempts: row.get(at(C::MaxAttempts))?,
            lease_until: row.get(at(C::LeaseUntil))?,
            worker: row.get(at(C::Worker))?,
            key: row.get(at(C::Key))?,
            batch: row.get(at(C::Batch))?,
            progress: row.get(at(C::Progress))?,
            result: row.get(at(C::Result))?,
            error: row.get(at(C::Error))?,
            created_at: row.get(at(C::CreatedAt))?,
            started_at: row.get(at(C::StartedAt))?,
            finished_at: row.get(at(C::FinishedAt))?,
            expires_at: row.get(at(C::ExpiresAt))?,
            metadata: row.get(at(C::Metadata))?,
            cancel_requested: row.get::<_, i64>(at(C::CancelRequested))? != 0,
            backoff: backoff.as_deref().map(Backoff::decode).transpose()?,
            result_ttl_ms: row.get(at(C::ResultTtl))?,
            requires: row.get(at(C::Requires))?,
        })
    }

    /// Runs a statement that returns task rows of `shard`; the first
    /// damaged row fails the read.
    pub(super) fn query_tasks<P: rusqlite::Params>(
        &self,
        conn: &Connection,
        shard: usize,
        sql: &str,
        p: P,
    ) -> Result<Vec<Task>> {
        self.query_rows(conn, shard, sql, p)?.into_iter().map(|r| r.map_err(|d| d.error)).collect()
    }

    /// Runs a statement that returns task rows of `shard`, each read or
    /// reported damaged on its own.
    pub(super) fn query_rows<P: rusqlite::Params>(
        &self,
        conn: &Connection,
        shard: usize,
        sql: &str,
        p: P,
    ) -> Result<Vec<std::result::Result<Task, DamagedRow>>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(p)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(self.read_task(row, shard));
        }
        Ok(out)
    }
}

/// [`Store::get`](crate::store::Store::get).
pub(super) fn get(store: &SqliteStore, ids: &[i64]) -> Result<Vec<Option<Task>>> {
    ids.iter()
        .map(|&id| match store.split(id) {
            None => Ok(None),
            Some((s, local)) => store.read(s, |conn| Ok(store.query_tasks(conn, s, sql::GET, [local])?.pop())),
        })
        .collect()
}

/// [`Store::get_by_key`](crate::store::Store::get_by_key).
pub(super) fn get_by_key(store: &SqliteStore, queue: &str, keys: &[String]) -> Result<Vec<Option<Task>>> {
    keys.iter()
        .map(|k| {
            let s = store.route_key(queue, k);
            store.read(s, |conn| Ok(store.query_tasks(conn, s, sql::GET_BY_KEY, (queue, k))?.pop()))
        })
        .collect()
}

/// [`Store::list`](crate::store::Store::list).
pub(super) fn list(store: &SqliteStore, p: &ListParams) -> Result<Vec<Task>> {
    rules::check_list_limit(p.limit)?;
    let (active, done) = rules::list_tables(p.status);
    let n = i64::from(store.shard_count());
    let mut all = Vec::new();
    for s in 0..store.shards.len() {
        let from_local = p.after_id.map(|a| (a - s as i64).div_euclid(n) + 1).unwrap_or(0);
        all.extend(store.read(s, |conn| {
            store.query_tasks(
                conn,
                s,
                sql::LIST,
                params![p.queue, p.status.map(Status::code), p.batch, from_local, p.limit, active, done, p.name, p.key],
            )
        })?);
    }
    all.sort_by_key(|t| t.id);
    all.truncate(p.limit as usize);
    Ok(all)
}

/// [`Store::counts`](crate::store::Store::counts).
pub(super) fn counts(store: &SqliteStore) -> Result<Vec<QueueCount>> {
    let mut sums: BTreeMap<(String, Status), u64> = BTreeMap::new();
    for (s, shard) in store.shards.iter().enumerate() {
        store.read(s, |conn| {
            let mut stmt = conn.prepare_cached(sql::COUNTS)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let code = r.get(1)?;
                let status = Status::from_code(code).map_err(|_| {
                    rules::damaged_file(&shard.label, &format!("a task row has the unknown status code {code}"))
                })?;
                *sums.entry((r.get(0)?, status)).or_default() += r.get::<_, i64>(2)? as u64;
            }
            Ok(())
        })?;
    }
    Ok(sums.into_iter().map(|((queue, status), count)| QueueCount { queue, status, count }).collect())
}

/// [`Store::unfinished`](crate::store::Store::unfinished).
pub(super) fn unfinished(store: &SqliteStore, queue: &str) -> Result<u64> {
    let mut total = 0u64;
    for s in 0..store.shards.len() {
        total += store.read(s, |conn| {
            Ok(conn.prepare_cached(sql::COUNT_UNFINISHED)?.query_row([queue], |r| r.get::<_, i64>(0))? as u64)
        })?;
    }
    Ok(total)
}

/// [`Store::next_run_at`](crate::store::Store::next_run_at).
/// A paused queue has none: nothing of it becomes claimable by time alone
/// (a waiting claimer would otherwise wake for its ready tasks at once,
/// again and again); its resume is a commit, which wakes waiters.
pub(super) fn next_run_at(store: &SqliteStore, queue: &str) -> Result<Option<i64>> {
    let paused: i64 =
        store.read(0, |conn| Ok(conn.prepare_cached(sql::PAUSED)?.query_row([queue], |r| r.get(0))?))?;
    if paused != 0 {
        return Ok(None);
    }
    let mut best: Option<i64> = None;
    let now = store.clock.now_ms();
    for s in 0..store.shards.len() {
        let at: Option<i64> = store.read(s, |conn| {
            Ok(conn.prepare_cached(sql::NEXT_RUN_AT)?.query_row(params![queue, now], |r| r.get(0))?)
        })?;
        best = match (best, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(best)
}
