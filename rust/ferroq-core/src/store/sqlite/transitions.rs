//! The guarded transitions: heartbeat, progress, complete, fail, cancel,
//! release, retry, recover and expire. Each item is one conditional
//! statement in its shard's transaction; when the guard matches no row,
//! `explain` reads the task's status and `rules::explain` names the error.

use super::events::{self, Moves};
use super::tx::WriteTx;
use super::{sql, SqliteStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Abandon, Guard};
use crate::store::{
    CancelParams, CompleteParams, FailParams, HeartbeatOutcome, HeartbeatParams, OnTimeout, ProgressParams,
    RecoverParams, ReleaseParams, RetryParams,
};
use crate::task::Status;
use rusqlite::{params, OptionalExtension};
use std::cell::RefCell;
use std::collections::HashMap;

/// A running task whose lease ended, as `EXPIRED_LEASES` reads it:
/// (local id, attempts, max_attempts, run_at, worker, queue, cancel flag).
type ExpiredLease = (i64, u32, u32, i64, Option<String>, String, bool);

/// What fail and release read of a running task (`FAIL_LOOKUP`):
/// (attempts, max_attempts, backoff, cancel flag, worker).
type Held = (u32, u32, Option<String>, bool, Option<String>);

/// The worker a guarded statement must match: `worker`, or anyone (NULL)
/// when the caller forces the move.
fn holder(worker: &str, force: bool) -> Option<&str> {
    (!force).then_some(worker)
}

/// Reads what fail and release need of a running task held by `worker`
/// (anyone when None).
fn held(tx: &WriteTx, local: i64, worker: Option<&str>) -> Result<Option<Held>> {
    Ok(tx
        .prepare_cached(sql::FAIL_LOOKUP)?
        .query_row(params![local, worker], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0, r.get(4)?))
        })
        .optional()?)
}

impl SqliteStore {
    /// Names the reason a guarded statement on task `id` changed nothing.
    pub(super) fn explain(
        &self,
        tx: &WriteTx,
        id: i64,
        local: i64,
        worker: Option<&str>,
        guard: Guard,
        action: &'static str,
    ) -> Result<Error> {
        let found: Option<i64> = tx.prepare_cached(sql::STATUS_OF)?.query_row([local], |r| r.get(0)).optional()?;
        let status = found.map(Status::from_code).transpose()?;
        Ok(rules::explain(status, id, worker, guard, action))
    }

    /// Moves a task of shard `shard` to `task_done` if it is in status
    /// `from` (and held by `worker` when given), records the finish, and
    /// settles its dependents (`flow.rs`). True when it moved.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn move_to_done(
        &self,
        tx: &WriteTx,
        shard: usize,
        local: i64,
        to: Status,
        result: Option<&[u8]>,
        error: Option<&str>,
        from: Status,
        worker: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let moved = self.move_to_done_unrecorded(tx, local, to, result, error, from, worker, now)?;
        if moved {
            events::record_moves(self, tx, Moves::Finished, &[local])?;
            self.after_finish(tx, shard, &[local])?;
        }
        Ok(moved)
    }

    /// [`Self::move_to_done`] without recording the finish: the caller
    /// records it (`events::record_moves`) before its transaction
    /// records anything else, so the feed keeps the order of the moves.
    #[allow(clippy::too_many_arguments)]
    fn move_to_done_unrecorded(
        &self,
        tx: &WriteTx,
        local: i64,
        to: Status,
        result: Option<&[u8]>,
        error: Option<&str>,
        from: Status,
        worker: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let moved = tx.prepare_cached(sql::MOVE_TO_DONE)?.execute(params![
            local,
            to.code(),
            result,
            error,
            now,
            self.config.retention_ms,
            from.code(),
            worker,
            result.map(rules::checksum)
        ])?;
        if moved == 1 {
            tx.prepare_cached(sql::DELETE_ACTIVE)?.execute([local])?;
        }
        Ok(moved == 1)
    }
}

/// [`Store::heartbeat`](crate::store::Store::heartbeat).
pub(super) fn heartbeat(store: &SqliteStore, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
    rules::check_lease(p.lease_ms)?;
    let until = store.clock.now_ms() + p.lease_ms;
    let worker = holder(&p.worker, p.force);
    let results = store.per_item(
        &p.ids,
        |id| *id,
        |tx, _, local, id| {
            let flag: Option<i64> =
                tx.prepare_cached(sql::HEARTBEAT)?.query_row(params![local, worker, until], |r| r.get(0)).optional()?;
            Ok(Ok(HeartbeatOutcome { id: *id, held: flag.is_some(), cancel_requested: flag == Some(1) }))
        },
    )?;
    Ok(results
        .into_iter()
        .zip(&p.ids)
        .map(|(r, id)| r.unwrap_or(HeartbeatOutcome { id: *id, held: false, cancel_requested: false }))
        .collect())
}

