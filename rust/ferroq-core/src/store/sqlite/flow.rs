//! Flows: tasks that wait for other tasks (`sql::MIGRATE_V4`).
//!
//! A dependency row (parent, child) lives in the child's shard and, when
//! the parent lives elsewhere, in the parent's shard too. When a task
//! finishes, its shard's rows name its dependents ([`SqliteStore::after_finish`]):
//! a dependent in the same shard whose parents all live there is settled
//! in the finishing transaction itself; any other is settled right after
//! that transaction commits ([`SqliteStore::settle_pending`]), reading
//! its parents on their shards. A crash between the two leaves it
//! waiting until the next sweep ([`sweep`], run by `recover`), which
//! settles every waiting task and forgets the rows of finished ones.

use super::tx::WriteTx;
use super::{sql, SqliteStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Settle};
use crate::store::{Dep, Enqueued, FlowTask};
use crate::task::{NewTask, Status};
use rusqlite::{params, Connection, OptionalExtension, ToSql};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

/// The status of local task `local`, from either table (None: no such task).
fn status_of(conn: &Connection, local: i64) -> Result<Option<Status>> {
    let code: Option<i64> = conn.prepare_cached(sql::STATUS_OF)?.query_row([local], |r| r.get(0)).optional()?;
    code.map(Status::from_code).transpose()
}

