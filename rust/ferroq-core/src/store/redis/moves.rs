//! The guarded moves of single tasks: heartbeat, progress, complete, fail,
//! cancel, release, retry, requeue, recover, expire, delete and the
//! setters. Each item is decided from its record by the shared rules and
//! committed on its own guard ([`per_item`]); an item whose record changed
//! meanwhile is read and decided again.

use super::codec::Record;
use super::tx::{Loaded, Tx};
use super::{admin, RedisStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Abandon, Guard};
use crate::store::{
    CancelParams, CompleteParams, FailParams, HeartbeatOutcome, HeartbeatParams, OnTimeout, ProgressParams,
    RecoverParams, ReleaseParams, RequeueParams, RetryParams, SetMetadataParams, SetPriorityParams, SetRunAtParams,
};
use crate::task::{Status, Task};
use std::collections::HashMap;

/// Decides and commits each item on its own guard: `decide` adds the
/// item's writes to the Tx (only when it returns `Ok(Ok(_))`) or names the
/// item's error. Items that lost a race are decided again on a fresh read.
pub(super) fn per_item<P, T>(
    s: &RedisStore,
    items: &[P],
    id_of: impl Fn(&P) -> i64,
    mut decide: impl FnMut(&mut Tx<'_>, &P, Option<&Loaded>) -> Result<Result<T>>,
) -> Result<Vec<Result<T>>> {
    let mut out: Vec<Option<Result<T>>> = items.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..items.len()).collect();
    // What a commit that reported failure meant to write, and its outcome:
    // a commit whose reply was lost (a broken connection) is sent again by
    // the pool and then fails its guards, having applied the first time;
    // finding its own bytes on the next read, the item is done.
    let mut meant: HashMap<usize, (Option<Vec<u8>>, T)> = HashMap::new();
    let mut rounds = 0u32;
    while !pending.is_empty() {
        rounds += 1;
        if rounds > 1_000 {
            return Err(Error::Storage("too many concurrent changes to the same tasks; try again".into()));
        }
        let ids: Vec<i64> = pending.iter().map(|i| id_of(&items[*i])).collect();
        let loaded = s.load(&ids)?;
        let mut tx = Tx::new(s, s.clock.now_ms());
        let mut decided = Vec::with_capacity(pending.len());
        for (k, &i) in pending.iter().enumerate() {
            let now_raw = loaded[k].as_ref().map(|l| &l.raw);
            if let Some((bytes, _)) = meant.get(&i) {
                if bytes.as_ref() == now_raw {
                    if let Some((_, v)) = meant.remove(&i) {
                        out[i] = Some(Ok(v));
                    }
                    continue;
                }
            }
            meant.remove(&i);
            let g = tx.item();
            decided.push((i, g, decide(&mut tx, &items[i], loaded[k].as_ref())?));
        }
        let wrote: Vec<Option<Option<Vec<u8>>>> = decided.iter().map(|(_, g, _)| tx.wrote(*g)).collect();
        let flags = tx.commit_each()?;
        let mut again = Vec::new();
        for ((i, g, r), wrote) in decided.into_iter().zip(wrote) {
            match r {
                Err(e) => out[i] = Some(Err(e)),
                Ok(v) if flags.get(g).copied().unwrap_or(false) => out[i] = Some(Ok(v)),
                Ok(v) => {
                    if let Some(bytes) = wrote {
                        meant.insert(i, (bytes, v));
                    }
                    again.push(i);
                }
            }
        }
        pending = again;
    }
    Ok(out.into_iter().map(|o| o.unwrap_or_else(|| Err(Error::Storage("item not decided".into())))).collect())
}

/// Explains a failed guard from the record as read.
fn why(l: Option<&Loaded>, id: i64, worker: Option<&str>, guard: Guard, action: &'static str) -> Error {
    rules::explain(l.map(|l| l.rec.task.status), id, worker, guard, action)
}

/// The task if it is running and held by `worker` (anyone when `force`).
fn held<'a>(l: Option<&'a Loaded>, worker: &str, force: bool) -> Option<&'a Loaded> {
    l.filter(|l| l.rec.task.status == Status::Running && (force || l.rec.task.worker.as_deref() == Some(worker)))
}

