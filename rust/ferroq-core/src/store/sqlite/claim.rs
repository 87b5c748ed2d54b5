//! Claims. Each shard's claim is one IMMEDIATE transaction running
//! `sql::CLAIM` over the ready index; with several shards, their heads are
//! peeked first and merged in claim order. While function limits are in
//! force, shard 0's write lock serialises claims store-wide.
//!
//! A claimed row that is damaged (its payload fails its checksum, or a
//! column does not decode) is not handed out and does not fail the batch:
//! in the same transaction it moves to `failed` with the damage (naming
//! the shard file and the task) as its error, so that it is neither lost
//! silently nor claimed again and again, and the rest of the batch runs.
//! Reading it later (`get`, `list`) reports the damage.

use super::events::{self, Moves};
use super::read::DamagedRow;
use super::tx::WriteTx;
use super::{sql, SqliteStore};
use crate::error::Result;
use crate::store::rules::{self, claim_order_aged};
use crate::store::{allowances, ClaimParams, FunctionLimit, StoredLimit};
use crate::task::{Status, Task};
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// What a hand-out of a queue needs to know first (`sql::CLAIM_MODE`,
/// one statement on shard 0).
pub(super) struct ClaimMode {
    /// Function limits are in force (claims take the limited path).
    pub limited: bool,
    /// The queue is serial.
    pub serial: bool,
    /// The queue's answer timeout (the lease of what it hands out).
    pub answer_timeout_ms: Option<i64>,
    /// The queue is paused: nothing is handed out.
    pub paused: bool,
    /// The queue's aging step (the claim order, `rules::claim_rank`).
    pub aging_ms: Option<i64>,
}

/// Reads the [`ClaimMode`] of `queue` from shard 0.
pub(super) fn claim_mode(conn0: &Connection, queue: &str) -> Result<ClaimMode> {
    Ok(conn0.prepare_cached(sql::CLAIM_MODE)?.query_row([queue], |r| {
        Ok(ClaimMode {
            limited: r.get::<_, i64>(0)? > 0,
            serial: r.get::<_, i64>(1)? != 0,
            answer_timeout_ms: r.get(2)?,
            paused: r.get::<_, i64>(3)? != 0,
            aging_ms: r.get(4)?,
        })
    })?)
}

/// The parts of a claim every shard's statement shares.
struct ClaimCtx<'a> {
    now: i64,
    /// The queue's aging step (the order claimed tasks are returned in).
    aging_ms: Option<i64>,
    /// The lease given (the queue's answer timeout, when it has one).
    lease_ms: i64,
    resources: &'a str,
    /// JSON array of task names that must not be claimed now.
    excluded: Option<&'a str>,
}

