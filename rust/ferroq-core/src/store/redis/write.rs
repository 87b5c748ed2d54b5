//! Enqueue (plain and flows), and the settling of waiting tasks: a finish
//! settles the finished task's dependents right after its commit (each on
//! its own guard, which includes its parents' records as read), and
//! `recover` sweeps every waiting task, so a crash between the two loses
//! nothing.

use super::codec::Record;
use super::moves::{finished, per_item};
use super::tx::{Loaded, Tx};
use super::RedisStore;
use crate::error::{Error, Result};
use crate::store::rules::{self, Settle};
use crate::store::{Dep, EnqueueParams, Enqueued, FlowTask, OnDuplicate};
use crate::task::{NewTask, Status, Task};
use std::collections::HashMap;

/// The stored form of a new task.
fn new_task(id: i64, n: &NewTask, status: Status, now: i64) -> Task {
    Task {
        id,
        queue: n.queue.clone(),
        name: n.name.clone(),
        payload: n.payload.clone(),
        priority: n.priority,
        status,
        run_at: n.run_at.unwrap_or(now),
        attempts: 0,
        max_attempts: n.max_attempts,
        lease_until: None,
        worker: None,
        key: n.key.clone(),
        batch: n.batch.clone(),
        progress: None,
        result: None,
        error: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        expires_at: n.expires_at,
        metadata: n.metadata.clone(),
        cancel_requested: false,
        backoff: n.backoff,
        result_ttl_ms: n.result_ttl_ms,
        requires: n.requires.clone(),
    }
}

fn parse_i64(raw: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(raw?).ok()?.parse().ok()
}

/// Hands out `n` fresh task ids (ascending).
fn next_ids(s: &RedisStore, n: usize) -> Result<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let last: i64 = s.q(redis::cmd("INCRBY").arg(s.keys.k("seq")).arg(n))?;
    Ok(((last - n as i64 + 1)..=last).collect())
}