/// The parents of task `child` recorded in a shard, in order.
fn parents_in(conn: &Connection, child: i64) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(sql::DEPS_OF)?;
    let rows = stmt.query_map([child], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl SqliteStore {
    /// Looks up the dependents of tasks just finished in shard `s` (local
    /// ids), within the finishing transaction: each is settled there when
    /// it and all its parents live in `s`, else queued for
    /// [`Self::settle_pending`].
    pub(super) fn after_finish(&self, tx: &WriteTx, s: usize, finished: &[i64]) -> Result<()> {
        if finished.is_empty() {
            return Ok(());
        }
        // The common case, no flows at all, costs one probe per batch.
        let any: bool = tx.prepare_cached(sql::DEPS_ANY)?.query_row([], |r| r.get(0))?;
        if !any {
            return Ok(());
        }
        let mut children = Vec::new();
        for &local in finished {
            let mut stmt = tx.prepare_cached(sql::DEPENDENTS_OF)?;
            let rows = stmt.query_map([self.global(s, local)], |r| r.get::<_, i64>(0))?;
            for child in rows {
                children.push(child?);
            }
        }
        let now = self.clock.now_ms();
        for child in children {
            match self.split(child) {
                Some((c, child_local)) if c == s => {
                    let parents = parents_in(tx, child)?;
                    if parents.iter().all(|p| self.split(*p).map(|(ps, _)| ps) == Some(s)) {
                        let mut seen = Vec::with_capacity(parents.len());
                        for p in parents {
                            let local = self.split(p).map(|(_, l)| l).unwrap_or(0);
                            seen.push((p, status_of(tx, local)?));
                        }
                        self.apply_settle(tx, s, child_local, rules::settle(&seen), now)?;
                        continue;
                    }
                    self.unsettled.lock().push(child);
                }
                _ => self.unsettled.lock().push(child),
            }
        }
        Ok(())
    }

    /// Moves waiting task `local` of shard `s` as `decision` says (within
    /// the caller's transaction); true when it moved. Guarded: a task no
    /// longer waiting is left alone.
    fn apply_settle(&self, tx: &WriteTx, s: usize, local: i64, decision: Settle, now: i64) -> Result<bool> {
        match decision {
            Settle::Wait => Ok(false),
            Settle::Release => Ok(tx.prepare_cached(sql::RELEASE_WAITING)?.execute([local])? == 1),
            // `move_to_done` ends its own dependents with it (transitively).
            Settle::Cancel(why) => {
                self.move_to_done(tx, s, local, Status::Cancelled, None, Some(&why), Status::Waiting, None, now)
            }
        }
    }

    /// Settles one waiting task from its parents as stored now, in its
    /// own transaction; the new status when it moved.
    fn settle_one(&self, child: i64) -> Result<Option<Status>> {
        let Some((c, local)) = self.split(child) else { return Ok(None) };
        let parents = self.read(c, |conn| parents_in(conn, child))?;
        let mut seen = Vec::with_capacity(parents.len());
        for p in parents {
            let status = match self.split(p) {
                Some((ps, pl)) => self.read(ps, |conn| status_of(conn, pl))?,
                None => None,
            };
            seen.push((p, status));
        }
        let decision = rules::settle(&seen);
        let to = match decision {
            Settle::Wait => return Ok(None),
            Settle::Release => Status::Queued,
            Settle::Cancel(_) => Status::Cancelled,
        };
        let now = self.clock.now_ms();
        let moved = self.write(c, |tx| self.apply_settle(tx, c, local, decision, now))?;
        if moved {
            self.wake.bump();
        }
        Ok(moved.then_some(to))
    }

    /// Settles the dependents that finishing transactions could not settle
    /// themselves (another shard was involved). Called by each finishing
    /// verb once it holds no shard (`mod.rs`); an error leaves them
    /// waiting for the sweep, which retries.
    pub(super) fn settle_pending(&self) {
        loop {
            let pending = std::mem::take(&mut *self.unsettled.lock());
            if pending.is_empty() {
                return;
            }
            for child in pending {
                // A failure here loses nothing: the task stays waiting and
                // the next sweep settles it.
                let _ = self.settle_one(child);
            }
        }
    }
}

/// The shard a flow task goes to: its key's shard; else its first
/// parent's (so that a chain stays in one shard and is released in the
/// transaction that finishes each step); else round-robin.
fn route_flow(store: &SqliteStore, shard_of: &[usize], t: &FlowTask) -> Result<usize> {
    if let Some(k) = &t.task.key {
        return Ok(store.route_key(&t.task.queue, k));
    }
    match t.after.first() {
        Some(Dep::Earlier(j)) => Ok(shard_of[*j]),
        Some(Dep::Task(id)) => store.split(*id).map(|(s, _)| s).ok_or_else(|| rules::task_not_found(*id)),
        None => Ok(store.next_shard.fetch_add(1, Ordering::Relaxed) % store.shards.len()),
    }
}

/// [`Store::enqueue_flow`](crate::store::Store::enqueue_flow). Every shard
/// the batch touches (its tasks' and their parents') is write-locked
/// first, in shard order as every multi-shard writer does, so that the
/// parents' statuses read here cannot change before the batch commits.
pub(super) fn enqueue_flow(store: &SqliteStore, tasks: &[FlowTask]) -> Result<Vec<Enqueued>> {
    rules::check_flow(tasks)?;
    for t in tasks {
        t.task.validate(store.config.max_payload)?;
    }
    let plain: Vec<NewTask> = tasks.iter().map(|t| t.task.clone()).collect();
    store.check_capacity(&plain)?;
    let mut shard_of = Vec::with_capacity(tasks.len());
    let mut touched = BTreeSet::new();
    for t in tasks {
        let s = route_flow(store, &shard_of, t)?;
        shard_of.push(s);
        touched.insert(s);
        for d in &t.after {
            if let Dep::Task(id) = d {
                touched.insert(store.split(*id).map(|(s, _)| s).ok_or_else(|| rules::task_not_found(*id))?);
            }
        }
    }
    for &s in &touched {
        store.check_healthy(s)?;
    }
    let now = store.clock.now_ms();
    let first_local = store.last_local.fetch_add(tasks.len() as i64, Ordering::Relaxed) + 1;
    let guards: Vec<_> = touched.iter().map(|&s| (s, store.shards[s].conn.lock())).collect();
    let mut txs: Vec<(usize, WriteTx)> = Vec::with_capacity(guards.len());
    for (s, conn) in &guards {
        txs.push((*s, WriteTx::begin(conn).map_err(|e| store.shard_err(*s, e))?));
    }
    let tx_of = |s: usize| -> Result<&WriteTx> {
        txs.iter().find(|(x, _)| *x == s).map(|(_, tx)| tx).ok_or_else(|| Error::Storage("shard not locked".into()))
    };
    let mut last: Vec<Option<i64>> = vec![None; store.shards.len()];
    let mut out: Vec<Enqueued> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let s = shard_of[i];
        let tx = tx_of(s)?;
        if let Some(k) = &t.task.key {
            let existing: Option<i64> =
                tx.prepare_cached(sql::FIND_KEY)?.query_row((&t.task.queue, k), |r| r.get(0)).optional()?;
            if let Some(local) = existing {
                out.push(Enqueued { id: store.global(s, local), inserted: false });
                continue;
            }
        }
        let mut parents = Vec::with_capacity(t.after.len());
        for id in t.parent_ids(&out) {
            let (ps, pl) = store.split(id).ok_or_else(|| rules::task_not_found(id))?;
            let status = status_of(tx_of(ps)?, pl)?.ok_or_else(|| rules::task_not_found(id))?;
            parents.push((id, Some(status)));
        }
        let decision = if parents.is_empty() { Settle::Release } else { rules::settle(&parents) };
        let status = if decision == Settle::Release { Status::Queued } else { Status::Waiting };
        let last_s = match last[s] {
            Some(l) => l,
            None => super::schema::last_local_id(tx)?,
        };
        let local = (first_local + i as i64).max(last_s + 1);
        last[s] = Some(local);
        let extras = super::enqueue::RowExtras::new(&t.task, local);
        let code = status.code();
        let mut values: Vec<&dyn ToSql> = super::enqueue::insert_values(&t.task, &now, &extras).to_vec();
        values.push(&code);
        tx.prepare_cached(sql::INSERT_FLOW_TASK)?.execute(&values[..])?;
        let id = store.global(s, local);
        out.push(Enqueued { id, inserted: true });
        for (pos, (parent, _)) in parents.iter().enumerate() {
            tx.prepare_cached(sql::DEP_INSERT)?.execute(params![parent, id, pos as i64])?;
            let (ps, _) = store.split(*parent).ok_or_else(|| rules::task_not_found(*parent))?;
            if ps != s {
                tx_of(ps)?.prepare_cached(sql::DEP_INSERT)?.execute(params![parent, id, pos as i64])?;
            }
        }
        if let Settle::Cancel(_) = decision {
            store.apply_settle(tx, s, local, decision, now)?;
        }
    }
    for l in last.into_iter().flatten() {
        store.last_local.fetch_max(l, Ordering::Relaxed);
    }
    for (s, tx) in txs {
        tx.commit().map_err(|e| store.shard_err(s, e))?;
    }
    drop(guards);
    store.settle_pending();
    if !tasks.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}

