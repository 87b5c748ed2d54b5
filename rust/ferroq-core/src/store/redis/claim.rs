//! Hand-outs: claim, start and active. A claim reads the head of the
//! queue's ready set and the due part of its scheduled set, picks tasks in
//! claim order by the shared rules, and commits each task on its own guard
//! (moving the due tasks it saw into the ready set on the way). A serial
//! queue's hand-outs, and claims while function limits are in force,
//! commit all or nothing, guarded by the queue's running count and the
//! limits' buckets and running counts, which serialises them store-wide.

use super::codec::Record;
use super::moves::{finished, per_item};
use super::tx::{id_of_member, Loaded, Tx};
use super::{admin, RedisStore};
use crate::error::Error;
use crate::error::Result;
use crate::store::rules::{self, claim_order_aged, Guard};
use crate::store::{allowances, ActiveParams, ClaimParams, StartParams, StoredLimit};
use crate::task::{Status, Task};
use std::collections::HashMap;

/// Whether a worker with `resources` (JSON object of numbers) meets a
/// task's `requires`: each requirement at most the resource (missing: 0).
pub(super) fn requirements_met(requires: Option<&str>, resources: &serde_json::Value) -> bool {
    let Some(req) = requires else { return true };
    let Ok(serde_json::Value::Object(req)) = serde_json::from_str::<serde_json::Value>(req) else { return true };
    req.iter().all(|(k, v)| {
        let need = v.as_f64().unwrap_or(0.0);
        need <= resources.get(k).and_then(|r| r.as_f64()).unwrap_or(0.0)
    })
}

/// A queued task handed to `worker` now.
fn running(mut t: Task, worker: &str, now: i64, lease_ms: i64) -> Record {
    t.status = Status::Running;
    t.attempts += 1;
    t.lease_until = Some(now + lease_ms);
    t.worker = Some(worker.to_string());
    t.started_at = Some(now);
    t.cancel_requested = false;
    Record::live(t)
}

/// What a claim may take: tasks of the queue that are queued and due, not
/// past their deadline, whose requirements the worker meets, in claim
/// order (at least `want` of them when that many exist, reading on past
/// ineligible ones); and the due tasks of the scheduled set (to move).
fn candidates(
    s: &RedisStore,
    p: &ClaimParams,
    now: i64,
    want: usize,
    aging: Option<i64>,
) -> Result<(Vec<Loaded>, Vec<Loaded>)> {
    let resources: serde_json::Value = p
        .resources
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| crate::Error::InvalidArgument(format!("resources must be a JSON object: {e}")))?
        .unwrap_or(serde_json::Value::Null);
    let due: Vec<i64> = s.q(redis::cmd("ZRANGEBYSCORE")
        .arg(s.keys.sched(&p.queue))
        .arg("-inf")
        .arg(now)
        .arg("LIMIT")
        .arg(0)
        .arg(1000))?;
    let ok = |l: &Loaded| {
        let t = &l.rec.task;
        t.status == Status::Queued
            && t.queue == p.queue
            && t.run_at <= now
            && t.expires_at.is_none_or(|e| e > now)
            && requirements_met(t.requires.as_deref(), &resources)
    };
    let due: Vec<Loaded> = s.load(&due)?.into_iter().flatten().collect();
    let mut eligible: Vec<Loaded> = due.iter().filter(|l| ok(l)).cloned().collect();
    let page = want * 2 + 32;
    let mut offset = 0usize;
    loop {
        let members: Vec<String> = s.q(redis::cmd("ZRANGEBYLEX")
            .arg(s.keys.ready(&p.queue))
            .arg("-")
            .arg("+")
            .arg("LIMIT")
            .arg(offset)
            .arg(page))?;
        let ids: Vec<i64> = members.iter().filter_map(|m| id_of_member(m)).collect();
        eligible.extend(s.load(&ids)?.into_iter().flatten().filter(|l| ok(l)));
        offset += members.len();
        if members.len() < page || eligible.len() >= want + due.len() || offset >= 100 * page {
            break;
        }
    }
    let order = claim_order_aged(aging);
    eligible.sort_by(|a, b| order(&a.rec.task, &b.rec.task));
    eligible.dedup_by_key(|l| l.rec.task.id);
    Ok((eligible, due))
}

/// Moves due scheduled tasks that were not taken into the ready set (a
/// task re-written as it is lands where its run_at says, now).
fn promote(tx: &mut Tx<'_>, due: &[Loaded], taken: &[i64], each: bool) -> Result<()> {
    for l in due.iter().filter(|l| l.rec.task.status == Status::Queued && !taken.contains(&l.rec.task.id)) {
        if each {
            tx.item();
        }
        tx.put(Some(l), Some(&l.rec))?;
    }
    Ok(())
}

