//! The guarded transitions: heartbeat, progress, complete, fail, cancel,
//! release, retry, recover and expire. Batches travel as arrays, so
//! complete, release and retry are one statement for the whole batch; an
//! item whose guard matched nothing is explained from its status
//! (`rules::explain`).

use super::exec::explain;
use super::pool::{Db, PgResult};
use super::replay::{left_by, Move, TaskRow};
use super::{sql, PostgresStore};
use crate::error::Result;
use crate::store::rules::{self, Abandon, Guard};
use crate::store::{
    CancelParams, CompleteParams, FailParams, HeartbeatOutcome, HeartbeatParams, OnTimeout, ProgressParams,
    RecoverParams, ReleaseParams, RetryParams,
};
use crate::task::Status;
use postgres::GenericClient;
use std::collections::{HashMap, HashSet};

/// Parallel arrays for `MOVE_TO_DONE`.
#[derive(Default)]
struct Moves {
    ids: Vec<i64>,
    results: Vec<Option<Vec<u8>>>,
    errors: Vec<Option<String>>,
    workers: Vec<Option<String>>,
}

impl Moves {
    fn push(&mut self, id: i64, result: Option<Vec<u8>>, error: Option<String>, worker: Option<String>) {
        self.ids.push(id);
        self.results.push(result);
        self.errors.push(error);
        self.workers.push(worker);
    }
}

/// The worker a guarded statement must match: `worker`, or anyone (NULL)
/// when the caller forces the move.
fn holder(worker: &str, force: bool) -> Option<&str> {
    (!force).then_some(worker)
}

/// The rows of tasks `ids` as a replayed move judges them (`replay.rs`).
fn replay_rows<C: GenericClient>(db: &mut Db<'_, C>, ids: &[i64]) -> PgResult<HashMap<i64, TaskRow>> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in db.query(sql::REPLAY_ROWS, &[&ids])? {
        let code: i16 = r.try_get(1)?;
        let row = TaskRow {
            status: Status::from_code(code.into())?,
            worker: r.try_get(2)?,
            result: r.try_get(3)?,
            error: r.try_get(4)?,
        };
        out.insert(r.try_get(0)?, row);
    }
    Ok(out)
}

/// [`Store::heartbeat`](crate::store::Store::heartbeat).
pub(super) fn heartbeat(store: &PostgresStore, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
    rules::check_lease(p.lease_ms)?;
    let until = store.clock.now_ms() + p.lease_ms;
    let held: HashMap<i64, bool> = if p.ids.is_empty() {
        HashMap::new()
    } else {
        let worker = holder(&p.worker, p.force);
        store.run(true, |db| {
            db.query(sql::HEARTBEAT, &[&p.ids, &worker, &until])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })?
    };
    Ok(p.ids
        .iter()
        .map(|id| match held.get(id) {
            Some(cancel) => HeartbeatOutcome { id: *id, held: true, cancel_requested: *cancel },
            None => HeartbeatOutcome { id: *id, held: false, cancel_requested: false },
        })
        .collect())
}

/// [`Store::progress`](crate::store::Store::progress).
pub(super) fn progress(store: &PostgresStore, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
    store.per_item(p, true, |db, x, _| {
        if let Err(e) = rules::check_progress(x.progress) {
            return Ok(Err(e));
        }
        if db.execute(sql::PROGRESS, &[&x.id, &holder(&x.worker, x.force), &x.progress])? == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(explain(db, x.id, Some(&x.worker), rules::held_or_forced(x.force), "report progress of")?))
    })
}