/// The record of `t` finished with `status` now: purge time from the
/// task's TTL, else its queue's retention, else the store's (for a failed
/// task, its queue's dead retention first). A task failing in a queue with
/// a dead-letter queue is filed there, its home queue kept as its origin.
pub(super) fn finished(s: &RedisStore, mut t: Task, status: Status, now: i64) -> Result<Record> {
    let o = admin::queue_options(s, &t.queue)?;
    let dead = status == Status::Failed;
    let retention = (if dead { o.dead_retention_ms } else { None })
        .or(t.result_ttl_ms)
        .or(o.retention_ms)
        .or(s.cfg.store.retention_ms);
    let mut origin = None;
    if let (true, Some(d)) = (dead, o.dead_letter) {
        origin = Some(std::mem::replace(&mut t.queue, d));
    }
    t.status = status;
    t.lease_until = None;
    t.finished_at = Some(now);
    Ok(Record { task: t, purge_at: retention.map(|r| now.saturating_add(r)), origin })
}

/// A running task put back in the queue (no longer leased).
fn unlease(mut t: Task) -> Task {
    t.status = Status::Queued;
    t.lease_until = None;
    t.worker = None;
    t
}

fn keep(t: Task) -> Record {
    Record::live(t)
}

/// [`Store::heartbeat`](crate::store::Store::heartbeat).
pub(super) fn heartbeat(s: &RedisStore, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
    rules::check_lease(p.lease_ms)?;
    let out = per_item(
        s,
        &p.ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) = held(l, &p.worker, p.force) else {
                return Ok(Ok(HeartbeatOutcome { id: *id, held: false, cancel_requested: false }));
            };
            let mut t = l.rec.task.clone();
            t.lease_until = Some(tx.now + p.lease_ms);
            tx.put(Some(l), Some(&keep(t.clone())))?;
            Ok(Ok(HeartbeatOutcome { id: *id, held: true, cancel_requested: t.cancel_requested }))
        },
    )?;
    out.into_iter().collect()
}

/// [`Store::progress`](crate::store::Store::progress).
pub(super) fn progress(s: &RedisStore, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            if let Err(e) = rules::check_progress(x.progress) {
                return Ok(Err(e));
            }
            let Some(l) = held(l, &x.worker, x.force) else {
                return Ok(Err(why(l, x.id, Some(&x.worker), rules::held_or_forced(x.force), "report progress of")));
            };
            let mut t = l.rec.task.clone();
            t.progress = Some(x.progress);
            tx.put(Some(l), Some(&keep(t)))?;
            Ok(Ok(()))
        },
    )
}

/// [`Store::complete`](crate::store::Store::complete).
pub(super) fn complete(s: &RedisStore, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
    let max = s.cfg.store.max_payload;
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            if let Err(e) = rules::check_result_size(&x.result, max) {
                return Ok(Err(e));
            }
            let Some(l) = held(l, &x.worker, x.force) else {
                return Ok(Err(why(l, x.id, Some(&x.worker), rules::held_or_forced(x.force), "complete")));
            };
            let mut t = l.rec.task.clone();
            // A cancel sticks: the task ends cancelled, its result kept.
            let to = if t.cancel_requested { Status::Cancelled } else { Status::Done };
            t.result = Some(x.result.clone());
            let rec = finished(s, t, to, tx.now)?;
            tx.put(Some(l), Some(&rec))?;
            Ok(Ok(()))
        },
    )
}

/// [`Store::fail`](crate::store::Store::fail).
pub(super) fn fail(s: &RedisStore, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            let Some(l) = held(l, &x.worker, x.force) else {
                return Ok(Err(why(l, x.id, Some(&x.worker), rules::held_or_forced(x.force), "fail")));
            };
            let mut t = l.rec.task.clone();
            let backoff = t.backoff.as_ref().map(|b| b.encode());
            let delay = if t.cancel_requested {
                None
            } else {
                rules::retry_delay(x.retry, t.attempts, t.max_attempts, backoff.as_deref(), s.cfg.store.default_backoff)
            };
            t.error = Some(x.error.clone());
            if let Some(d) = delay {
                let mut t = unlease(t);
                t.run_at = tx.now + d;
                tx.put(Some(l), Some(&keep(t)))?;
                return Ok(Ok(Status::Queued));
            }
            let to = if t.cancel_requested { Status::Cancelled } else { Status::Failed };
            let rec = finished(s, t, to, tx.now)?;
            tx.put(Some(l), Some(&rec))?;
            Ok(Ok(to))
        },
    )
}

