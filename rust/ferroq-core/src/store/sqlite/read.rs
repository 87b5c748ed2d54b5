//! Reads: tasks by id, by key and by page, counts, and the next run time.
//! Reads take a shard's connection without a transaction.

use super::{sql, SqliteStore};
use crate::backoff::Backoff;
use crate::error::Result;
use crate::store::rules::{self, TaskCol as C};
use crate::store::{ListParams, QueueCount};
use crate::task::{Status, Task};
use rusqlite::{params, Connection, Row};
use std::collections::BTreeMap;

impl SqliteStore {
    /// A task from a row of `sql::TASK_COLUMNS`, found in `shard`.
    fn read_task(&self, row: &Row, shard: usize) -> Result<Task> {
        let at = |c: C| c.at(0);
        let backoff: Option<String> = row.get(at(C::Backoff))?;
        Ok(Task {
            id: self.global(shard, row.get(at(C::Id))?),
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

    /// Runs a statement that returns task rows of `shard`.
    pub(super) fn query_tasks<P: rusqlite::Params>(
        &self,
        conn: &Connection,
        shard: usize,
        sql: &str,
        p: P,
    ) -> Result<Vec<Task>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(p)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(self.read_task(row, shard)?);
        }
        Ok(out)
    }
}

/// [`Store::get`](crate::store::Store::get).
pub(super) fn get(store: &SqliteStore, ids: &[i64]) -> Result<Vec<Option<Task>>> {
    ids.iter()
        .map(|&id| match store.split(id) {
            None => Ok(None),
            Some((s, local)) => {
                let conn = store.shards[s].conn.lock();
                Ok(store.query_tasks(&conn, s, sql::GET, [local])?.pop())
            }
        })
        .collect()
}

/// [`Store::get_by_key`](crate::store::Store::get_by_key).
pub(super) fn get_by_key(store: &SqliteStore, queue: &str, keys: &[String]) -> Result<Vec<Option<Task>>> {
    keys.iter()
        .map(|k| {
            let s = store.route_key(queue, k);
            let conn = store.shards[s].conn.lock();
            Ok(store.query_tasks(&conn, s, sql::GET_BY_KEY, (queue, k))?.pop())
        })
        .collect()
}

/// [`Store::list`](crate::store::Store::list).
pub(super) fn list(store: &SqliteStore, p: &ListParams) -> Result<Vec<Task>> {
    rules::check_list_limit(p.limit)?;
    let (active, done) = rules::list_tables(p.status);
    let n = i64::from(store.shard_count());
    let mut all = Vec::new();
    for (s, shard) in store.shards.iter().enumerate() {
        let from_local = p.after_id.map(|a| (a - s as i64).div_euclid(n) + 1).unwrap_or(0);
        let conn = shard.conn.lock();
        all.extend(store.query_tasks(
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

/// [`Store::counts`](crate::store::Store::counts).
pub(super) fn counts(store: &SqliteStore) -> Result<Vec<QueueCount>> {
    let mut sums: BTreeMap<(String, Status), u64> = BTreeMap::new();
    for shard in &store.shards {
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

/// [`Store::unfinished`](crate::store::Store::unfinished).
pub(super) fn unfinished(store: &SqliteStore, queue: &str) -> Result<u64> {
    let mut total = 0u64;
    for shard in &store.shards {
        let conn = shard.conn.lock();
        total += conn.prepare_cached(sql::COUNT_UNFINISHED)?.query_row([queue], |r| r.get::<_, i64>(0))? as u64;
    }
    Ok(total)
}

/// [`Store::next_run_at`](crate::store::Store::next_run_at).
pub(super) fn next_run_at(store: &SqliteStore, queue: &str) -> Result<Option<i64>> {
    let mut best: Option<i64> = None;
    let now = store.clock.now_ms();
    for shard in &store.shards {
        let conn = shard.conn.lock();
        let at: Option<i64> = conn.prepare_cached(sql::NEXT_RUN_AT)?.query_row(params![queue, now], |r| r.get(0))?;
        best = match (best, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(best)
}