/// The queue's options, after finishing any re-rank an aging change left.
fn options_for_claim(s: &RedisStore, queue: &str) -> Result<crate::store::QueueOptions> {
    let stored = admin::stored_options(s, queue)?;
    if stored.prev_aging.is_some() {
        admin::migrate_ready(s, queue)?;
        return admin::queue_options(s, queue);
    }
    Ok(stored.o)
}

/// [`Store::claim`](crate::store::Store::claim).
pub(super) fn claim(s: &RedisStore, p: &ClaimParams) -> Result<Vec<Task>> {
    rules::check_claim(p)?;
    if let Some(r) = &p.resources {
        crate::task::check_resources("resources", r)?;
    }
    let options = options_for_claim(s, &p.queue)?;
    if options.paused {
        return Ok(Vec::new());
    }
    let lease_ms = rules::lease_for(p.lease_ms, options.answer_timeout_ms);
    if options.serial {
        return Ok(serial_handout(s, p, lease_ms, false)?.into_iter().collect());
    }
    let aging = options.aging_ms;
    let limited: i64 = s.q(redis::cmd("SCARD").arg(s.keys.k("limits")))?;
    if limited > 0 {
        return s.retrying(|| claim_limited(s, p, lease_ms, aging));
    }
    s.retrying(|| {
        let now = s.clock.now_ms();
        let (eligible, due) = candidates(s, p, now, p.limit as usize, aging)?;
        let chosen: Vec<&Loaded> = eligible.iter().take(p.limit as usize).collect();
        let mut tx = Tx::new(s, now);
        let mut groups = Vec::new();
        for l in &chosen {
            let g = tx.item();
            tx.put(Some(l), Some(&running(l.rec.task.clone(), &p.worker, now, lease_ms)))?;
            groups.push(g);
        }
        let taken: Vec<i64> = chosen.iter().map(|l| l.rec.task.id).collect();
        promote(&mut tx, &due, &taken, true)?;
        let flags = tx.commit_each()?;
        let mut out = Vec::new();
        for (l, g) in chosen.iter().zip(groups) {
            if flags.get(g).copied().unwrap_or(false) {
                out.push(running(l.rec.task.clone(), &p.worker, now, lease_ms).task);
            }
        }
        // Lost every race: read again (others took the head of the queue).
        if out.is_empty() && !chosen.is_empty() {
            return Ok(None);
        }
        Ok(Some(out))
    })
}

/// A claim while function limits are in force: all or nothing, guarded by
/// every limit record (bucket) and the running counts of limited names.
fn claim_limited(s: &RedisStore, p: &ClaimParams, lease_ms: i64, aging: Option<i64>) -> Result<Option<Vec<Task>>> {
    let now = s.clock.now_ms();
    let (limits, raws) = admin::stored_limits(s)?;
    let names: Vec<String> = limits.iter().map(|l| l.limit.name.clone()).collect();
    let rn_keys: Vec<String> = names.iter().map(|n| s.keys.running_name(n)).collect();
    let rn_raw: Vec<Option<Vec<u8>>> =
        if rn_keys.is_empty() { Vec::new() } else { s.q(redis::cmd("MGET").arg(&rn_keys))? };
    let mut running_by: HashMap<String, u64> = HashMap::new();
    for (n, r) in names.iter().zip(&rn_raw) {
        let v = r.as_deref().and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        running_by.insert(n.clone(), v.max(0) as u64);
    }
    let (allowance, levels) = allowances(&limits, &running_by, now);
    let (eligible, due) = candidates(s, p, now, p.limit as usize * 4, aging)?;
    let mut used: HashMap<String, u64> = HashMap::new();
    let mut chosen: Vec<&Loaded> = Vec::new();
    for l in &eligible {
        if chosen.len() >= p.limit as usize {
            break;
        }
        let name = &l.rec.task.name;
        if let Some(allow) = allowance.get(name) {
            let u = used.entry(name.clone()).or_default();
            if *u >= *allow {
                continue;
            }
            *u += 1;
        }
        chosen.push(l);
    }
    let mut tx = Tx::new(s, now);
    for ((k, raw), l) in rn_keys.iter().zip(&rn_raw).zip(&limits) {
        tx.guard(k.clone(), raw.clone());
        tx.guard(s.keys.lim(&l.limit.name), raws.get(&l.limit.name).cloned());
    }
    for l in &limits {
        let Some(level) = levels.get(&l.limit.name) else { continue };
        let spent = used.get(&l.limit.name).copied().unwrap_or(0) as f64;
        let stored = StoredLimit { limit: l.limit.clone(), tokens: level - spent, refilled_at: now.max(l.refilled_at) };
        tx.cmd(vec![b"SET".to_vec(), s.keys.lim(&l.limit.name).into_bytes(), admin::encode_limit(&stored)]);
    }
    for l in &chosen {
        tx.put(Some(l), Some(&running(l.rec.task.clone(), &p.worker, now, lease_ms)))?;
    }
    let taken: Vec<i64> = chosen.iter().map(|l| l.rec.task.id).collect();
    promote(&mut tx, &due, &taken, false)?;
    if !tx.commit_all()? {
        return Ok(None);
    }
    let mut out: Vec<Task> =
        chosen.iter().map(|l| running(l.rec.task.clone(), &p.worker, now, lease_ms).task).collect();
    out.sort_by(claim_order_aged(aging));
    Ok(Some(out))
}