/// [`Store::cancel`](crate::store::Store::cancel).
pub(super) fn cancel(s: &RedisStore, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            if let Some(w) = &x.worker {
                let Some(l) = held(l, w, false) else {
                    return Ok(Err(why(l, x.id, Some(w), Guard::Held, "cancel")));
                };
                let mut t = l.rec.task.clone();
                t.error = Some(rules::CANCELLED.into());
                let rec = finished(s, t, Status::Cancelled, tx.now)?;
                tx.put(Some(l), Some(&rec))?;
                return Ok(Ok(Status::Cancelled));
            }
            let Some(found) = l else { return Ok(Err(rules::task_not_found(x.id))) };
            let mut t = found.rec.task.clone();
            match t.status {
                Status::Queued | Status::Waiting => {
                    t.error = Some(rules::CANCELLED.into());
                    let rec = finished(s, t, Status::Cancelled, tx.now)?;
                    tx.put(Some(found), Some(&rec))?;
                    Ok(Ok(Status::Cancelled))
                }
                Status::Running => {
                    t.cancel_requested = true;
                    tx.put(Some(found), Some(&keep(t)))?;
                    Ok(Ok(Status::Running))
                }
                _ => Ok(Err(why(l, x.id, None, Guard::Unfinished, "cancel"))),
            }
        },
    )
}

/// [`Store::release`](crate::store::Store::release).
pub(super) fn release(s: &RedisStore, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            let Some(l) = held(l, &x.worker, x.force) else {
                return Ok(Err(why(l, x.id, Some(&x.worker), rules::held_or_forced(x.force), "release")));
            };
            let mut t = l.rec.task.clone();
            if t.cancel_requested {
                t.error = Some(rules::CANCELLED.into());
                let rec = finished(s, t, Status::Cancelled, tx.now)?;
                tx.put(Some(l), Some(&rec))?;
            } else {
                t.attempts = t.attempts.saturating_sub(1);
                tx.put(Some(l), Some(&keep(unlease(t))))?;
            }
            Ok(Ok(()))
        },
    )
}

/// A finished task back in its (home) queue with fresh attempts, now.
fn fresh(rec: &Record, now: i64) -> Record {
    let mut t = rec.task.clone();
    if let Some(home) = &rec.origin {
        t.queue = home.clone();
    }
    t.status = Status::Queued;
    t.run_at = now;
    t.attempts = 0;
    t.lease_until = None;
    t.worker = None;
    t.progress = None;
    t.result = None;
    t.started_at = None;
    t.finished_at = None;
    t.expires_at = None;
    t.cancel_requested = false;
    keep(t)
}

/// [`Store::retry`](crate::store::Store::retry).
pub(super) fn retry(s: &RedisStore, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
    back_to_queue(s, &p.iter().map(|x| x.id).collect::<Vec<_>>(), Guard::Retryable, "retry")
}

/// [`Store::requeue`](crate::store::Store::requeue).
pub(super) fn requeue(s: &RedisStore, p: &[RequeueParams]) -> Result<Vec<Result<()>>> {
    back_to_queue(s, &p.iter().map(|x| x.id).collect::<Vec<_>>(), Guard::Finished, "requeue")
}

fn back_to_queue(s: &RedisStore, ids: &[i64], guard: Guard, action: &'static str) -> Result<Vec<Result<()>>> {
    per_item(
        s,
        ids,
        |id| *id,
        |tx, id, l| {
            let ok = l.is_some_and(|l| match guard {
                Guard::Retryable => matches!(l.rec.task.status, Status::Failed | Status::Cancelled | Status::Expired),
                _ => l.rec.task.status.is_finished(),
            });
            let (true, Some(l)) = (ok, l) else { return Ok(Err(why(l, *id, None, guard, action))) };
            tx.put(Some(l), Some(&fresh(&l.rec, tx.now)))?;
            Ok(Ok(()))
        },
    )
}

/// [`Store::delete`](crate::store::Store::delete).
pub(super) fn delete(s: &RedisStore, ids: &[i64]) -> Result<Vec<Result<()>>> {
    per_item(
        s,
        ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) = l.filter(|l| l.rec.task.status.is_finished()) else {
                return Ok(Err(why(l, *id, None, Guard::Finished, "delete")));
            };
            tx.put(Some(l), None)?;
            Ok(Ok(()))
        },
    )
}

/// Queues with an answer deadline, and their policy.
fn timeout_policies(s: &RedisStore) -> Result<HashMap<String, OnTimeout>> {
    Ok(admin::all_queue_options(s)?
        .into_iter()
        .filter(|o| o.answer_timeout_ms.is_some())
        .map(|o| (o.queue, o.on_timeout))
        .collect())
}

