//! Enqueue. Unkeyed tasks into queues without a capacity take one
//! statement and no transaction; otherwise one transaction reserves keys
//! (the unique index of `task_key` settles races with other hosts), checks
//! capacities under a lock, and writes the rows.

use super::pool::{Db, Fail, PgResult};
use super::{sql, PostgresStore};
use crate::error::{Error, Result};
use crate::store::{rules, EnqueueParams, Enqueued, OnDuplicate};
use crate::task::NewTask;
use postgres::GenericClient;
use std::collections::{HashMap, HashSet};

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
) -> PgResult<Vec<i64>> {
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
    let priority: Vec<i64> = idx.iter().map(|i| t(i).priority).collect();
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

/// [`Store::enqueue`](crate::store::Store::enqueue).
pub(super) fn enqueue(store: &PostgresStore, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
    for t in tasks {
        t.validate(store.cfg.store.max_payload)?;
    }
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let now = store.clock.now_ms();
    let out = if tasks.iter().all(|t| t.key.is_none()) {
        // The common case: one statement, no transaction. It inserts
        // nothing when some queue has a capacity; then the checked path runs.
        let all: Vec<usize> = (0..tasks.len()).collect();
        let ids = store.run(false, |db| insert_rows(db, tasks, &all, None, now, true))?;
        if ids.len() == tasks.len() {
            ids.into_iter().map(|id| Enqueued { id, inserted: true }).collect()
        } else {
            store.enqueue_checked(tasks, now, OnDuplicate::Existing)?
        }
    } else {
        store.enqueue_checked(tasks, now, OnDuplicate::Existing)?
    };
    store.wake.bump();
    Ok(out)
}

/// [`Store::enqueue_with`](crate::store::Store::enqueue_with): with
/// [`OnDuplicate::Error`], the checked path refuses the whole transaction
/// when a key is taken (the `task_key` reservation tells, also against
/// concurrent sends on other hosts).
pub(super) fn enqueue_with(store: &PostgresStore, p: &EnqueueParams<'_>) -> Result<Vec<Enqueued>> {
    if p.on_duplicate == OnDuplicate::Existing {
        return enqueue(store, p.tasks);
    }
    for t in p.tasks {
        t.validate(store.cfg.store.max_payload)?;
    }
    if let Some((queue, key)) = rules::repeated_key(p.tasks) {
        return Err(rules::duplicate_key(queue, key, None));
    }
    if p.tasks.is_empty() {
        return Ok(Vec::new());
    }
    let now = store.clock.now_ms();
    let out = store.enqueue_checked(p.tasks, now, OnDuplicate::Error)?;
    store.wake.bump();
    Ok(out)
}

impl PostgresStore {
    /// Enqueue with keys and/or capacities: one transaction that reserves
    /// keys (the unique index settles races with other hosts), checks
    /// capacities under a lock, then writes the rows.
    fn enqueue_checked(&self, tasks: &[NewTask], now: i64, on_duplicate: OnDuplicate) -> Result<Vec<Enqueued>> {
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
                        let id =
                            owners.get(&(t.queue.clone(), t.key.clone().unwrap_or_default())).copied().ok_or_else(
                                || Fail::Core(Error::Storage(format!("key {:?} is taken but has no owner", t.key))),
                            )?;
                        if on_duplicate == OnDuplicate::Error {
                            // Rolls the whole batch back, reservations included.
                            let key = t.key.as_deref().unwrap_or("");
                            return Err(Fail::Core(rules::duplicate_key(&t.queue, key, Some(id))));
                        }
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
                    let capped: Vec<String> =
                        caps.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?;
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
                    (Some(first), _) => {
                        Enqueued { id: existing.get(&first).copied().unwrap_or(ids[first]), inserted: false }
                    }
                    (None, None) => Enqueued { id: ids[i], inserted: true },
                };
                out.push(e);
            }
            Ok(out)
        })
    }
}