/// [`Store::enqueue_with`](crate::store::Store::enqueue_with).
pub(super) fn enqueue_with(s: &RedisStore, p: &EnqueueParams<'_>) -> Result<Vec<Enqueued>> {
    let tasks = p.tasks;
    for t in tasks {
        t.validate(s.cfg.store.max_payload)?;
    }
    if p.on_duplicate == OnDuplicate::Error {
        if let Some((q, k)) = rules::repeated_key(tasks) {
            return Err(rules::duplicate_key(q, k, None));
        }
    }
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    s.retrying(|| {
        let now = s.clock.now_ms();
        let n = tasks.len();
        // Keys: taken ones report their owner; a key named twice in the
        // batch goes to its first task.
        let key_names: Vec<Option<String>> =
            tasks.iter().map(|t| t.key.as_ref().map(|k| s.keys.key(&t.queue, k))).collect();
        let wanted: Vec<&String> = key_names.iter().flatten().collect();
        let owners: HashMap<String, Option<Vec<u8>>> = if wanted.is_empty() {
            HashMap::new()
        } else {
            let raws: Vec<Option<Vec<u8>>> = s.q(redis::cmd("MGET").arg(&wanted))?;
            wanted.iter().map(|k| (*k).clone()).zip(raws).collect()
        };
        let mut existing: Vec<Option<i64>> = vec![None; n];
        let mut first_of: HashMap<&String, usize> = HashMap::new();
        let mut dup_of: Vec<Option<usize>> = vec![None; n];
        for i in 0..n {
            let Some(k) = &key_names[i] else { continue };
            if let Some(id) = owners.get(k).and_then(|r| parse_i64(r.as_deref())) {
                if p.on_duplicate == OnDuplicate::Error {
                    return Err(rules::duplicate_key(&tasks[i].queue, tasks[i].key.as_deref().unwrap_or(""), Some(id)));
                }
                existing[i] = Some(id);
            } else if let Some(&j) = first_of.get(k) {
                dup_of[i] = Some(j);
            } else {
                first_of.insert(k, i);
            }
        }
        let new: Vec<usize> = (0..n).filter(|i| existing[*i].is_none() && dup_of[*i].is_none()).collect();
        let mut tx = Tx::new(s, now);
        // Capacities: guarded, with the unfinished counts they were checked against.
        let mut queues: Vec<&str> = new.iter().map(|i| tasks[*i].queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        if !queues.is_empty() {
            let cap_keys: Vec<String> = queues.iter().map(|q| s.keys.cap(q)).collect();
            let caps: Vec<Option<Vec<u8>>> = s.q(redis::cmd("MGET").arg(&cap_keys))?;
            for ((q, ck), cap_raw) in queues.iter().zip(cap_keys).zip(caps) {
                tx.guard(ck, cap_raw.clone());
                let Some(cap) = parse_i64(cap_raw.as_deref()) else { continue };
                let uk = s.keys.unf(q);
                let unf_raw = s.get_raw(&uk)?;
                let have = parse_i64(unf_raw.as_deref()).unwrap_or(0);
                tx.guard(uk, unf_raw);
                let adding = new.iter().filter(|i| tasks[**i].queue == *q).count() as i64;
                if have + adding > cap {
                    return Err(Error::QueueFull { queue: q.to_string(), limit: cap.max(0) as u64 });
                }
            }
        }
        let ids = next_ids(s, new.len())?;
        let mut out: Vec<Option<Enqueued>> = vec![None; n];
        for (i, id) in new.iter().zip(&ids) {
            if let Some(k) = &key_names[*i] {
                tx.guard(k.clone(), None);
            }
            let t = new_task(*id, &tasks[*i], Status::Queued, now);
            tx.put(None, Some(&Record::live(t)))?;
            out[*i] = Some(Enqueued { id: *id, inserted: true });
        }
        for i in 0..n {
            if let Some(id) = existing[i] {
                out[i] = Some(Enqueued { id, inserted: false });
            } else if let Some(j) = dup_of[i] {
                out[i] = out[j].map(|e| Enqueued { id: e.id, inserted: false });
            }
        }
        if !tx.commit_all()? {
            // A commit whose reply was lost is sent again by the pool and
            // then fails its guards, having applied the first time: the
            // fresh ids it stored are ours alone.
            if !ids.is_empty() && s.load(&ids)?.iter().all(|l| l.is_some()) {
                return Ok(Some(out.into_iter().flatten().collect()));
            }
            return Ok(None);
        }
        Ok(Some(out.into_iter().flatten().collect()))
    })
}

/// [`Store::enqueue_flow`](crate::store::Store::enqueue_flow).
pub(super) fn enqueue_flow(s: &RedisStore, tasks: &[FlowTask]) -> Result<Vec<Enqueued>> {
    rules::check_flow(tasks)?;
    for t in tasks {
        t.task.validate(s.cfg.store.max_payload)?;
    }
    s.retrying(|| {
        let now = s.clock.now_ms();
        let mut named: Vec<i64> = tasks
            .iter()
            .flat_map(|t| t.after.iter())
            .filter_map(|d| if let Dep::Task(id) = d { Some(*id) } else { None })
            .collect();
        named.sort_unstable();
        named.dedup();
        let loaded: HashMap<i64, Loaded> = s.load(&named)?.into_iter().flatten().map(|l| (l.rec.task.id, l)).collect();
        if let Some(missing) = named.iter().find(|id| !loaded.contains_key(id)) {
            return Err(rules::task_not_found(*missing));
        }
        let mut tx = Tx::new(s, now);
        for l in loaded.values() {
            tx.guard(s.keys.task(l.rec.task.id), Some(l.raw.clone()));
        }
        let key_names: Vec<Option<String>> =
            tasks.iter().map(|t| t.task.key.as_ref().map(|k| s.keys.key(&t.task.queue, k))).collect();
        let ids = next_ids(s, tasks.len())?;
        let mut out: Vec<Enqueued> = Vec::with_capacity(tasks.len());
        let mut batch_status: HashMap<i64, Status> = HashMap::new();
        let mut batch_keys: HashMap<String, i64> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(k) = &key_names[i] {
                if let Some(id) = batch_keys.get(k) {
                    out.push(Enqueued { id: *id, inserted: false });
                    continue;
                }
                let raw = s.get_raw(k)?;
                if let Some(id) = parse_i64(raw.as_deref()) {
                    tx.guard(k.clone(), raw);
                    // Its status, for dependents later in the batch.
                    if let Some(l) = s.load(&[id])?.pop().flatten() {
                        batch_status.insert(id, l.rec.task.status);
                        tx.guard(s.keys.task(id), Some(l.raw));
                    }
                    out.push(Enqueued { id, inserted: false });
                    continue;
                }
                tx.guard(k.clone(), None);
                batch_keys.insert(k.clone(), ids[i]);
            }
            let id = ids[i];
            let parents = t.parent_ids(&out);
            let seen: Vec<(i64, Option<Status>)> = parents
                .iter()
                .map(|p| (*p, batch_status.get(p).copied().or_else(|| loaded.get(p).map(|l| l.rec.task.status))))
                .collect();
            let decision = if seen.is_empty() { Settle::Release } else { rules::settle(&seen) };
            let task = new_task(id, &t.task, Status::Queued, now);
            let rec = match decision {
                Settle::Release => Record::live(task),
                Settle::Wait => Record::live(Task { status: Status::Waiting, ..task }),
                Settle::Cancel(why) => {
                    let mut task = task;
                    task.error = Some(why);
                    finished(s, task, Status::Cancelled, now)?
                }
            };
            batch_status.insert(id, rec.task.status);
            tx.put(None, Some(&rec))?;
            if !parents.is_empty() {
                let list: Vec<String> = parents.iter().map(i64::to_string).collect();
                tx.c(&["SET", &s.keys.deps(id), &list.join(",")]);
                for p in &parents {
                    tx.c(&["SADD", &s.keys.kids(*p), &id.to_string()]);
                }
            }
            out.push(Enqueued { id, inserted: true });
        }
        tx.wakes = true;
        Ok(if tx.commit_all()? { Some(out) } else { None })
    })
}

