//! Housekeeping and store-wide data, all kept in shard 0: purge, listen
//! data, worker records, queue capacities and function limits.

use super::claim::read_limits;
use super::{schema, sql, SqliteStore};
use crate::error::Result;
use crate::store::rules::{self, Guard, LimitWrite};
use crate::store::{
    CapacityParams, FunctionLimit, ListenChange, ListenChangesParams, ListenSetParams, PurgeParams, WorkerInfo,
};
use rusqlite::{params, OptionalExtension, Row};

/// A listen change from a row of `LISTEN_SINCE` / `LISTEN_GET`.
fn listen_change(r: &Row) -> rusqlite::Result<ListenChange> {
    Ok(ListenChange { version: r.get(0)?, key: r.get(1)?, value: r.get(2)?, at: r.get(3)? })
}

/// [`Store::purge`](crate::store::Store::purge).
pub(super) fn purge(store: &SqliteStore, p: &PurgeParams) -> Result<u64> {
    let now = store.clock.now_ms();
    let mut total = 0u64;
    for s in 0..store.shards.len() {
        total += store.write(s, |tx| {
            let high = schema::last_local_id(tx)?;
            tx.prepare_cached(sql::SET_HIGH_ID)?.execute([high.to_string()])?;
            let shards = i64::from(store.shard_count());
            let n = tx.prepare_cached(sql::PURGE)?.execute(params![now, p.finished_before, shards, s as i64])?;
            super::events::prune(store, tx, now)?;
            if s == 0 {
                if let Some(r) = store.config.retention_ms {
                    tx.prepare_cached(sql::LISTEN_PRUNE)?.execute([now - r])?;
                }
            }
            Ok(n as u64)
        })?;
    }
    Ok(total)
}

/// [`Store::delete`](crate::store::Store::delete).
pub(super) fn delete(store: &SqliteStore, ids: &[i64]) -> Result<Vec<Result<()>>> {
    store.per_item(
        ids,
        |x| *x,
        |tx, _, local, x| {
            // Keep the shard's highest id on record, as purge does, so a
            // deleted newest task's id is never handed out again.
            let high = schema::last_local_id(tx)?;
            tx.prepare_cached(sql::SET_HIGH_ID)?.execute([high.to_string()])?;
            if tx.prepare_cached(sql::DELETE_DONE)?.execute([local])? == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(store.explain(tx, *x, local, None, Guard::Finished, "delete")?))
        },
    )
}

/// [`Store::listen_set`](crate::store::Store::listen_set).
pub(super) fn listen_set(store: &SqliteStore, p: &ListenSetParams) -> Result<i64> {
    let (v, changed) = super::events::listen_set(store, p)?;
    if changed {
        store.wake.bump();
    }
    Ok(v)
}

/// [`Store::listen_changes`](crate::store::Store::listen_changes).
pub(super) fn listen_changes(store: &SqliteStore, p: &ListenChangesParams) -> Result<Vec<ListenChange>> {
    store.read(0, |conn| {
        let mut stmt = conn.prepare_cached(sql::LISTEN_SINCE)?;
        let rows = stmt.query_map(params![p.since, p.limit.max(1)], listen_change)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

/// [`Store::listen_get`](crate::store::Store::listen_get).
pub(super) fn listen_get(store: &SqliteStore, key: &str) -> Result<Option<ListenChange>> {
    store.read(0, |conn| {
        let found = conn.prepare_cached(sql::LISTEN_GET)?.query_row([key], listen_change).optional()?;
        Ok(found)
    })
}

/// [`Store::listen_head`](crate::store::Store::listen_head).
pub(super) fn listen_head(store: &SqliteStore) -> Result<i64> {
    store.read(0, |conn| {
        let head = conn.prepare_cached(sql::LISTEN_HEAD)?.query_row([], |r| r.get(0))?;
        Ok(head)
    })
}

/// [`Store::register_worker`](crate::store::Store::register_worker).
pub(super) fn register_worker(store: &SqliteStore, w: &WorkerInfo) -> Result<()> {
    let queues = rules::queues_to_json(&w.queues)?;
    let now = store.clock.now_ms();
    store.write(0, |tx| {
        tx.prepare_cached(sql::WORKER_UPSERT)?.execute(params![w.id, w.host, w.pid, now, queues])?;
        Ok(())
    })
}

/// [`Store::workers`](crate::store::Store::workers).
pub(super) fn workers(store: &SqliteStore) -> Result<Vec<WorkerInfo>> {
    store.read(0, |conn| {
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
                queues: rules::queues_from_json(&queues)?,
            });
        }
        Ok(out)
    })
}

/// [`Store::remove_worker`](crate::store::Store::remove_worker).
pub(super) fn remove_worker(store: &SqliteStore, id: &str) -> Result<bool> {
    store.write(0, |tx| Ok(tx.prepare_cached(sql::WORKER_DELETE)?.execute([id])? == 1))
}

/// [`Store::set_capacity`](crate::store::Store::set_capacity).
pub(super) fn set_capacity(store: &SqliteStore, p: &CapacityParams) -> Result<()> {
    let cap = rules::capacity_to_store(&p.queue, p.capacity)?;
    store.write(0, |tx| {
        match cap {
            Some(c) => tx.prepare_cached(sql::CAPACITY_SET)?.execute(params![p.queue, c])?,
            None => tx.prepare_cached(sql::CAPACITY_DELETE)?.execute([&p.queue])?,
        };
        Ok(())
    })?;
    // After the commit: a reader in between must not cache the old answer.
    *store.capacity_seen.lock() = None;
    Ok(())
}

/// [`Store::capacity`](crate::store::Store::capacity).
pub(super) fn capacity(store: &SqliteStore, queue: &str) -> Result<Option<u64>> {
    store.read(0, |conn| {
        // A queue with options but no capacity has a row whose capacity is NULL.
        let cap: Option<Option<i64>> =
            conn.prepare_cached(sql::CAPACITY_GET)?.query_row([queue], |r| r.get(0)).optional()?;
        Ok(cap.flatten().map(rules::capacity_from_store))
    })
}

/// [`Store::set_function_limit`](crate::store::Store::set_function_limit).
pub(super) fn set_function_limit(store: &SqliteStore, limit: &FunctionLimit) -> Result<()> {
    let write = rules::limit_write(limit)?;
    let now = store.clock.now_ms();
    store.write(0, |tx| {
        match write {
            LimitWrite::Delete => {
                tx.prepare_cached(sql::LIMIT_DELETE)?.execute([&limit.name])?;
            }
            LimitWrite::Upsert => {
                tx.prepare_cached(sql::LIMIT_SET)?.execute(params![
                    limit.name,
                    limit.max_running,
                    limit.rate_per_s,
                    limit.burst,
                    now,
                    limit.effective_burst()
                ])?;
            }
        }
        Ok(())
    })?;
    store.wake.bump();
    Ok(())
}

/// [`Store::function_limits`](crate::store::Store::function_limits).
pub(super) fn function_limits(store: &SqliteStore) -> Result<Vec<FunctionLimit>> {
    store.read(0, |conn| Ok(read_limits(conn)?.into_iter().map(|l| l.limit).collect()))
}