/// [`Store::progress`](crate::store::Store::progress).
pub(super) fn progress(store: &SqliteStore, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
    store.per_item(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if let Err(e) = rules::check_progress(x.progress) {
                return Ok(Err(e));
            }
            let worker = holder(&x.worker, x.force);
            let n = tx.prepare_cached(sql::PROGRESS)?.execute(params![local, worker, x.progress])?;
            if n == 1 {
                return Ok(Ok(()));
            }
            let guard = rules::held_or_forced(x.force);
            Ok(Err(store.explain(tx, x.id, local, Some(&x.worker), guard, "report progress of")?))
        },
    )
}

/// [`Store::complete`](crate::store::Store::complete). A shard's
/// completions record their events together, at the end of its
/// transaction (nothing else in it records any).
pub(super) fn complete(store: &SqliteStore, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    let moved = RefCell::new(Vec::with_capacity(p.len()));
    store.per_item_then(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if let Err(e) = rules::check_result_size(&x.result, store.config.max_payload) {
                return Ok(Err(e));
            }
            // A task whose cancel was asked ends cancelled, its result kept
            // (see `sql::MOVE_TO_DONE`).
            let worker = holder(&x.worker, x.force);
            let result = Some(x.result.as_slice());
            if store.move_to_done_unrecorded(tx, local, Status::Done, result, None, Status::Running, worker, now)? {
                moved.borrow_mut().push(local);
                return Ok(Ok(()));
            }
            let guard = rules::held_or_forced(x.force);
            Ok(Err(store.explain(tx, x.id, local, Some(&x.worker), guard, "complete")?))
        },
        |tx, s| {
            let moved = std::mem::take(&mut *moved.borrow_mut());
            events::record_moves(store, tx, Moves::Finished, &moved)?;
            store.after_finish(tx, s, &moved)
        },
    )
}

/// [`Store::fail`](crate::store::Store::fail).
pub(super) fn fail(store: &SqliteStore, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
    let now = store.clock.now_ms();
    store.per_item(
        p,
        |x| x.id,
        |tx, s, local, x| {
            let Some((attempts, max_attempts, backoff, cancel, worker)) = held(tx, local, holder(&x.worker, x.force))?
            else {
                let guard = rules::held_or_forced(x.force);
                return Ok(Err(store.explain(tx, x.id, local, Some(&x.worker), guard, "fail")?));
            };
            let worker = worker.as_deref();
            if cancel {
                // A cancel sticks: the attempt's end is the task's end.
                let why = Some(x.error.as_str());
                store.move_to_done(tx, s, local, Status::Cancelled, None, why, Status::Running, worker, now)?;
                return Ok(Ok(Status::Cancelled));
            }
            let delay =
                rules::retry_delay(x.retry, attempts, max_attempts, backoff.as_deref(), store.config.default_backoff);
            if let Some(d) = delay {
                tx.prepare_cached(sql::REQUEUE)?.execute(params![local, worker, now + d, x.error])?;
                return Ok(Ok(Status::Queued));
            }
            store.move_to_done(tx, s, local, Status::Failed, None, Some(&x.error), Status::Running, worker, now)?;
            Ok(Ok(Status::Failed))
        },
    )
}

/// [`Store::cancel`](crate::store::Store::cancel).
pub(super) fn cancel(store: &SqliteStore, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
    let now = store.clock.now_ms();
    store.per_item(
        p,
        |x| x.id,
        |tx, s, local, x| {
            let why = Some(rules::CANCELLED);
            if let Some(w) = &x.worker {
                if store.move_to_done(tx, s, local, Status::Cancelled, None, why, Status::Running, Some(w), now)? {
                    return Ok(Ok(Status::Cancelled));
                }
                return Ok(Err(store.explain(tx, x.id, local, Some(w), Guard::Held, "cancel")?));
            }
            if store.move_to_done(tx, s, local, Status::Cancelled, None, why, Status::Queued, None, now)? {
                return Ok(Ok(Status::Cancelled));
            }
            if store.move_to_done(tx, s, local, Status::Cancelled, None, why, Status::Waiting, None, now)? {
                return Ok(Ok(Status::Cancelled));
            }
            if tx.prepare_cached(sql::FLAG_CANCEL)?.execute([local])? == 1 {
                return Ok(Ok(Status::Running));
            }
            Ok(Err(store.explain(tx, x.id, local, None, Guard::Unfinished, "cancel")?))
        },
    )
}

