//! Housekeeping and store-wide data: purge, listen data, worker records,
//! queue capacities and function limits.

use super::pool::PgResult;
use super::{sql, PostgresStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Guard, LimitWrite};
use crate::store::{
    CapacityParams, FunctionLimit, ListenChange, ListenChangesParams, ListenSetParams, PurgeParams, WorkerInfo,
};
use postgres::Row;

/// A function limit from the first columns of `LIMITS` / `LIMITS_FOR_UPDATE`.
pub(super) fn read_limit(r: &Row) -> PgResult<FunctionLimit> {
    let max_running: Option<i64> = r.try_get(1)?;
    Ok(FunctionLimit {
        name: r.try_get(0)?,
        max_running: max_running.map(|m| m.clamp(0, u32::MAX as i64) as u32),
        rate_per_s: r.try_get(2)?,
        burst: r.try_get(3)?,
    })
}

/// A listen change from a row of `LISTEN_SINCE` / `LISTEN_GET`.
fn listen_change(r: &Row) -> PgResult<ListenChange> {
    Ok(ListenChange { version: r.try_get(0)?, key: r.try_get(1)?, value: r.try_get(2)?, at: r.try_get(3)? })
}

/// [`Store::purge`](crate::store::Store::purge).
pub(super) fn purge(store: &PostgresStore, p: &PurgeParams) -> Result<u64> {
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    store.tx(true, |db| {
        let n: i64 =
            db.query(sql::PURGE, &[&now, &p.finished_before])?.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        if let Some(r) = retention {
            db.execute(sql::LISTEN_PRUNE, &[&(now - r)])?;
        }
        super::events::prune(store, db, now)?;
        Ok(n.max(0) as u64)
    })
}

/// [`Store::delete`](crate::store::Store::delete).
pub(super) fn delete(store: &PostgresStore, ids: &[i64]) -> Result<Vec<Result<()>>> {
    store.guarded_batch(
        ids,
        |x| *x,
        |_| None,
        |_| Guard::Finished,
        "delete",
        |_| None,
        |db, idx, _| {
            let todo: Vec<i64> = idx.iter().map(|i| ids[*i]).collect();
            db.query(sql::DELETE_FINISHED, &[&todo])?.iter().map(|r| Ok(r.try_get(0)?)).collect()
        },
    )
}

/// [`Store::listen_set`](crate::store::Store::listen_set).
pub(super) fn listen_set(store: &PostgresStore, p: &ListenSetParams) -> Result<i64> {
    let (v, changed) = super::events::listen_set(store, p)?;
    if changed {
        store.wake.bump();
    }
    Ok(v)
}

/// [`Store::listen_changes`](crate::store::Store::listen_changes).
pub(super) fn listen_changes(store: &PostgresStore, p: &ListenChangesParams) -> Result<Vec<ListenChange>> {
    let limit = i64::from(p.limit.max(1));
    store.run(true, |db| db.query(sql::LISTEN_SINCE, &[&p.since, &limit])?.iter().map(listen_change).collect())
}

/// [`Store::listen_get`](crate::store::Store::listen_get).
pub(super) fn listen_get(store: &PostgresStore, key: &str) -> Result<Option<ListenChange>> {
    store.run(true, |db| db.query_opt(sql::LISTEN_GET, &[&key])?.map(|r| listen_change(&r)).transpose())
}

/// [`Store::listen_head`](crate::store::Store::listen_head).
pub(super) fn listen_head(store: &PostgresStore) -> Result<i64> {
    store.run(true, |db| Ok(db.query(sql::LISTEN_HEAD, &[])?.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0)))
}

/// [`Store::register_worker`](crate::store::Store::register_worker).
pub(super) fn register_worker(store: &PostgresStore, w: &WorkerInfo) -> Result<()> {
    let queues = rules::queues_to_json(&w.queues)?;
    let now = store.clock.now_ms();
    let pid = i64::from(w.pid);
    store.run(true, |db| {
        db.execute(sql::WORKER_UPSERT, &[&w.id, &w.host, &pid, &now, &queues])?;
        Ok(())
    })
}

/// [`Store::workers`](crate::store::Store::workers).
pub(super) fn workers(store: &PostgresStore) -> Result<Vec<WorkerInfo>> {
    store.run(true, |db| {
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
                    queues: rules::queues_from_json(&queues)?,
                })
            })
            .collect()
    })
}

/// [`Store::remove_worker`](crate::store::Store::remove_worker).
pub(super) fn remove_worker(store: &PostgresStore, id: &str) -> Result<bool> {
    store.run(true, |db| Ok(db.execute(sql::WORKER_DELETE, &[&id])? == 1))
}

/// [`Store::set_capacity`](crate::store::Store::set_capacity).
pub(super) fn set_capacity(store: &PostgresStore, p: &CapacityParams) -> Result<()> {
    let cap = rules::capacity_to_store(&p.queue, p.capacity)?;
    store.run(true, |db| {
        match cap {
            Some(c) => db.execute(sql::CAPACITY_SET, &[&p.queue, &c])?,
            None => db.execute(sql::CAPACITY_DELETE, &[&p.queue])?,
        };
        Ok(())
    })
}

/// [`Store::capacity`](crate::store::Store::capacity).
pub(super) fn capacity(store: &PostgresStore, queue: &str) -> Result<Option<u64>> {
    store.run(true, |db| {
        let cap: Option<i64> = db.query_opt(sql::CAPACITY_GET, &[&queue])?.map(|r| r.try_get(0)).transpose()?.flatten();
        Ok(cap.map(rules::capacity_from_store))
    })
}

/// [`Store::set_function_limit`](crate::store::Store::set_function_limit).
pub(super) fn set_function_limit(store: &PostgresStore, limit: &FunctionLimit) -> Result<()> {
    let write = rules::limit_write(limit)?;
    let now = store.clock.now_ms();
    let max_running = limit.max_running.map(i64::from);
    store.run(true, |db| {
        match write {
            LimitWrite::Delete => db.execute(sql::LIMIT_DELETE, &[&limit.name])?,
            LimitWrite::Upsert => db.execute(
                sql::LIMIT_SET,
                &[&limit.name, &max_running, &limit.rate_per_s, &limit.burst, &now, &limit.effective_burst()],
            )?,
        };
        Ok(())
    })?;
    store.wake.bump();
    Ok(())
}

/// [`Store::function_limits`](crate::store::Store::function_limits).
pub(super) fn function_limits(store: &PostgresStore) -> Result<Vec<FunctionLimit>> {
    store.run(true, |db| db.query(sql::LIMITS, &[])?.iter().map(read_limit).collect())
}

/// [`Store::check`](crate::store::Store::check). PostgreSQL checks its own
/// pages (data checksums, when the cluster has them) and rows carry no
/// ferroq checksum, so this checks only that the store's schema answers.
pub(super) fn check(store: &PostgresStore) -> Result<Vec<crate::store::ShardCheck>> {
    let messages = match listen_head(store) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.to_string()],
    };
    let path = crate::store::Store::describe(store);
    Ok(vec![crate::store::ShardCheck { path, ok: messages.is_empty(), messages }])
}