/// The running tasks of a queue.
fn running_in(s: &RedisStore, queue: &str) -> Result<Vec<Loaded>> {
    let ids: Vec<i64> = s.q(redis::cmd("SMEMBERS").arg(s.keys.running_set(queue)))?;
    let mut out: Vec<Loaded> =
        s.load(&ids)?.into_iter().flatten().filter(|l| l.rec.task.status == Status::Running).collect();
    out.sort_by_key(|l| (l.rec.task.started_at, l.rec.task.id));
    Ok(out)
}

/// The hand-out of a serial queue (`want_active` false: a claim) or of
/// `active` (true): one task only when none of the queue runs, guarded by
/// the queue's running count.
fn serial_handout(s: &RedisStore, p: &ClaimParams, lease_ms: i64, want_active: bool) -> Result<Option<Task>> {
    s.retrying(|| {
        let now = s.clock.now_ms();
        let run_key = s.keys.run(&p.queue);
        let run_raw = s.get_raw(&run_key)?;
        let running_now = running_in(s, &p.queue)?;
        if let Some(first) = running_now.first() {
            return Ok(Some(if want_active { Some(first.rec.task.clone()) } else { None }));
        }
        let options = options_for_claim(s, &p.queue)?;
        if options.paused {
            return Ok(Some(None));
        }
        let (eligible, due) = candidates(s, p, now, 1, options.aging_ms)?;
        let Some(l) = eligible.first() else { return Ok(Some(None)) };
        let mut tx = Tx::new(s, now);
        tx.guard(run_key, run_raw);
        let rec = running(l.rec.task.clone(), &p.worker, now, lease_ms);
        tx.put(Some(l), Some(&rec))?;
        let _ = due;
        Ok(if tx.commit_all()? { Some(Some(rec.task)) } else { None })
    })
}

/// [`Store::active`](crate::store::Store::active).
pub(super) fn active(s: &RedisStore, p: &ActiveParams) -> Result<Option<Task>> {
    let cp = p.as_claim();
    rules::check_claim(&cp)?;
    let options = admin::queue_options(s, &p.queue)?;
    serial_handout(s, &cp, rules::lease_for(p.lease_ms, options.answer_timeout_ms), true)
}

/// [`Store::start`](crate::store::Store::start).
pub(super) fn start(s: &RedisStore, p: &[StartParams]) -> Result<Vec<Result<Task>>> {
    per_item(
        s,
        p,
        |x| x.id,
        |tx, x, l| {
            if let Err(e) = rules::check_start(&x.worker, x.lease_ms) {
                return Ok(Err(e));
            }
            let Some(l) = l.filter(|l| l.rec.task.status == Status::Queued) else {
                return Ok(Err(rules::explain(
                    l.map(|l| l.rec.task.status),
                    x.id,
                    Some(&x.worker),
                    Guard::Queued,
                    "start",
                )));
            };
            let options = admin::queue_options(tx.s, &l.rec.task.queue)?;
            if options.paused {
                return Ok(Err(Error::QueuePaused { queue: options.queue }));
            }
            if options.serial {
                let run_key = tx.s.keys.run(&options.queue);
                tx.guard(run_key.clone(), tx.s.get_raw(&run_key)?);
                for r in running_in(tx.s, &options.queue)? {
                    let mut t = r.rec.task.clone();
                    if t.cancel_requested {
                        t.error = Some(rules::CANCELLED.into());
                        let rec = finished(tx.s, t, Status::Cancelled, tx.now)?;
                        tx.put(Some(&r), Some(&rec))?;
                    } else {
                        t.status = Status::Queued;
                        t.attempts = t.attempts.saturating_sub(1);
                        t.lease_until = None;
                        t.worker = None;
                        tx.put(Some(&r), Some(&Record::live(t)))?;
                    }
                }
            }
            let lease_ms = rules::lease_for(x.lease_ms, options.answer_timeout_ms);
            let rec = running(l.rec.task.clone(), &x.worker, tx.now, lease_ms);
            tx.put(Some(l), Some(&rec))?;
            tx.wakes = true;
            Ok(Ok(rec.task))
        },
    )
}