/// [`Store::release`](crate::store::Store::release).
pub(super) fn release(store: &SqliteStore, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    store.per_item(
        p,
        |x| x.id,
        |tx, s, local, x| {
            let Some((_, _, _, cancel, worker)) = held(tx, local, holder(&x.worker, x.force))? else {
                let guard = rules::held_or_forced(x.force);
                return Ok(Err(store.explain(tx, x.id, local, Some(&x.worker), guard, "release")?));
            };
            if cancel {
                // A cancel sticks: a released task whose cancel was asked
                // does not go back to the queue.
                let why = Some(rules::CANCELLED);
                let w = worker.as_deref();
                store.move_to_done(tx, s, local, Status::Cancelled, None, why, Status::Running, w, now)?;
            } else {
                tx.prepare_cached(sql::RELEASE)?.execute(params![local, worker])?;
            }
            Ok(Ok(()))
        },
    )
}

/// [`Store::retry`](crate::store::Store::retry).
pub(super) fn retry(store: &SqliteStore, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    store.per_item(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if tx.prepare_cached(sql::RETRY_FROM_DONE)?.execute(params![local, now])? == 1 {
                tx.prepare_cached(sql::DELETE_DONE)?.execute([local])?;
                return Ok(Ok(()));
            }
            Ok(Err(store.explain(tx, x.id, local, None, Guard::Retryable, "retry")?))
        },
    )
}

/// [`Store::recover`](crate::store::Store::recover).
pub(super) fn recover(store: &SqliteStore, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
    let now = store.clock.now_ms();
    let timeouts = store.read(0, |conn| {
        let mut stmt = conn.prepare_cached(sql::TIMEOUT_QUEUES)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, OnTimeout::from_code(r.get(1)?))))?;
        Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
    })?;
    let mut out = Vec::new();
    for s in 0..store.shards.len() {
        let moved = store.write(s, |tx| {
            let expired: Vec<ExpiredLease> = tx
                .prepare_cached(sql::EXPIRED_LEASES)?
                .query_map(params![now, p.worker], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get::<_, i64>(6)? != 0))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut moved = Vec::new();
            for (local, attempts, max_attempts, run_at, worker, queue, cancel) in expired {
                let timeout = timeouts.get(&queue).copied();
                let (what, why) =
                    rules::abandon(cancel, timeout, p.worker.is_some(), worker.as_deref(), attempts, max_attempts);
                let status = match what {
                    // Back in its old place in the queue (its original run_at),
                    // not behind everything sent since: it was next once already.
                    Abandon::Requeue => {
                        tx.prepare_cached(sql::REQUEUE)?.execute(params![local, worker, run_at.min(now), why])?;
                        Status::Queued
                    }
                    Abandon::Release => {
                        tx.prepare_cached(sql::SWITCH_OUT)?.execute(params![local, why])?;
                        Status::Queued
                    }
                    Abandon::Finish(to) => {
                        store.move_to_done(tx, s, local, to, None, Some(&why), Status::Running, None, now)?;
                        to
                    }
                };
                moved.push((store.global(s, local), status));
            }
            Ok(moved)
        })?;
        out.extend(moved);
    }
    if !out.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}

/// [`Store::expire`](crate::store::Store::expire).
pub(super) fn expire(store: &SqliteStore) -> Result<Vec<i64>> {
    let now = store.clock.now_ms();
    let mut out = Vec::new();
    for s in 0..store.shards.len() {
        let moved = store.write(s, |tx| {
            let due: Vec<i64> = tx
                .prepare_cached(sql::PAST_DEADLINE)?
                .query_map([now], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let why = Some(rules::DEADLINE_PASSED);
            let mut moved = Vec::new();
            for local in due {
                if store.move_to_done(tx, s, local, Status::Expired, None, why, Status::Queued, None, now)? {
                    moved.push(store.global(s, local));
                }
            }
            Ok(moved)
        })?;
        out.extend(moved);
    }
    if !out.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}
