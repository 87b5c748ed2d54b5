//! Reads: tasks by id, by key and by page, counts, and the next run time.
//! Reads are replayed on a fresh connection when one breaks.

use super::pool::PgResult;
use super::{sql, PostgresStore};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::store::rules::{self, TaskCol as C};
use crate::store::{ListParams, QueueCount};
use crate::task::{Status, Task};
use postgres::Row;
use std::collections::{BTreeMap, HashMap};

/// A task from the columns of `sql::TASK_COLUMNS` starting at column `at`
/// of `row` (claims return a flag before them).
pub(super) fn read_task(row: &Row, at: usize) -> PgResult<Task> {
    let col = |c: C| c.at(at);
    let backoff: Option<String> = row.try_get(col(C::Backoff))?;
    let status: i16 = row.try_get(col(C::Status))?;
    let attempts: i32 = row.try_get(col(C::Attempts))?;
    let max_attempts: i32 = row.try_get(col(C::MaxAttempts))?;
    Ok(Task {
        id: row.try_get(col(C::Id))?,
        queue: row.try_get(col(C::Queue))?,
        name: row.try_get(col(C::Name))?,
        payload: row.try_get(col(C::Payload))?,
        priority: row.try_get(col(C::Priority))?,
        status: Status::from_code(status.into())?,
        run_at: row.try_get(col(C::RunAt))?,
        attempts: u32::try_from(attempts).map_err(|_| Error::Corrupt(format!("attempts {attempts}")))?,
        max_attempts: u32::try_from(max_attempts)
            .map_err(|_| Error::Corrupt(format!("max_attempts {max_attempts}")))?,
        lease_until: row.try_get(col(C::LeaseUntil))?,
        worker: row.try_get(col(C::Worker))?,
        key: row.try_get(col(C::Key))?,
        batch: row.try_get(col(C::Batch))?,
        progress: row.try_get(col(C::Progress))?,
        result: row.try_get(col(C::Result))?,
        error: row.try_get(col(C::Error))?,
        created_at: row.try_get(col(C::CreatedAt))?,
        started_at: row.try_get(col(C::StartedAt))?,
        finished_at: row.try_get(col(C::FinishedAt))?,
        expires_at: row.try_get(col(C::ExpiresAt))?,
        metadata: row.try_get(col(C::Metadata))?,
        cancel_requested: row.try_get(col(C::CancelRequested))?,
        backoff: backoff.as_deref().map(Backoff::decode).transpose()?,
        result_ttl_ms: row.try_get(col(C::ResultTtl))?,
        requires: row.try_get(col(C::Requires))?,
    })
}

/// Every row as a task (task columns first).
pub(super) fn read_tasks(rows: &[Row]) -> PgResult<Vec<Task>> {
    rows.iter().map(|r| read_task(r, 0)).collect()
}

/// [`Store::get`](crate::store::Store::get).
pub(super) fn get(store: &PostgresStore, ids: &[i64]) -> Result<Vec<Option<Task>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found: HashMap<i64, Task> = store
        .run(true, |db| Ok(read_tasks(&db.query(sql::GET, &[&ids])?)?.into_iter().map(|t| (t.id, t)).collect()))?;
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// [`Store::get_by_key`](crate::store::Store::get_by_key).
pub(super) fn get_by_key(store: &PostgresStore, queue: &str, keys: &[String]) -> Result<Vec<Option<Task>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let found: HashMap<String, Task> = store.run(true, |db| {
        Ok(read_tasks(&db.query(sql::GET_BY_KEY, &[&queue, &keys])?)?
            .into_iter()
            .filter_map(|t| t.key.clone().map(|k| (k, t)))
            .collect())
    })?;
    Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
}

/// [`Store::list`](crate::store::Store::list).
pub(super) fn list(store: &PostgresStore, p: &ListParams) -> Result<Vec<Task>> {
    rules::check_list_limit(p.limit)?;
    let (active, done) = rules::list_tables(p.status);
    let status = p.status.map(|s| s.code() as i16);
    store.run(true, |db| {
        read_tasks(&db.query(
            sql::LIST,
            &[&p.queue, &status, &p.batch, &p.after_id, &(p.limit as i64), &active, &done, &p.name, &p.key],
        )?)
    })
}

/// [`Store::counts`](crate::store::Store::counts).
pub(super) fn counts(store: &PostgresStore) -> Result<Vec<QueueCount>> {
    let rows = store.run(true, |db| {
        db.query(sql::COUNTS, &[])?
            .iter()
            .map(|r| {
                let code: i16 = r.try_get(1)?;
                Ok((r.try_get::<_, String>(0)?, Status::from_code(code.into())?, r.try_get::<_, i64>(2)?))
            })
            .collect::<PgResult<Vec<_>>>()
    })?;
    let mut sums: BTreeMap<(String, Status), u64> = BTreeMap::new();
    for (queue, status, n) in rows {
        *sums.entry((queue, status)).or_default() += n.max(0) as u64;
    }
    Ok(sums.into_iter().map(|((queue, status), count)| QueueCount { queue, status, count }).collect())
}

/// [`Store::unfinished`](crate::store::Store::unfinished).
pub(super) fn unfinished(store: &PostgresStore, queue: &str) -> Result<u64> {
    store.run(true, |db| {
        let rows = db.query(sql::COUNT_UNFINISHED, &[&vec![queue]])?;
        Ok(rows.first().map(|r| r.try_get::<_, i64>(1)).transpose()?.unwrap_or(0).max(0) as u64)
    })
}

/// [`Store::next_run_at`](crate::store::Store::next_run_at).
pub(super) fn next_run_at(store: &PostgresStore, queue: &str) -> Result<Option<i64>> {
    let now = store.clock.now_ms();
    store.run(true, |db| {
        Ok(db.query(sql::NEXT_RUN_AT, &[&queue, &now])?.first().map(|r| r.try_get(0)).transpose()?.flatten())
    })
}
