//! Steering tasks from outside: `start` (with the switch of a serial
//! queue), `active`, `requeue`, `set_priority`, `set_run_at`,
//! `set_metadata`, and the queue options they read.
//!
//! Serial queues are serialised on a transaction-scoped advisory lock per
//! queue (`sql::SERIAL_LOCK`), which every hand-out of a serial queue —
//! claim, `start`, `active` — takes first, on any host. A switch (`start`
//! on a serial queue) locks the chosen task, puts the running one back and
//! starts the chosen one in one transaction.

use super::exec::explain;
use super::pool::{Db, PgResult};
use super::read::read_task;
use super::{sql, PostgresStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Guard};
use crate::store::{
    ActiveParams, OnTimeout, PauseParams, QueueOptions, RequeueParams, SetMetadataParams, SetPriorityParams,
    SetRunAtParams, StartParams,
};
use crate::task::{Status, Task};
use postgres::{GenericClient, Row};

/// Queue options from a row of `QUEUE_OPTIONS_GET` / `QUEUE_OPTIONS_ALL`.
fn options_row(r: &Row) -> PgResult<QueueOptions> {
    Ok(QueueOptions {
        queue: r.try_get(0)?,
        serial: r.try_get(1)?,
        answer_timeout_ms: r.try_get(2)?,
        on_timeout: OnTimeout::from_code(r.try_get::<_, i16>(3)?.into()),
        retention_ms: r.try_get(4)?,
        paused: r.try_get(5)?,
        aging_ms: r.try_get(6)?,
        dead_letter: r.try_get(7)?,
        dead_retention_ms: r.try_get(8)?,
    })
}

/// A queue's options (the defaults when none were set).
fn read_options<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> PgResult<QueueOptions> {
    match db.query_opt(sql::QUEUE_OPTIONS_GET, &[&queue])? {
        Some(r) => options_row(&r),
        None => Ok(QueueOptions { queue: queue.to_string(), ..QueueOptions::default() }),
    }
}

impl PostgresStore {
    /// One `start`, in one transaction.
    fn start_one(&self, x: &StartParams) -> Result<Result<Task>> {
        if let Err(e) = rules::check_start(&x.worker, x.lease_ms) {
            return Ok(Err(e));
        }
        let retention = self.cfg.store.retention_ms;
        self.tx(false, |db| {
            let Some(r) = db.query_opt(sql::QUEUE_OF, &[&x.id])? else {
                return Ok(Err(rules::task_not_found(x.id)));
            };
            let queue: String = r.try_get(0)?;
            let options = read_options(db, &queue)?;
            if options.paused {
                return Ok(Err(Error::QueuePaused { queue }));
            }
            if options.serial {
                db.execute(sql::SERIAL_LOCK, &[&queue])?;
            }
            // Locked, so that nothing moves it between the check and the start.
            let locked = db.query_opt(sql::LOCK_QUEUED, &[&x.id])?;
            if locked.is_none() {
                return Ok(Err(explain(db, x.id, Some(&x.worker), Guard::Queued, "start")?));
            }
            let now = self.clock.now_ms();
            if options.serial {
                let mut cancelled: Vec<i64> = Vec::new();
                for r in db.query(sql::RUNNING_IN_QUEUE, &[&queue])? {
                    let id: i64 = r.try_get(0)?;
                    if r.try_get::<_, bool>(1)? {
                        cancelled.push(id);
                    } else {
                        db.execute(sql::SWITCH_OUT, &[&id, &Option::<&str>::None])?;
                    }
                }
                if !cancelled.is_empty() {
                    // A cancel sticks: a flagged task switched out ends cancelled.
                    let n = cancelled.len();
                    let none_bytes: Vec<Option<Vec<u8>>> = vec![None; n];
                    let why: Vec<Option<&str>> = vec![Some(rules::CANCELLED); n];
                    let anyone: Vec<Option<&str>> = vec![None; n];
                    let to = Status::Cancelled.code() as i16;
                    let running = Status::Running.code() as i16;
                    db.execute(
                        sql::MOVE_TO_DONE,
                        &[&cancelled, &none_bytes, &why, &anyone, &to, &running, &now, &retention],
                    )?;
                }
            }
            let lease_ms = rules::lease_for(x.lease_ms, options.answer_timeout_ms);
            match db.query_opt(sql::START, &[&x.id, &x.worker, &(now + lease_ms), &now])? {
                Some(r) => Ok(Ok(read_task(&r, 0)?)),
                None => Ok(Err(explain(db, x.id, Some(&x.worker), Guard::Queued, "start")?)),
            }
        })
    }
}