/// The parents of each task, in order.
pub(super) fn dependencies(s: &RedisStore, ids: &[i64]) -> Result<Vec<Vec<i64>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| s.keys.deps(*id)).collect();
    let raws: Vec<Option<String>> = s.q(redis::cmd("MGET").arg(&keys))?;
    Ok(raws
        .into_iter()
        .map(|r| r.map(|t| t.split(',').filter_map(|p| p.parse().ok()).collect()).unwrap_or_default())
        .collect())
}

/// Settles the waiting dependents of tasks that may just have finished,
/// and theirs in turn when they end cancelled.
pub(super) fn settle_after(s: &RedisStore, ids: impl Iterator<Item = i64>) -> Result<()> {
    let mut frontier: Vec<i64> = ids.collect();
    while !frontier.is_empty() {
        let mut kids: Vec<i64> = Vec::new();
        let mut pipe = redis::pipe();
        for id in &frontier {
            pipe.cmd("SMEMBERS").arg(s.keys.kids(*id));
        }
        let sets: Vec<Vec<i64>> = s.pool.run(|c| pipe.query(c))?;
        for set in sets {
            kids.extend(set);
        }
        kids.sort_unstable();
        kids.dedup();
        if kids.is_empty() {
            return Ok(());
        }
        frontier = settle(s, &kids)?;
    }
    Ok(())
}

/// Settles waiting tasks `ids` from their parents as they are now;
/// returns those it cancelled.
fn settle(s: &RedisStore, ids: &[i64]) -> Result<Vec<i64>> {
    let deps = dependencies(s, ids)?;
    let parents_of: HashMap<i64, Vec<i64>> = ids.iter().copied().zip(deps).collect();
    let out = per_item(
        s,
        ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) = l.filter(|l| l.rec.task.status == Status::Waiting) else { return Ok(Ok(None)) };
            let parents = parents_of.get(id).cloned().unwrap_or_default();
            let loaded = tx.s.load(&parents)?;
            let seen: Vec<(i64, Option<Status>)> =
                parents.iter().zip(&loaded).map(|(p, l)| (*p, l.as_ref().map(|l| l.rec.task.status))).collect();
            for (p, pl) in parents.iter().zip(&loaded) {
                tx.guard(tx.s.keys.task(*p), pl.as_ref().map(|l| l.raw.clone()));
            }
            let mut t = l.rec.task.clone();
            match rules::settle(&seen) {
                Settle::Wait => Ok(Ok(None)),
                Settle::Release => {
                    t.status = Status::Queued;
                    tx.put(Some(l), Some(&Record::live(t)))?;
                    Ok(Ok(None))
                }
                Settle::Cancel(why) => {
                    t.error = Some(why);
                    let rec = finished(tx.s, t, Status::Cancelled, tx.now)?;
                    tx.put(Some(l), Some(&rec))?;
                    Ok(Ok(Some(*id)))
                }
            }
        },
    )?;
    Ok(out.into_iter().filter_map(|r| r.ok().flatten()).collect())
}

/// Settles every waiting task (run by `recover`).
pub(super) fn sweep(s: &RedisStore) -> Result<()> {
    let ids: Vec<i64> = s.q(redis::cmd("SMEMBERS").arg(s.keys.k("waiting")))?;
    if ids.is_empty() {
        return Ok(());
    }
    let cancelled = settle(s, &ids)?;
    settle_after(s, cancelled.into_iter())
}
