//! How every verb reaches the database: one call on a pooled connection
//! ([`run`](PostgresStore::run)) or one transaction ([`tx`](PostgresStore::tx)),
//! each run again after a lost deadlock or a broken connection when that is
//! safe; and the two batch shapes the transitions use, with the lookup that
//! explains an item whose guard matched nothing.

use super::pool::{connection_lost, retryable, to_error, Db, Fail, PgResult};
use super::{sql, PostgresStore};
use crate::error::{Error, Result};
use crate::store::rules::{self, Guard};
use crate::task::Status;
use postgres::GenericClient;
use std::collections::{HashMap, HashSet};

/// How often a transaction that lost a deadlock or serialization check is
/// run again before the error is reported.
const TX_TRIES: u32 = 5;
/// How often a call whose connection broke is run again (when it may be).
const LOST_TRIES: u32 = 3;

/// The statuses of `ids` as they are now.
pub(super) fn statuses<C: GenericClient>(db: &mut Db<'_, C>, ids: &[i64]) -> PgResult<HashMap<i64, Status>> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in db.query(sql::STATUS_OF, &[&ids])? {
        let code: i16 = r.try_get(1)?;
        out.insert(r.try_get(0)?, Status::from_code(code.into())?);
    }
    Ok(out)
}

/// Names the reason a guarded statement on task `id` changed nothing,
/// reading its status now.
pub(super) fn explain<C: GenericClient>(
    db: &mut Db<'_, C>,
    id: i64,
    worker: Option<&str>,
    guard: Guard,
    action: &'static str,
) -> PgResult<Error> {
    let found = statuses(db, &[id])?.get(&id).copied();
    Ok(rules::explain(found, id, worker, guard, action))
}

