//! Claims: one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`
//! in priority order, so concurrent claimers on any host never wait for
//! each other or take the same task. While function limits are in force the
//! limit rows are locked instead, which serialises such claims store-wide.

use super::admin::read_limit;
use super::pool::{to_error, Db, Fail, PgResult};
use super::read::{read_task, read_tasks};
use super::{sql, PostgresStore};
use crate::error::Result;
use crate::store::rules::{self, claim_order_aged};
use crate::store::{allowances, ClaimParams, StoredLimit};
use crate::task::Task;
use std::collections::HashMap;

/// [`Store::claim`](crate::store::Store::claim).
pub(super) fn claim(store: &PostgresStore, p: &ClaimParams) -> Result<Vec<Task>> {
    rules::check_claim(p)?;
    let now = store.clock.now_ms();
    let resources = p.resources.as_deref().unwrap_or("{}");
    let rows = store.run(false, |db| {
        db.query(sql::CLAIM, &[&p.queue, &now, &(p.limit as i64), &p.worker, &(now + p.lease_ms), &resources])
    })?;
    let (limited, aging_ms) = match rows.first() {
        Some(r) => (
            r.try_get::<_, bool>(0).map_err(|e| to_error(&store.cfg, Fail::Pg(e)))?,
            r.try_get::<_, Option<i64>>(1).map_err(|e| to_error(&store.cfg, Fail::Pg(e)))?,
        ),
        None => (false, None),
    };
    if limited {
        return store.claim_special(p, resources);
    }
    let mut tasks = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: Option<i64> = r.try_get(2).map_err(|e| to_error(&store.cfg, Fail::Pg(e)))?;
        if id.is_some() {
            tasks.push(read_task(r, 2).map_err(|f| to_error(&store.cfg, f))?);
        }
    }
    tasks.sort_by(claim_order_aged(aging_ms));
    Ok(tasks)
}

impl PostgresStore {
    /// A claim that `CLAIM` left to the slower path: of a serial queue, or
    /// while function limits are in force.
    fn claim_special(&self, p: &ClaimParams, resources: &str) -> Result<Vec<Task>> {
        let options = super::steer::queue_options(self, &p.queue)?;
        if options.paused {
            return Ok(Vec::new());
        }
        let lease_ms = rules::lease_for(p.lease_ms, options.answer_timeout_ms);
        if options.serial {
            return Ok(self.serial_handout(p, lease_ms, false)?.into_iter().collect());
        }
        self.tx(false, |db| self.claim_limited_in(db, p, lease_ms, resources, options.aging_ms))
    }

    /// The hand-out of a serial queue (`want_active` false: a claim) or of
    /// `active` (true), under the queue's advisory lock, which every
    /// hand-out of a serial queue takes (claims, `start`, `active`) on any
    /// host: one task is claimed only when none of the queue runs. Returns
    /// the task handed out (or, for `active`, the one running). A paused
    /// queue hands nothing out (`active` still reports the running one).
    pub(super) fn serial_handout(&self, p: &ClaimParams, lease_ms: i64, want_active: bool) -> Result<Option<Task>> {
        let resources = p.resources.as_deref().unwrap_or("{}");
        self.tx(false, |db| {
            db.execute(sql::SERIAL_LOCK, &[&p.queue])?;
            if let Some(r) = db.query_opt(sql::ACTIVE_IN_QUEUE, &[&p.queue])? {
                return Ok(if want_active { Some(read_task(&r, 0)?) } else { None });
            }
            let paused = db.query_opt(sql::PAUSED, &[&p.queue])?.map(|r| r.try_get::<_, bool>(0)).transpose()?;
            if paused == Some(true) {
                return Ok(None);
            }
            let one = ClaimParams { limit: 1, ..p.clone() };
            let limited: bool = db.query_opt(sql::LIMITS_ANY, &[])?.map(|r| r.try_get(0)).transpose()?.unwrap_or(false);
            let mut tasks = if limited {
                self.claim_limited_in(db, &one, lease_ms, resources, None)?
            } else {
                let now = self.clock.now_ms();
                let rows =
                    db.query(sql::CLAIM_PLAIN, &[&p.queue, &now, &1i64, &p.worker, &(now + lease_ms), &resources])?;
                read_tasks(&rows)?
            };
            Ok(tasks.pop())
        })
    }

    /// A claim while function limits are in force, in the caller's
    /// transaction: the limit rows are locked for the transaction, which
    /// serialises such claims store-wide, so running counts and rate
    /// buckets are exact across hosts.
    fn claim_limited_in(
        &self,
        db: &mut Db<'_, postgres::Transaction<'_>>,
        p: &ClaimParams,
        lease_ms: i64,
        resources: &str,
        aging_ms: Option<i64>,
    ) -> PgResult<Vec<Task>> {
        {
            let rows = db.query(sql::LIMITS_FOR_UPDATE, &[])?;
            // Read the clock under the lock: a claimer that read it earlier
            // but got the lock later would move refilled_at backwards, and
            // the next claim would refill the same interval twice.
            let now = self.clock.now_ms();
            let mut limits = Vec::new();
            for r in rows {
                limits.push(StoredLimit { limit: read_limit(&r)?, tokens: r.try_get(4)?, refilled_at: r.try_get(5)? });
            }
            let names: Vec<&str> = limits.iter().map(|l| l.limit.name.as_str()).collect();
            let mut running: HashMap<String, u64> = HashMap::new();
            for r in db.query(sql::RUNNING_BY_NAME, &[&names])? {
                running.insert(r.try_get(0)?, r.try_get::<_, i64>(1)?.max(0) as u64);
            }
            let (allowance, levels) = allowances(&limits, &running, now);
            let excluded: Vec<&str> = allowance.iter().filter(|(_, a)| **a == 0).map(|(n, _)| n.as_str()).collect();
            let mut chosen = Vec::new();
            let mut used: HashMap<&str, u64> = HashMap::new();
            let rows = db.query(sql::CLAIM_CANDIDATES, &[&p.queue, &now, &(p.limit as i64), &resources, &excluded])?;
            for r in &rows {
                let id: i64 = r.try_get(0)?;
                let name: &str = r.try_get(1)?;
                match allowance.get(name) {
                    Some(allow) => {
                        let u = used.entry(name).or_default();
                        if *u < *allow {
                            *u += 1;
                            chosen.push(id);
                        }
                    }
                    None => chosen.push(id),
                }
            }
            let mut tasks = if chosen.is_empty() {
                Vec::new()
            } else {
                read_tasks(&db.query(sql::CLAIM_IDS, &[&chosen, &now, &p.worker, &(now + lease_ms)])?)?
            };
            for l in &limits {
                let Some(level) = levels.get(&l.limit.name) else { continue };
                let spent = used.get(l.limit.name.as_str()).copied().unwrap_or(0) as f64;
                let at = now.max(l.refilled_at);
                db.execute(sql::LIMIT_TOKENS, &[&l.limit.name, &(level - spent), &at])?;
            }
            tasks.sort_by(claim_order_aged(aging_ms));
            Ok(tasks)
        }
    }
}