/// [`Store::dependencies`](crate::store::Store::dependencies).
pub(super) fn dependencies(store: &SqliteStore, ids: &[i64]) -> Result<Vec<Vec<i64>>> {
    ids.iter()
        .map(|&id| match store.split(id) {
            None => Ok(Vec::new()),
            Some((s, _)) => store.read(s, |conn| parents_in(conn, id)),
        })
        .collect()
}

/// Settles every waiting task that has what it waited for (or a parent
/// that failed), and forgets the dependency rows of finished tasks once
/// their shard-mates agree. Run by `recover`; returns the tasks it moved.
pub(super) fn sweep(store: &SqliteStore) -> Result<Vec<(i64, Status)>> {
    let mut out = Vec::new();
    for s in 0..store.shards.len() {
        let children: Vec<i64> = store.read(s, |conn| {
            let mut stmt = conn.prepare_cached(sql::DEP_CHILDREN)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })?;
        for child in children {
            let status = match store.split(child) {
                Some((c, local)) => store.read(c, |conn| status_of(conn, local))?,
                None => None,
            };
            match status {
                Some(Status::Waiting) => {
                    if store.split(child).map(|(c, _)| c) == Some(s) {
                        if let Some(to) = store.settle_one(child)? {
                            out.push((child, to));
                        }
                    }
                }
                Some(st) if !st.is_finished() => {}
                // Finished (or gone): its parents' results are no longer needed.
                _ => {
                    store.write(s, |tx| Ok(tx.prepare_cached(sql::DEPS_DELETE)?.execute([child])?))?;
                }
            }
        }
    }
    store.settle_pending();
    Ok(out)
}
