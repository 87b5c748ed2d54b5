//! Flows: tasks that wait for other tasks (`sql::MIGRATE_V3`). Storing a
//! flow is one transaction; settling waiting tasks is done by the
//! statement that finishes their parents (a trigger, see `MIGRATE_V3`), so
//! the sweep run by `recover` only forgets the rows of finished tasks.

use super::exec::statuses;
use super::pool::Fail;
use super::{sql, PostgresStore};
use crate::error::Result;
use crate::store::rules::{self, Settle};
use crate::store::{Dep, Enqueued, FlowTask};
use crate::task::Status;
use std::collections::HashMap;

/// [`Store::enqueue_flow`](crate::store::Store::enqueue_flow). The
/// unfinished parents named by id are locked first, so that none finishes
/// between the look at its status here and the commit.
pub(super) fn enqueue_flow(store: &PostgresStore, tasks: &[FlowTask]) -> Result<Vec<Enqueued>> {
    rules::check_flow(tasks)?;
    for t in tasks {
        t.task.validate(store.cfg.store.max_payload)?;
    }
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    store
        .tx(false, |db| {
            let mut named: Vec<i64> = tasks
                .iter()
                .flat_map(|t| t.after.iter())
                .filter_map(|d| match d {
                    Dep::Task(id) => Some(*id),
                    Dep::Earlier(_) => None,
                })
                .collect();
            named.sort_unstable();
            named.dedup();
            if !named.is_empty() {
                db.query(sql::LOCK_PARENTS, &[&named])?;
            }
            let mut out: Vec<Enqueued> = Vec::with_capacity(tasks.len());
            for t in tasks {
                let n = &t.task;
                let id: i64 = match db.query_opt(sql::NEXT_ID, &[])? {
                    Some(r) => r.try_get(0)?,
                    None => return Err(Fail::Core(crate::Error::Storage("the id sequence answered nothing".into()))),
                };
                if let Some(k) = &n.key {
                    let won = db.query(sql::RESERVE_KEYS, &[&vec![n.queue.as_str()], &vec![k.as_str()], &vec![id]])?;
                    if won.is_empty() {
                        let owner = db.query(sql::KEY_OWNERS, &[&vec![n.queue.as_str()], &vec![k.as_str()]])?;
                        let existing: i64 = match owner.first() {
                            Some(r) => r.try_get(2)?,
                            None => return Err(Fail::Core(crate::Error::Storage(format!("key {k:?} has no owner")))),
                        };
                        out.push(Enqueued { id: existing, inserted: false });
                        continue;
                    }
                }
                let parents = t.parent_ids(&out);
                let found: HashMap<i64, Status> = statuses(db, &parents)?;
                let mut seen = Vec::with_capacity(parents.len());
                for p in &parents {
                    let status = found.get(p).copied().ok_or_else(|| Fail::Core(rules::task_not_found(*p)))?;
                    seen.push((*p, Some(status)));
                }
                let decision = if seen.is_empty() { Settle::Release } else { rules::settle(&seen) };
                let status = if decision == Settle::Release { Status::Queued } else { Status::Waiting };
                let code = status.code() as i16;
                let backoff = n.backoff.map(|b| b.encode());
                let max_attempts = n.max_attempts as i32;
                db.execute(
                    sql::INSERT_FLOW_TASK,
                    &[
                        &id,
                        &n.queue,
                        &n.name,
                        &n.payload,
                        &n.priority,
                        &n.run_at,
                        &max_attempts,
                        &n.key,
                        &n.batch,
                        &n.expires_at,
                        &n.metadata,
                        &now,
                        &backoff,
                        &n.result_ttl_ms,
                        &code,
                        &n.requires,
                    ],
                )?;
                for (pos, p) in parents.iter().enumerate() {
                    db.execute(sql::DEP_INSERT, &[p, &id, &(pos as i32)])?;
                }
                if let Settle::Cancel(why) = decision {
                    let cancelled = Status::Cancelled.code() as i16;
                    let waiting = Status::Waiting.code() as i16;
                    let none: Vec<Option<Vec<u8>>> = vec![None];
                    let anyone: Vec<Option<&str>> = vec![None];
                    db.execute(
                        sql::MOVE_TO_DONE,
                        &[&vec![id], &none, &vec![Some(why)], &anyone, &cancelled, &waiting, &now, &retention],
                    )?;
                }
                out.push(Enqueued { id, inserted: true });
            }
            Ok(out)
        })
        .inspect(|_| store.wake.bump())
}

/// [`Store::dependencies`](crate::store::Store::dependencies).
pub(super) fn dependencies(store: &PostgresStore, ids: &[i64]) -> Result<Vec<Vec<i64>>> {
    let mut by_child: HashMap<i64, Vec<i64>> = HashMap::new();
    if !ids.is_empty() {
        store.run(true, |db| {
            by_child.clear();
            for r in db.query(sql::DEPS_OF, &[&ids])? {
                by_child.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
            }
            Ok(())
        })?;
    }
    Ok(ids.iter().map(|id| by_child.get(id).cloned().unwrap_or_default()).collect())
}

/// Settles any waiting task left unsettled and forgets the dependency rows
/// of finished tasks (run by `recover`).
pub(super) fn sweep(store: &PostgresStore) -> Result<()> {
    store.tx(true, |db| {
        db.execute(sql::SETTLE_ALL, &[])?;
        db.execute(sql::DEPS_FORGET, &[])?;
        Ok(())
    })
}