impl PostgresStore {
    /// Runs `f` on a pooled connection outside a transaction (each
    /// statement commits on its own). With `replay`, a call whose
    /// connection broke mid-way is run again on a fresh one: only for
    /// reads and for writes guarded by the state they move from, which a
    /// second run leaves as the first did. Other writes report the break,
    /// since they may have been applied.
    pub(super) fn run<T>(
        &self,
        replay: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Client>) -> PgResult<T>,
    ) -> Result<T> {
        self.run_replayed(replay, |db, _| f(db))
    }

    /// [`Self::run`], telling `f` whether this run replays one whose
    /// connection broke: that one may have committed before its reply was
    /// lost, so a guard matching nothing may mean "done already, by me".
    pub(super) fn run_replayed<T>(
        &self,
        replay: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Client>, bool) -> PgResult<T>,
    ) -> Result<T> {
        let mut tries = 0;
        let mut lost = 0;
        loop {
            tries += 1;
            let mut lease = self.pool.get()?;
            let out = lease.db().and_then(|mut db| f(&mut db, lost > 0));
            match out {
                Ok(v) => return Ok(v),
                Err(fail) => {
                    lease.check(&fail);
                    let again = match &fail {
                        Fail::Pg(e) if connection_lost(e) => {
                            lost += 1;
                            replay && lost <= LOST_TRIES
                        }
                        Fail::Pg(e) => retryable(e) && tries < TX_TRIES,
                        Fail::Core(_) => false,
                    };
                    if !again {
                        return Err(to_error(&self.cfg, fail));
                    }
                }
            }
        }
    }

    /// Runs `f` in one transaction, committed when it returns Ok. It runs
    /// again when it lost a deadlock or serialization check, when BEGIN
    /// itself failed on a dead connection (nothing happened yet), and,
    /// with `replay` (see [`Self::run`]), when the connection broke later.
    pub(super) fn tx<T>(
        &self,
        replay: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> PgResult<T>,
    ) -> Result<T> {
        self.tx_replayed(replay, |db, _| f(db))
    }

    /// [`Self::tx`], telling `f` whether this run replays one whose
    /// connection broke (see [`Self::run_replayed`]).
    pub(super) fn tx_replayed<T>(
        &self,
        replay: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>, bool) -> PgResult<T>,
    ) -> Result<T> {
        let mut tries = 0;
        let mut lost = 0;
        loop {
            tries += 1;
            let mut lease = self.pool.get()?;
            let mut begun = false;
            let replayed = lost > 0;
            match lease.transaction(&mut begun, &mut |db| f(db, replayed)) {
                Ok(v) => return Ok(v),
                Err(fail) => {
                    lease.check(&fail);
                    let again = match &fail {
                        Fail::Pg(e) if connection_lost(e) => {
                            lost += 1;
                            (!begun || replay) && lost <= LOST_TRIES
                        }
                        Fail::Pg(e) => retryable(e) && tries < TX_TRIES,
                        Fail::Core(_) => false,
                    };
                    if !again {
                        return Err(to_error(&self.cfg, fail));
                    }
                }
            }
        }
    }

    /// The first occurrence of each id keeps its place; later ones are
    /// reported as the id's status after the batch.
    fn first_of<P>(items: &[P], id_of: impl Fn(&P) -> i64) -> Vec<bool> {
        let mut seen = HashSet::new();
        items.iter().map(|x| seen.insert(id_of(x))).collect()
    }

    /// A batch of guarded moves done by one statement (`run_batch` gives
    /// the ids it moved, and is told when it replays a run whose
    /// connection broke): items not moved are explained by the guard each
    /// needed (`guard_of`: a forced move needs less).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn guarded_batch<P>(
        &self,
        items: &[P],
        id_of: impl Fn(&P) -> i64,
        worker_of: impl Fn(&P) -> Option<&str>,
        guard_of: impl Fn(&P) -> Guard,
        action: &'static str,
        mut pre: impl FnMut(&P) -> Option<Error>,
        run_batch: impl Fn(&mut Db<'_, postgres::Client>, &[usize], bool) -> PgResult<Vec<i64>>,
    ) -> Result<Vec<Result<()>>> {
        // Every batch statement here is guarded by the status it moves
        // from: running it again after a break changes nothing twice.
        let first = Self::first_of(items, &id_of);
        let mut out: Vec<Option<Result<()>>> = items.iter().map(|_| None).collect();
        let mut todo = Vec::new();
        for (i, x) in items.iter().enumerate() {
            if let Some(e) = pre(x) {
                out[i] = Some(Err(e));
            } else if first[i] {
                todo.push(i);
            }
        }
        let moved: HashSet<i64> = if todo.is_empty() {
            HashSet::new()
        } else {
            self.run_replayed(true, |db, replayed| run_batch(db, &todo, replayed))?.into_iter().collect()
        };
        if !moved.is_empty() {
            self.wake.bump();
        }
        for &i in &todo {
            if moved.contains(&id_of(&items[i])) {
                out[i] = Some(Ok(()));
            }
        }
        let unexplained: Vec<i64> = out.iter().zip(items).filter(|(o, _)| o.is_none()).map(|(_, x)| id_of(x)).collect();
        let found =
            if unexplained.is_empty() { HashMap::new() } else { self.run(true, |db| statuses(db, &unexplained))? };
        Ok(out
            .into_iter()
            .zip(items)
            .map(|(o, x)| {
                o.unwrap_or_else(|| {
                    let id = id_of(x);
                    Err(rules::explain(found.get(&id).copied(), id, worker_of(x), guard_of(x), action))
                })
            })
            .collect())
    }

    /// A batch whose items each need their own statements, in one
    /// transaction; `f` gives each item's outcome (and is told when it
    /// replays a run whose connection broke).
    pub(super) fn per_item<P, T>(
        &self,
        items: &[P],
        replay: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>, &P, bool) -> PgResult<Result<T>>,
    ) -> Result<Vec<Result<T>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.tx_replayed(replay, |db, replayed| {
            items.iter().map(|x| f(db, x, replayed)).collect::<PgResult<Vec<Result<T>>>>()
        })?;
        self.wake.bump();
        Ok(out)
    }
}