/// [`Store::start`](crate::store::Store::start).
pub(super) fn start(store: &PostgresStore, p: &[StartParams]) -> Result<Vec<Result<Task>>> {
    let out = p.iter().map(|x| store.start_one(x)).collect::<Result<Vec<_>>>()?;
    if !p.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}

/// [`Store::active`](crate::store::Store::active).
pub(super) fn active(store: &PostgresStore, p: &ActiveParams) -> Result<Option<Task>> {
    let cp = p.as_claim();
    rules::check_claim(&cp)?;
    let options = queue_options(store, &p.queue)?;
    store.serial_handout(&cp, rules::lease_for(p.lease_ms, options.answer_timeout_ms), true)
}

/// [`Store::requeue`](crate::store::Store::requeue).
pub(super) fn requeue(store: &PostgresStore, p: &[RequeueParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    store.guarded_batch(
        p,
        |x| x.id,
        |_| None,
        |_| Guard::Finished,
        "requeue",
        |_| None,
        |db, idx, _| {
            let todo: Vec<i64> = idx.iter().map(|i| p[*i].id).collect();
            db.query(sql::REQUEUE_FROM_DONE, &[&todo, &now])?.iter().map(|r| Ok(r.try_get(0)?)).collect()
        },
    )
}

/// [`Store::set_priority`](crate::store::Store::set_priority).
pub(super) fn set_priority(store: &PostgresStore, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>> {
    store.per_item(p, true, |db, x, _| {
        if db.execute(sql::SET_PRIORITY, &[&x.id, &x.priority])? == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(explain(db, x.id, None, Guard::Queued, "set the priority of")?))
    })
}

/// [`Store::set_run_at`](crate::store::Store::set_run_at).
pub(super) fn set_run_at(store: &PostgresStore, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>> {
    store.per_item(p, true, |db, x, _| {
        if db.execute(sql::SET_RUN_AT, &[&x.id, &x.run_at])? == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(explain(db, x.id, None, Guard::Queued, "set the run_at of")?))
    })
}

/// [`Store::set_metadata`](crate::store::Store::set_metadata).
pub(super) fn set_metadata(store: &PostgresStore, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>> {
    store.per_item(p, true, |db, x, _| {
        if let Some(m) = &x.metadata {
            if let Err(e) = crate::task::check_metadata(m) {
                return Ok(Err(e));
            }
        }
        let changed: i64 = match db.query_opt(sql::SET_METADATA, &[&x.id, &x.metadata])? {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        Ok(if changed > 0 { Ok(()) } else { Err(rules::task_not_found(x.id)) })
    })
}

/// [`Store::set_queue_options`](crate::store::Store::set_queue_options).
pub(super) fn set_queue_options(store: &PostgresStore, o: &QueueOptions) -> Result<()> {
    rules::check_queue_options(o)?;
    let on_timeout = o.on_timeout.code() as i16;
    // One transaction: a change of the aging step re-ranks the queue's
    // unfinished tasks with it (setting the same options again is idempotent).
    store.tx(true, |db| {
        let old: Option<i64> = db
            .query_opt(
                sql::QUEUE_OPTIONS_SET,
                &[
                    &o.queue,
                    &o.serial,
                    &o.answer_timeout_ms,
                    &on_timeout,
                    &o.retention_ms,
                    &o.aging_ms,
                    &o.dead_letter,
                    &o.dead_retention_ms,
                ],
            )?
            .map(|r| r.try_get::<_, Option<i64>>(0))
            .transpose()?
            .flatten();
        if old != o.aging_ms {
            db.execute(sql::RERANK_QUEUE, &[&o.queue, &o.aging_ms])?;
        }
        Ok(())
    })?;
    store.wake.bump();
    Ok(())
}

/// [`Store::set_paused`](crate::store::Store::set_paused).
pub(super) fn set_paused(store: &PostgresStore, p: &PauseParams) -> Result<()> {
    if p.queue.is_empty() {
        return Err(Error::InvalidArgument("queue name must not be empty".into()));
    }
    store.run(true, |db| {
        db.execute(sql::PAUSE_SET, &[&p.queue, &p.paused])?;
        Ok(())
    })?;
    store.wake.bump();
    Ok(())
}

/// [`Store::queue_options`](crate::store::Store::queue_options).
pub(super) fn queue_options(store: &PostgresStore, queue: &str) -> Result<QueueOptions> {
    store.run(true, |db| read_options(db, queue))
}

/// [`Store::all_queue_options`](crate::store::Store::all_queue_options).
pub(super) fn all_queue_options(store: &PostgresStore) -> Result<Vec<QueueOptions>> {
    store.run(true, |db| db.query(sql::QUEUE_OPTIONS_ALL, &[])?.iter().map(options_row).collect())
}