/// [`Store::complete`](crate::store::Store::complete).
pub(super) fn complete(store: &PostgresStore, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    let max = store.cfg.store.max_payload;
    let retention = store.cfg.store.retention_ms;
    store.guarded_batch(
        p,
        |x| x.id,
        |x| Some(x.worker.as_str()),
        |x| rules::held_or_forced(x.force),
        "complete",
        |x| rules::check_result_size(&x.result, max).err(),
        |db, idx, replayed| {
            // A task whose cancel was asked ends cancelled, its result kept
            // (see `sql::MOVE_TO_DONE`).
            let mut m = Moves::default();
            for &i in idx {
                let worker = holder(&p[i].worker, p[i].force).map(String::from);
                m.push(p[i].id, Some(p[i].result.clone()), None, worker);
            }
            let done = Status::Done.code() as i16;
            let running = Status::Running.code() as i16;
            let mut moved: Vec<i64> = db
                .query(
                    sql::MOVE_TO_DONE,
                    &[&m.ids, &m.results, &m.errors, &m.workers, &done, &running, &now, &retention],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if replayed {
                // The first run may have committed before its reply was lost.
                let seen: HashSet<i64> = moved.iter().copied().collect();
                let missed: Vec<i64> = m.ids.iter().copied().filter(|id| !seen.contains(id)).collect();
                let rows = replay_rows(db, &missed)?;
                for &i in idx {
                    let x = &p[i];
                    let mine = Move { status: Status::Done, worker: &x.worker, result: Some(&x.result), error: None };
                    // A forced move left the holder's name, not ours: not recognised.
                    if !x.force && !seen.contains(&x.id) && rows.get(&x.id).is_some_and(|r| left_by(r, &mine)) {
                        moved.push(x.id);
                    }
                }
            }
            Ok(moved)
        },
    )
}

/// [`Store::fail`](crate::store::Store::fail).
pub(super) fn fail(store: &PostgresStore, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    // Replayed after a broken connection: a first run that committed is
    // recognised by the row it left (`replay.rs`).
    store.per_item(p, true, |db, x, replayed| {
        let Some(row) = db.query_opt(sql::FAIL_LOOKUP, &[&x.id, &holder(&x.worker, x.force)])? else {
            if replayed {
                if let Some(r) = replay_rows(db, &[x.id])?.get(&x.id) {
                    for status in [Status::Failed, Status::Queued] {
                        let mine = Move { status, worker: &x.worker, result: None, error: Some(&x.error) };
                        if left_by(r, &mine) {
                            return Ok(Ok(status));
                        }
                    }
                }
            }
            return Ok(Err(explain(db, x.id, Some(&x.worker), rules::held_or_forced(x.force), "fail")?));
        };
        let attempts = row.try_get::<_, i32>(0)?.max(0) as u32;
        let max_attempts = row.try_get::<_, i32>(1)?.max(0) as u32;
        let backoff: Option<String> = row.try_get(2)?;
        let cancel: bool = row.try_get(3)?;
        let worker: String = row.try_get::<_, Option<String>>(4)?.unwrap_or_default();
        // A cancel sticks: MOVE_TO_DONE ends a flagged task cancelled.
        let delay = if cancel {
            None
        } else {
            rules::retry_delay(x.retry, attempts, max_attempts, backoff.as_deref(), store.cfg.store.default_backoff)
        };
        if let Some(d) = delay {
            db.execute(sql::REQUEUE, &[&vec![x.id], &vec![worker.as_str()], &vec![now + d], &vec![x.error.as_str()]])?;
            return Ok(Ok(Status::Queued));
        }
        let failed = Status::Failed.code() as i16;
        let running = Status::Running.code() as i16;
        let none: Vec<Option<Vec<u8>>> = vec![None];
        db.execute(
            sql::MOVE_TO_DONE,
            &[
                &vec![x.id],
                &none,
                &vec![Some(x.error.as_str())],
                &vec![Some(worker.as_str())],
                &failed,
                &running,
                &now,
                &retention,
            ],
        )?;
        Ok(Ok(if cancel { Status::Cancelled } else { Status::Failed }))
    })
}

/// [`Store::cancel`](crate::store::Store::cancel).
pub(super) fn cancel(store: &PostgresStore, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    let cancelled = Status::Cancelled.code() as i16;
    store.per_item(p, false, |db, x, _| {
        let why = vec![Some(rules::CANCELLED)];
        let none: Vec<Option<Vec<u8>>> = vec![None];
        let ids = vec![x.id];
        let from = |s: Status| s.code() as i16;
        if let Some(w) = &x.worker {
            let workers = vec![Some(w.as_str())];
            let moved = db.query(
                sql::MOVE_TO_DONE,
                &[&ids, &none, &why, &workers, &cancelled, &from(Status::Running), &now, &retention],
            )?;
            if !moved.is_empty() {
                return Ok(Ok(Status::Cancelled));
            }
            return Ok(Err(explain(db, x.id, Some(w), Guard::Held, "cancel")?));
        }
        let anyone: Vec<Option<&str>> = vec![None];
        let moved = db.query(
            sql::MOVE_TO_DONE,
            &[&ids, &none, &why, &anyone, &cancelled, &from(Status::Queued), &now, &retention],
        )?;
        if !moved.is_empty() {
            return Ok(Ok(Status::Cancelled));
        }
        let moved = db.query(
            sql::MOVE_TO_DONE,
            &[&ids, &none, &why, &anyone, &cancelled, &from(Status::Waiting), &now, &retention],
        )?;
        if !moved.is_empty() {
            return Ok(Ok(Status::Cancelled));
        }
        if db.execute(sql::FLAG_CANCEL, &[&x.id])? == 1 {
            return Ok(Ok(Status::Running));
        }
        Ok(Err(explain(db, x.id, None, Guard::Unfinished, "cancel")?))
    })
}

/// [`Store::release`](crate::store::Store::release).
pub(super) fn release(store: &PostgresStore, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    store.guarded_batch(
        p,
        |x| x.id,
        |x| Some(x.worker.as_str()),
        |x| rules::held_or_forced(x.force),
        "release",
        |_| None,
        |db, idx, _| {
            let ids: Vec<i64> = idx.iter().map(|i| p[*i].id).collect();
            let workers: Vec<Option<&str>> = idx.iter().map(|i| holder(&p[*i].worker, p[*i].force)).collect();
            let mut moved: Vec<i64> =
                db.query(sql::RELEASE, &[&ids, &workers])?.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
            // What RELEASE left running under the same guard had its cancel
            // asked: a cancel sticks, so it ends cancelled.
            let released: HashSet<i64> = moved.iter().copied().collect();
            let mut m = Moves::default();
            for (id, w) in ids.iter().zip(&workers) {
                if !released.contains(id) {
                    m.push(*id, None, Some(rules::CANCELLED.to_string()), w.map(String::from));
                }
            }
            if !m.ids.is_empty() {
                let cancelled = Status::Cancelled.code() as i16;
                let running = Status::Running.code() as i16;
                for r in db.query(
                    sql::MOVE_TO_DONE,
                    &[&m.ids, &m.results, &m.errors, &m.workers, &cancelled, &running, &now, &retention],
                )? {
                    moved.push(r.try_get(0)?);
                }
            }
            Ok(moved)
        },
    )
}

/// [`Store::retry`](crate::store::Store::retry).
pub(super) fn retry(store: &PostgresStore, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    store.guarded_batch(
        p,
        |x| x.id,
        |_| None,
        |_| Guard::Retryable,
        "retry",
        |_| None,
        |db, idx, _| {
            let todo: Vec<i64> = idx.iter().map(|i| p[*i].id).collect();
            db.query(sql::RETRY_FROM_DONE, &[&todo, &now])?.iter().map(|r| Ok(r.try_get(0)?)).collect()
        },
    )
}

/// [`Store::recover`](crate::store::Store::recover).
pub(super) fn recover(store: &PostgresStore, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    let out = store.tx(true, |db| {
        let mut timeouts: HashMap<String, OnTimeout> = HashMap::new();
        for r in db.query(sql::TIMEOUT_QUEUES, &[])? {
            timeouts.insert(r.try_get(0)?, OnTimeout::from_code(r.try_get::<_, i16>(1)?.into()));
        }
        let mut requeue: (Vec<i64>, Vec<String>, Vec<i64>, Vec<String>) = Default::default();
        let mut finish: Vec<(Status, Moves)> = Vec::new();
        let mut out = Vec::new();
        for r in db.query(sql::EXPIRED_LEASES, &[&now, &p.worker])? {
            let id: i64 = r.try_get(0)?;
            let attempts = r.try_get::<_, i32>(1)?.max(0) as u32;
            let max_attempts = r.try_get::<_, i32>(2)?.max(0) as u32;
            let worker: Option<String> = r.try_get(3)?;
            let run_at: i64 = r.try_get(4)?;
            let queue: String = r.try_get(5)?;
            let cancel: bool = r.try_get(6)?;
            let timeout = timeouts.get(&queue).copied();
            let (what, why) =
                rules::abandon(cancel, timeout, p.worker.is_some(), worker.as_deref(), attempts, max_attempts);
            let worker = worker.unwrap_or_default();
            match what {
                Abandon::Requeue => {
                    requeue.0.push(id);
                    requeue.1.push(worker);
                    // Back in its old place in the queue (its original
                    // run_at), not behind everything sent since.
                    requeue.2.push(run_at.min(now));
                    requeue.3.push(why);
                    out.push((id, Status::Queued));
                }
                Abandon::Release => {
                    db.execute(sql::SWITCH_OUT, &[&id, &why])?;
                    out.push((id, Status::Queued));
                }
                Abandon::Finish(to) => {
                    match finish.iter_mut().find(|(s, _)| *s == to) {
                        Some((_, m)) => m.push(id, None, Some(why), None),
                        None => {
                            let mut m = Moves::default();
                            m.push(id, None, Some(why), None);
                            finish.push((to, m));
                        }
                    }
                    out.push((id, to));
                }
            }
        }
        if !requeue.0.is_empty() {
            db.execute(sql::REQUEUE, &[&requeue.0, &requeue.1, &requeue.2, &requeue.3])?;
        }
        for (to, m) in &finish {
            let to = to.code() as i16;
            let running = Status::Running.code() as i16;
            db.execute(
                sql::MOVE_TO_DONE,
                &[&m.ids, &m.results, &m.errors, &m.workers, &to, &running, &now, &retention],
            )?;
        }
        Ok(out)
    })?;
    if !out.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}

/// [`Store::expire`](crate::store::Store::expire).
pub(super) fn expire(store: &PostgresStore) -> Result<Vec<i64>> {
    let now = store.clock.now_ms();
    let retention = store.cfg.store.retention_ms;
    let mut out = store.tx(true, |db| {
        let mut m = Moves::default();
        for r in db.query(sql::PAST_DEADLINE, &[&now])? {
            m.push(r.try_get(0)?, None, Some(rules::DEADLINE_PASSED.into()), None);
        }
        if m.ids.is_empty() {
            return Ok(Vec::new());
        }
        let expired = Status::Expired.code() as i16;
        let queued = Status::Queued.code() as i16;
        db.query(sql::MOVE_TO_DONE, &[&m.ids, &m.results, &m.errors, &m.workers, &expired, &queued, &now, &retention])?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect::<PgResult<Vec<i64>>>()
    })?;
    out.sort_unstable();
    if !out.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}
