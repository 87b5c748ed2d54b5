//! Steering tasks from outside: `start` (with the switch of a serial
//! queue), `active`, `requeue`, `set_priority`, `set_run_at`,
//! `set_metadata`, and the queue options they read.
//!
//! Serial queues are serialised on shard 0's write lock (see
//! `claim.rs`, `serial_handout`): every hand-out of a serial queue —
//! claim, `start`, `active` — takes it first, in this process and in
//! others, and looks up the queue's running tasks in every shard under it.
//! A switch (`start` on a serial queue) puts the running task back and
//! then starts the chosen one, both under that lock; with several shards
//! they are separate commits, so a crash between them leaves no task
//! running, never two.

use super::events;
use super::tx::WriteTx;
use super::{sql, SqliteStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Guard};
use crate::store::{
    ActiveParams, OnTimeout, PauseParams, QueueOptions, RequeueParams, SetMetadataParams, SetPriorityParams,
    SetRunAtParams, StartParams,
};
use crate::task::{Status, Task};
use rusqlite::{params, Connection, OptionalExtension, Row};

/// Queue options from a row of `QUEUE_OPTIONS_GET` / `QUEUE_OPTIONS_ALL`.
fn options_row(r: &Row) -> rusqlite::Result<QueueOptions> {
    Ok(QueueOptions {
        queue: r.get(0)?,
        serial: r.get::<_, i64>(1)? != 0,
        answer_timeout_ms: r.get(2)?,
        on_timeout: OnTimeout::from_code(r.get(3)?),
        retention_ms: r.get(4)?,
        paused: r.get::<_, i64>(5)? != 0,
        aging_ms: r.get(6)?,
        dead_letter: r.get(7)?,
        dead_retention_ms: r.get(8)?,
    })
}

/// A queue's options as shard 0 records them (the defaults when none).
fn read_options(conn: &Connection, queue: &str) -> Result<QueueOptions> {
    let found = conn.prepare_cached(sql::QUEUE_OPTIONS_GET)?.query_row([queue], options_row).optional()?;
    Ok(found.unwrap_or_else(|| QueueOptions { queue: queue.to_string(), ..QueueOptions::default() }))
}

impl SqliteStore {
    /// Puts running task `local` of shard `s` back in the queue without
    /// counting the attempt (it is cancelled instead when its cancel was
    /// asked: a cancel sticks).
    fn switch_out(&self, tx: &WriteTx, s: usize, local: i64, cancel: bool, now: i64) -> Result<()> {
        if cancel {
            let why = Some(rules::CANCELLED);
            self.move_to_done(tx, s, local, Status::Cancelled, None, why, Status::Running, None, now)?;
        } else {
            tx.prepare_cached(sql::SWITCH_OUT)?.execute(params![local, Option::<&str>::None])?;
        }
        Ok(())
    }

    /// Starts queued task `local` of shard `s` for `x.worker` with a lease
    /// of `lease_ms`, in the caller's transaction.
    fn start_in(&self, tx: &WriteTx, s: usize, local: i64, x: &StartParams, lease_ms: i64) -> Result<Result<Task>> {
        let now = self.clock.now_ms();
        let started = self.query_tasks(tx, s, sql::START, params![local, x.worker, now + lease_ms, now])?.pop();
        match started {
            Some(t) => {
                // The triggers leave claims out (see `sql::EVENT_TRIGGERS`).
                events::record_claims(self, tx, &[&t])?;
                Ok(Ok(t))
            }
            None => Ok(Err(self.explain(tx, x.id, local, Some(&x.worker), Guard::Queued, "start")?)),
        }
    }

    /// Runs `f` in shard `s`'s transaction: `tx0` when `s` is 0 (the caller
    /// holds shard 0's), else a transaction of its own.
    fn in_shard<T>(&self, tx0: &WriteTx, s: usize, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        if s == 0 {
            f(tx0).map_err(|e| self.shard_err(0, e))
        } else {
            self.write(s, f)
        }
    }