/// [`Store::recover`](crate::store::Store::recover).
pub(super) fn recover(s: &RedisStore, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
    let now = s.clock.now_ms();
    let lease = s.keys.k("lease");
    let ids: Vec<i64> = match &p.worker {
        Some(_) => s.q(redis::cmd("ZRANGE").arg(&lease).arg(0).arg(-1))?,
        None => s.q(redis::cmd("ZRANGEBYSCORE").arg(&lease).arg("-inf").arg(format!("({now}")))?,
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let timeouts = timeout_policies(s)?;
    let out = per_item(
        s,
        &ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) = l.filter(|l| {
                let t = &l.rec.task;
                t.status == Status::Running
                    && match &p.worker {
                        Some(w) => t.worker.as_deref() == Some(w.as_str()),
                        None => t.lease_until.is_some_and(|u| u < tx.now),
                    }
            }) else {
                return Ok(Err(rules::task_not_found(*id)));
            };
            let t = l.rec.task.clone();
            let timeout = timeouts.get(&t.queue).copied();
            let (what, reason) = rules::abandon(
                t.cancel_requested,
                timeout,
                p.worker.is_some(),
                t.worker.as_deref(),
                t.attempts,
                t.max_attempts,
            );
            match what {
                Abandon::Requeue => {
                    let mut n = unlease(t);
                    n.run_at = n.run_at.min(tx.now);
                    n.error = Some(reason);
                    tx.put(Some(l), Some(&keep(n)))?;
                    Ok(Ok((*id, Status::Queued)))
                }
                Abandon::Release => {
                    let mut n = unlease(t);
                    n.attempts = n.attempts.saturating_sub(1);
                    n.run_at = n.run_at.min(tx.now);
                    n.error = Some(reason);
                    tx.put(Some(l), Some(&keep(n)))?;
                    Ok(Ok((*id, Status::Queued)))
                }
                Abandon::Finish(to) => {
                    let mut n = t;
                    n.error = Some(reason);
                    let rec = finished(s, n, to, tx.now)?;
                    tx.put(Some(l), Some(&rec))?;
                    Ok(Ok((*id, to)))
                }
            }
        },
    )?;
    let _ = now;
    Ok(out.into_iter().filter_map(|r| r.ok()).collect())
}

/// [`Store::expire`](crate::store::Store::expire).
pub(super) fn expire(s: &RedisStore) -> Result<Vec<i64>> {
    let now = s.clock.now_ms();
    let ids: Vec<i64> = s.q(redis::cmd("ZRANGEBYSCORE").arg(s.keys.k("deadline")).arg("-inf").arg(now))?;
    let out = per_item(
        s,
        &ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) =
                l.filter(|l| l.rec.task.status == Status::Queued && l.rec.task.expires_at.is_some_and(|e| e <= tx.now))
            else {
                return Ok(Err(rules::task_not_found(*id)));
            };
            let mut t = l.rec.task.clone();
            t.error = Some(rules::DEADLINE_PASSED.into());
            let rec = finished(s, t, Status::Expired, tx.now)?;
            tx.put(Some(l), Some(&rec))?;
            Ok(Ok(*id))
        },
    )?;
    let mut ids: Vec<i64> = out.into_iter().filter_map(|r| r.ok()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Applies `f` to queued tasks (set_priority, set_run_at).
fn on_queued<P>(
    s: &RedisStore,
    p: &[P],
    id_of: impl Fn(&P) -> i64,
    action: &'static str,
    f: impl Fn(&mut Task, &P),
) -> Result<Vec<Result<()>>> {
    per_item(s, p, &id_of, |tx, x, l| {
        let Some(l) = l.filter(|l| l.rec.task.status == Status::Queued) else {
            return Ok(Err(why(l, id_of(x), None, Guard::Queued, action)));
        };
        let mut t = l.rec.task.clone();
        f(&mut t, x);
        tx.put(Some(l), Some(&keep(t)))?;
        Ok(Ok(()))
    })
}

/// [`Store::set_priority`](crate::store::Store::set_priority).
pub(super) fn set_priority(s: &RedisStore, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>> {
    on_queued(s, p, |x| x.id, "set the priority of", |t, x| t.priority = x.priority)
}

/// [`Store::set_run_at`](crate::store::Store::set_run_at).
pub(super) fn set_run_at(s: &RedisStore, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>> {
    on_queued(s, p, |x| x.id, "set the run_at of", |t, x| t.run_at = x.run_at)
}

/// [`Store::set_metadata`](crate::store::Store::set_metadata).
pub(super) fn set_metadata(s: &RedisStore, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>> {
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            if let Some(m) = &x.metadata {
                if let Err(e) = crate::task::check_metadata(m) {
                    return Ok(Err(e));
                }
            }
            let Some(l) = l else { return Ok(Err(rules::task_not_found(x.id))) };
            let mut rec = l.rec.clone();
            rec.task.metadata = x.metadata.clone();
            tx.put(Some(l), Some(&rec))?;
            Ok(Ok(()))
        },
    )
}