/// Every function limit with its bucket, by name.
pub(super) fn read_limits(conn: &Connection) -> Result<Vec<StoredLimit>> {
    let mut stmt = conn.prepare_cached(sql::LIMITS)?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredLimit {
            limit: FunctionLimit { name: r.get(0)?, max_running: r.get(1)?, rate_per_s: r.get(2)?, burst: r.get(3)? },
            tokens: r.get(4)?,
            refilled_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// [`Store::claim`](crate::store::Store::claim).
pub(super) fn claim(store: &SqliteStore, p: &ClaimParams) -> Result<Vec<Task>> {
    rules::check_claim(p)?;
    let now = store.clock.now_ms();
    let resources = p.resources.as_deref().unwrap_or("{}");
    // Read on shard 0's reader: the writer may be busy with a claim of the
    // claimers whose home shard 0 is, and this one need not wait for it.
    let mode = store.on_reader(0, |conn| claim_mode(conn, &p.queue))?;
    if mode.paused {
        return Ok(Vec::new());
    }
    let lease_ms = rules::lease_for(p.lease_ms, mode.answer_timeout_ms);
    if mode.serial || mode.limited {
        let conn0 = store.shards[0].conn.lock();
        if mode.serial {
            let got = store.serial_handout(p, lease_ms, conn0, &mode, false)?;
            return Ok(got.into_iter().collect());
        }
        return store.claim_limited(p, lease_ms, resources, mode.aging_ms, conn0);
    }
    let c = ClaimCtx { now, aging_ms: mode.aging_ms, lease_ms, resources, excluded: None };
    if p.home.is_some() {
        store.claim_by_heads(p, &c, None, &mut None)
    } else {
        // No home: the exact claim order across shards, ties included (a
        // person's or a script's claim, not a worker's).
        store.claim_merged(p, &c, None, &mut None)
    }
}

/// How much longer another shard's head must have been ready than the
/// best home shard's, at equal claim rank, for a claimer with a home to
/// take it first. It bounds how long a shard that is nobody's home (its
/// worker is down, or fewer claimers run than were counted) waits behind
/// busy home shards, and it evens out shards drained at different speeds.
pub(super) const HOME_SLACK_MS: i64 = 250;

/// The first ready task of one shard in claim order.
#[derive(Debug, Clone, Copy)]
struct Head {
    rank: i64,
    run_at: i64,
    /// Global id.
    id: i64,
}

impl Head {
    /// Claim order: higher rank first, then earlier run_at, then lower id.
    fn before(&self, other: &Head) -> bool {
        (std::cmp::Reverse(self.rank), self.run_at, self.id) < (std::cmp::Reverse(other.rank), other.run_at, other.id)
    }
}

/// The shard the next part of a claim comes from: the shard whose head is
/// first in claim order, unless a home shard's head ranks as high and
/// became ready no more than [`HOME_SLACK_MS`] after it.
fn pick_shard(heads: &[Option<Head>], home: &std::ops::Range<u32>) -> Option<usize> {
    let first_of = |keep: &dyn Fn(usize) -> bool| {
        let mut best: Option<(usize, Head)> = None;
        for (s, h) in heads.iter().enumerate() {
            if let (Some(h), true) = (h, keep(s)) {
                if best.as_ref().is_none_or(|(_, b)| h.before(b)) {
                    best = Some((s, *h));
                }
            }
        }
        best
    };
    let (best, b) = first_of(&|_| true)?;
    match first_of(&|s| home.contains(&(s as u32))) {
        Some((s, h)) if h.rank == b.rank && h.run_at <= b.run_at.saturating_add(HOME_SLACK_MS) => Some(s),
        _ => Some(best),
    }
}

impl SqliteStore {
    /// Claims up to `limit` tasks in one shard's transaction, only tasks
    /// whose claim rank is at least `floor` when given (the part of a claim
    /// one shard serves while another shard's head ranks `floor`). With an
    /// allowance (function limits in force), tasks of a limited name beyond
    /// what it allows are given back at once, uncounted.
    #[allow(clippy::too_many_arguments)]
    fn claim_in_from(
        &self,
        tx: &WriteTx,
        shard: usize,
        p: &ClaimParams,
        limit: u32,
        c: &ClaimCtx<'_>,
        allowance: &mut Option<HashMap<String, u64>>,
        floor: Option<i64>,
    ) -> Result<Vec<Task>> {
        let args = params![p.queue, c.now, limit, p.worker, c.now + c.lease_ms, c.resources, c.excluded];
        let rows = match floor {
            None => self.query_rows(tx, shard, sql::CLAIM, args)?,
            Some(f) => self.query_rows(
                tx,
                shard,
                sql::CLAIM_RANKED_AT_LEAST,
                params![p.queue, c.now, limit, p.worker, c.now + c.lease_ms, c.resources, c.excluded, f],
            )?,
        };
        // Recorded before anything else the transaction records (a damaged
        // row's failure, a give-back): the triggers leave claims out.
        if rows.iter().all(|r| r.is_ok()) {
            let tasks: Vec<&Task> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
            events::record_claims(self, tx, &tasks)?;
        } else {
            let n = i64::from(self.shard_count());
            let locals: Vec<i64> = rows.iter().map(|r| r.as_ref().map_or_else(|d| d.id, |t| t.id) / n).collect();
            events::record_moves(self, tx, Moves::Claimed, &locals)?;
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Ok(t) => claimed.push(t),
                Err(damaged) => self.fail_damaged(tx, damaged, c.now)?,
            }
        }
        let Some(allow) = allowance else { return Ok(claimed) };
        let mut kept = Vec::with_capacity(claimed.len());
        let mut sorted = claimed;
        sorted.sort_by(claim_order_aged(c.aging_ms));
        for t in sorted {
            match allow.get_mut(&t.name) {
                Some(0) => {
                    tx.prepare_cached(sql::UNCLAIM)?.execute([t.id / i64::from(self.shard_count())])?;
                }
                Some(n) => {
                    *n -= 1;
                    kept.push(t);
                }
                None => kept.push(t),
            }
        }
        Ok(kept)
    }

    /// Moves a damaged task just claimed to `failed`, its damage as its error.
    fn fail_damaged(&self, tx: &WriteTx, damaged: DamagedRow, now: i64) -> Result<()> {
        if damaged.id < i64::from(self.shard_count()) {
            // Not even the id could be read: nothing to settle it by.
            return Err(damaged.error);
        }
        let local = damaged.id / i64::from(self.shard_count());
        let shard = (damaged.id % i64::from(self.shard_count())) as usize;
        let why = damaged.error.to_string();
        self.move_to_done(tx, shard, local, Status::Failed, None, Some(&why), Status::Running, None, now)?;
        Ok(())
    }

    /// Runs `f` on shard `s`'s reader connection (its writer in memory,
    /// which has none): reads that must not queue behind this process's
    /// write transactions on the shard.
    pub(super) fn on_reader<T>(&self, s: usize, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let shard = &self.shards[s];
        let out = match &shard.watch {
            Some(reader) => f(&reader.lock()),
            None => f(&shard.conn.lock()),
        };
        out.map_err(|e| self.shard_err(s, e))
    }

    /// The first ready task of shard `s` in claim order, if it has one
    /// (shard 0 read through `tx0` when the caller holds it: its lock is
    /// taken, and in memory the shard has no other connection).
    fn peek_head(&self, s: usize, p: &ClaimParams, c: &ClaimCtx<'_>, tx0: Option<&WriteTx>) -> Result<Option<Head>> {
        let peek = |conn: &Connection| -> Result<Option<Head>> {
            let mut stmt = conn.prepare_cached(sql::PEEK_READY)?;
            let mut rows = stmt.query(params![p.queue, c.now, 1, c.resources, c.excluded])?;
            Ok(match rows.next()? {
                Some(r) => Some(Head { rank: r.get(0)?, run_at: r.get(1)?, id: self.global(s, r.get(2)?) }),
                None => None,
            })
        };
        match tx0 {
            Some(tx) if s == 0 => peek(tx).map_err(|e| self.shard_err(0, e)),
            _ => self.on_reader(s, peek),
        }
    }

    /// A claim with no function limits in force and a queue that is not
    /// serial. Each shard's head is peeked (a read); the claim is then
    /// served shard by shard, each part one write transaction: first the
    /// shard [`pick_shard`] names (a home shard, in the common case), taking
    /// only tasks ranked at least as high as every other shard's head, then,
    /// while the claim is not full, the next. So no task is handed out while
    /// a ready task of strictly higher rank waited in another shard when
    /// the claim began, and a claimer whose home shards hold enough work
    /// takes it in one transaction, never touching the others' write locks.
    ///
    /// `tx0` is shard 0's open transaction when the caller holds it (a
    /// claim under function limits, whose `allowance` gives back what a
    /// limited name may not take), so shard 0 is claimed through it.
    fn claim_by_heads(
        &self,
        p: &ClaimParams,
        c: &ClaimCtx<'_>,
        tx0: Option<&WriteTx>,
        allowance: &mut Option<HashMap<String, u64>>,
    ) -> Result<Vec<Task>> {
        let n = self.shard_count();
        let home = match p.home {
            Some((index, count)) if n > 1 => rules::home_shards(index, count, n),
            _ => 0..0,
        };
        let mut heads = (0..self.shards.len()).map(|s| self.peek_head(s, p, c, tx0)).collect::<Result<Vec<_>>>()?;
        let mut all: Vec<Task> = Vec::new();
        let mut want = p.limit;
        // Each round claims from one shard; bounded so that heads taken
        // again and again by other processes cannot keep a claim going.
        let mut rounds = 2 * self.shards.len();
        while let Some(s) = pick_shard(&heads, &home).filter(|_| rounds > 0) {
            rounds -= 1;
            let floor = heads.iter().enumerate().filter(|(o, _)| *o != s).filter_map(|(_, h)| h.map(|h| h.rank)).max();
            let got = match tx0 {
                Some(tx) if s == 0 => {
                    self.claim_in_from(tx, s, p, want, c, allowance, floor).map_err(|e| self.shard_err(s, e))?
                }
                _ => self.write(s, |tx| self.claim_in_from(tx, s, p, want, c, allowance, floor))?,
            };
            want -= got.len() as u32;
            all.extend(got);
            if want == 0 || floor.is_none() {
                break;
            }
            // The shard ran out of work ranked `floor` or higher; what it
            // has left competes again with the other heads.
            heads[s] = self.peek_head(s, p, c, tx0)?;
        }
        // RETURNING gives rows in no particular order.
        all.sort_by(claim_order_aged(c.aging_ms));
        Ok(all)
    }

    /// Peeks every shard, merges the heads in claim order and claims the
    /// best `p.limit`. `tx0` is shard 0's open transaction when the caller
    /// holds it (limited claims), so shard 0 is used through it.
    fn claim_merged(
        &self,
        p: &ClaimParams,
        c: &ClaimCtx<'_>,
        tx0: Option<&WriteTx>,
        allowance: &mut Option<HashMap<String, u64>>,
    ) -> Result<Vec<Task>> {
        // Peek (a read, no write lock) so an idle claim never blocks writers,
        // and so several shards can be merged in priority order.
        let peek_limit = if self.shards.len() == 1 { 1 } else { p.limit };
        let mut heads: Vec<(i64, i64, i64, usize)> = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let guard;
            let conn: &Connection = match tx0 {
                Some(tx) if s == 0 => tx,
                _ => {
                    guard = shard.conn.lock();
                    &guard
                }
            };
            let mut peek = || -> Result<()> {
                let mut stmt = conn.prepare_cached(sql::PEEK_READY)?;
                let mut rows = stmt.query(params![p.queue, c.now, peek_limit, c.resources, c.excluded])?;
                while let Some(r) = rows.next()? {
                    heads.push((r.get(0)?, r.get(1)?, self.global(s, r.get(2)?), s));
                }
                Ok(())
            };
            peek().map_err(|e| self.shard_err(s, e))?;
        }
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        let mut per_shard = vec![0u32; self.shards.len()];
        if self.shards.len() == 1 {
            per_shard[0] = p.limit;
        } else {
            heads.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            for h in heads.iter().take(p.limit as usize) {
                per_shard[h.3] += 1;
            }
        }
        let mut all = Vec::new();
        let mut tried = vec![false; self.shards.len()];
        for (s, k) in per_shard.into_iter().enumerate().filter(|(_, k)| *k > 0) {
            tried[s] = true;
            all.extend(self.claim_from(s, p, k, c, tx0, allowance)?);
        }
        // A concurrent claimer may have taken what was peeked in the shards
        // chosen: take what is missing from the other shards that had ready
        // work (in the order of their heads), rather than come back with
        // less while tasks wait elsewhere.
        for h in &heads {
            let missing = (p.limit as usize).saturating_sub(all.len());
            if missing == 0 {
                break;
            }
            let s = h.3;
            if std::mem::replace(&mut tried[s], true) {
                continue;
            }
            all.extend(self.claim_from(s, p, missing as u32, c, tx0, allowance)?);
        }
        all.sort_by(claim_order_aged(c.aging_ms));
        Ok(all)
    }

    /// Claims up to `k` tasks from shard `s` (in `tx0` for shard 0 when
    /// the caller holds it).
    fn claim_from(
        &self,
        s: usize,
        p: &ClaimParams,
        k: u32,
        c: &ClaimCtx<'_>,
        tx0: Option<&WriteTx>,
        allowance: &mut Option<HashMap<String, u64>>,
    ) -> Result<Vec<Task>> {
        match tx0 {
            Some(tx) if s == 0 => self.claim_in_from(tx, s, p, k, c, allowance, None).map_err(|e| self.shard_err(s, e)),
            _ => self.write(s, |tx| self.claim_in_from(tx, s, p, k, c, allowance, None)),
        }
    }

    /// A claim while function limits are in force: shard 0's write lock
    /// serialises every such claim store-wide, so running counts and rate
    /// buckets are exact across processes.
    fn claim_limited(
        &self,
        p: &ClaimParams,
        lease_ms: i64,
        resources: &str,
        aging_ms: Option<i64>,
        conn0: parking_lot::MutexGuard<'_, Connection>,
    ) -> Result<Vec<Task>> {
        let tx0 = WriteTx::begin(&conn0)?;
        let tasks = self.claim_limited_in(&tx0, p, lease_ms, resources, aging_ms)?;
        tx0.commit()?;
        Ok(tasks)
    }

    /// The body of [`Self::claim_limited`], inside shard 0's open
    /// transaction `tx0` (which the caller commits).
    fn claim_limited_in(
        &self,
        tx0: &WriteTx,
        p: &ClaimParams,
        lease_ms: i64,
        resources: &str,
        aging_ms: Option<i64>,
    ) -> Result<Vec<Task>> {
        // Read the clock only now that the lock is held: a time read before
        // waiting for it could be older than a bucket's last refill, and
        // moving `refilled_at` back would hand out its tokens twice.
        let now = self.clock.now_ms();
        let limits = read_limits(tx0)?;
        let mut running: HashMap<String, u64> = HashMap::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let guard;
            let conn: &Connection = if s == 0 {
                tx0
            } else {
                guard = shard.conn.lock();
                &guard
            };
            let mut stmt = conn.prepare_cached(sql::RUNNING_BY_NAME)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                *running.entry(r.get(0)?).or_default() += r.get::<_, i64>(1)? as u64;
            }
        }
        let (allowance, levels) = allowances(&limits, &running, now);
        let full: Vec<&String> = allowance.iter().filter(|(_, a)| **a == 0).map(|(n, _)| n).collect();
        let excluded = if full.is_empty() { None } else { serde_json::to_string(&full).ok() };
        let before = allowance.clone();
        let c = ClaimCtx { now, aging_ms, lease_ms, resources, excluded: excluded.as_deref() };
        let mut allow = Some(allowance);
        let tasks = if p.home.is_some() {
            self.claim_by_heads(p, &c, Some(tx0), &mut allow)?
        } else {
            self.claim_merged(p, &c, Some(tx0), &mut allow)?
        };
        let after = allow.unwrap_or_default();
        for (name, level) in levels {
            let used = before.get(&name).copied().unwrap_or(0) - after.get(&name).copied().unwrap_or(0);
            tx0.prepare_cached(sql::LIMIT_TOKENS)?.execute(params![name, level - used as f64, now])?;
        }
        Ok(tasks)
    }

    /// The hand-out of a serial queue (`want_active` false: a claim) or of
    /// `active` (true), under shard 0's write lock, which every hand-out of
    /// a serial queue takes (claims, `start`, `active`), in this process
    /// and in others: the queue's running tasks are looked up in every
    /// shard, and one task is claimed only when none runs. So two tasks of
    /// the queue never run at once, however many shards and processes.
    /// Returns the task handed out (or, for `active`, the one running). A
    /// paused queue hands nothing out (`active` still reports the running one).
    pub(super) fn serial_handout(
        &self,
        p: &ClaimParams,
        lease_ms: i64,
        conn0: parking_lot::MutexGuard<'_, Connection>,
        mode: &ClaimMode,
        want_active: bool,
    ) -> Result<Option<Task>> {
        let tx0 = WriteTx::begin(&conn0)?;
        // Read again under the lock: a pause committed since `mode` was read counts.
        let paused = claim_mode(&tx0, &p.queue)?.paused;
        let running = self.active_in(&tx0, &p.queue)?;
        if running.is_some() || paused {
            tx0.commit()?;
            return Ok(if want_active { running } else { None });
        }
        let limited = mode.limited;
        let one = ClaimParams { limit: 1, ..p.clone() };
        let resources = one.resources.as_deref().unwrap_or("{}");
        let mut tasks = if limited {
            self.claim_limited_in(&tx0, &one, lease_ms, resources, mode.aging_ms)?
        } else {
            let c = ClaimCtx { now: self.clock.now_ms(), aging_ms: mode.aging_ms, lease_ms, resources, excluded: None };
            self.claim_merged(&one, &c, Some(&tx0), &mut None)?
        };
        tx0.commit()?;
        Ok(tasks.pop())
    }

    /// The running task of `queue` that started first, in any shard
    /// (shard 0 read through `tx0`, which the caller holds).
    pub(super) fn active_in(&self, tx0: &WriteTx, queue: &str) -> Result<Option<Task>> {
        let mut best: Option<Task> = None;
        for s in 0..self.shards.len() {
            let found = if s == 0 {
                self.query_tasks(tx0, 0, sql::ACTIVE_IN_QUEUE, [queue]).map_err(|e| self.shard_err(0, e))?
            } else {
                self.read(s, |conn| self.query_tasks(conn, s, sql::ACTIVE_IN_QUEUE, [queue]))?
            };
            for t in found {
                let earlier = match &best {
                    Some(b) => (t.started_at, t.id) < (b.started_at, b.id),
                    None => true,
                };
                if earlier {
                    best = Some(t);
                }
            }
        }
        Ok(best)
    }
}