    /// One `start`.
    fn start_one(&self, x: &StartParams) -> Result<Result<Task>> {
        if let Err(e) = rules::check_start(&x.worker, x.lease_ms) {
            return Ok(Err(e));
        }
        let Some((s, local)) = self.split(x.id) else { return Ok(Err(rules::task_not_found(x.id))) };
        let found: Option<(String, i64)> = self.read(s, |c| {
            Ok(c.prepare_cached(sql::QUEUE_OF)?.query_row([local], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
        })?;
        let Some((queue, code)) = found else { return Ok(Err(rules::task_not_found(x.id))) };
        let status = Status::from_code(code)?;
        if status != Status::Queued {
            return Ok(Err(rules::explain(Some(status), x.id, Some(&x.worker), Guard::Queued, "start")));
        }
        let conn0 = self.shards[0].conn.lock();
        let options = read_options(&conn0, &queue).map_err(|e| self.shard_err(0, e))?;
        if options.paused {
            return Ok(Err(Error::QueuePaused { queue }));
        }
        let lease_ms = rules::lease_for(x.lease_ms, options.answer_timeout_ms);
        if !options.serial {
            drop(conn0);
            return self.write(s, |tx| self.start_in(tx, s, local, x, lease_ms));
        }
        // A serial queue: under shard 0's lock, the running task goes back
        // first, then the chosen one starts (see the module doc).
        let tx0 = WriteTx::begin(&conn0).map_err(|e| self.shard_err(0, e))?;
        let now = self.clock.now_ms();
        for sh in 0..self.shards.len() {
            self.in_shard(&tx0, sh, |tx| {
                let running: Vec<(i64, i64)> = tx
                    .prepare_cached(sql::RUNNING_IN_QUEUE)?
                    .query_map([&queue], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (other, cancel) in running {
                    self.switch_out(tx, sh, other, cancel != 0, now)?;
                }
                Ok(())
            })?;
        }
        let started = self.in_shard(&tx0, s, |tx| self.start_in(tx, s, local, x, lease_ms))?;
        tx0.commit().map_err(|e| self.shard_err(0, e))?;
        Ok(started)
    }
}

/// [`Store::start`](crate::store::Store::start).
pub(super) fn start(store: &SqliteStore, p: &[StartParams]) -> Result<Vec<Result<Task>>> {
    let out = p.iter().map(|x| store.start_one(x)).collect::<Result<Vec<_>>>()?;
    if !p.is_empty() {
        // A switch makes the task it puts back ready again.
        store.wake.bump();
    }
    Ok(out)
}

/// [`Store::active`](crate::store::Store::active).
pub(super) fn active(store: &SqliteStore, p: &ActiveParams) -> Result<Option<Task>> {
    let cp = p.as_claim();
    rules::check_claim(&cp)?;
    let conn0 = store.shards[0].conn.lock();
    let mode = super::claim::claim_mode(&conn0, &p.queue)?;
    let lease_ms = rules::lease_for(p.lease_ms, mode.answer_timeout_ms);
    store.serial_handout(&cp, lease_ms, conn0, &mode, true)
}

/// [`Store::requeue`](crate::store::Store::requeue).
pub(super) fn requeue(store: &SqliteStore, p: &[RequeueParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    store.per_item(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if tx.prepare_cached(sql::REQUEUE_FROM_DONE)?.execute(params![local, now])? == 1 {
                tx.prepare_cached(sql::DELETE_DONE)?.execute([local])?;
                return Ok(Ok(()));
            }
            Ok(Err(store.explain(tx, x.id, local, None, Guard::Finished, "requeue")?))
        },
    )
}

/// [`Store::set_priority`](crate::store::Store::set_priority).
pub(super) fn set_priority(store: &SqliteStore, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>> {
    store.per_item(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if tx.prepare_cached(sql::SET_PRIORITY)?.execute(params![local, x.priority])? == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(store.explain(tx, x.id, local, None, Guard::Queued, "set the priority of")?))
        },
    )
}

/// [`Store::set_run_at`](crate::store::Store::set_run_at).
pub(super) fn set_run_at(store: &SqliteStore, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>> {
    store.per_item(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if tx.prepare_cached(sql::SET_RUN_AT)?.execute(params![local, x.run_at])? == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(store.explain(tx, x.id, local, None, Guard::Queued, "set the run_at of")?))
        },
    )
}

/// [`Store::set_metadata`](crate::store::Store::set_metadata).
pub(super) fn set_metadata(store: &SqliteStore, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>> {
    store.per_item(
        p,
        |x| x.id,
        |tx, _, local, x| {
            if let Some(m) = &x.metadata {
                if let Err(e) = crate::task::check_metadata(m) {
                    return Ok(Err(e));
                }
            }
            let n = tx.prepare_cached(sql::SET_METADATA)?.execute(params![local, x.metadata])?;
            if n == 1 || tx.prepare_cached(sql::SET_METADATA_DONE)?.execute(params![local, x.metadata])? == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(rules::task_not_found(x.id)))
        },
    )
}

/// [`Store::set_queue_options`](crate::store::Store::set_queue_options).
/// Written into every shard: shard 0's copy is the store's, and each
/// shard's retention, aging and dead-letter routing are read where its
/// tasks are written (`sql::MOVE_TO_DONE`, `claim_rank!`). A change of the
/// aging step re-ranks the queue's unfinished tasks of the shard in the
/// same transaction, so no task is ever ranked by an old step.
pub(super) fn set_queue_options(store: &SqliteStore, o: &QueueOptions) -> Result<()> {
    rules::check_queue_options(o)?;
    for s in 0..store.shards.len() {
        store.write(s, |tx| {
            let old: Option<Option<i64>> =
                tx.prepare_cached(sql::AGING_GET)?.query_row([&o.queue], |r| r.get(0)).optional()?;
            tx.prepare_cached(sql::QUEUE_OPTIONS_SET)?.execute(params![
                o.queue,
                i64::from(o.serial),
                o.answer_timeout_ms,
                o.on_timeout.code(),
                o.retention_ms,
                o.aging_ms,
                o.dead_letter,
                o.dead_retention_ms
            ])?;
            if old.flatten() != o.aging_ms {
                tx.prepare_cached(sql::RERANK_QUEUE)?.execute(params![o.queue, o.aging_ms])?;
            }
            Ok(())
        })?;
    }
    store.wake.bump();
    Ok(())
}

/// [`Store::set_paused`](crate::store::Store::set_paused): shard 0's row,
/// which every hand-out reads (under shard 0's lock for serial queues).
pub(super) fn set_paused(store: &SqliteStore, p: &PauseParams) -> Result<()> {
    if p.queue.is_empty() {
        return Err(Error::InvalidArgument("queue name must not be empty".into()));
    }
    store.write(0, |tx| {
        tx.prepare_cached(sql::PAUSE_SET)?.execute(params![p.queue, i64::from(p.paused)])?;
        Ok(())
    })?;
    // Waiting claimers look again: a resumed queue's tasks are ready now.
    store.wake.bump();
    Ok(())
}

/// [`Store::queue_options`](crate::store::Store::queue_options).
pub(super) fn queue_options(store: &SqliteStore, queue: &str) -> Result<QueueOptions> {
    store.read(0, |conn| read_options(conn, queue))
}

/// [`Store::all_queue_options`](crate::store::Store::all_queue_options).
pub(super) fn all_queue_options(store: &SqliteStore) -> Result<Vec<QueueOptions>> {
    store.read(0, |conn| {
        let mut stmt = conn.prepare_cached(sql::QUEUE_OPTIONS_ALL)?;
        let rows = stmt.query_map([], options_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}
