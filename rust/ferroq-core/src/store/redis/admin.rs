//! Reads (get by key, list, counts, next run), queue options, capacities,
//! function limits, workers, purge, listen data and the event feed.

use super::codec::{decode_event, Record};
use super::moves::per_item;
use super::tx::{id_of_member, Tx};
use super::RedisStore;
use crate::error::{Error, Result};
use crate::store::events::{self as ev, EventRow, EventsPage, EventsParams, KIND_DELIVERED};
use crate::store::rules::{self, LimitWrite};
use crate::store::{
    CapacityParams, FunctionLimit, GetByKeyParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams,
    OnTimeout, PauseParams, PurgeParams, QueueCount, QueueOptions, StoredLimit, WorkerInfo,
};
use crate::task::{Status, Task};
use std::collections::HashMap;

fn parse<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

fn opt_field<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() {
        None
    } else {
        parse(s)
    }
}

fn opt_text<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

// ---- queue options ---------------------------------------------------

/// A queue's options as stored, and the aging step before its last change
/// (Some while tasks ranked under it may remain in `ready_old`).
#[derive(Debug, Clone, Default)]
pub(super) struct StoredOptions {
    pub o: QueueOptions,
    pub prev_aging: Option<Option<i64>>,
}

/// Queue options as stored: `2|serial|answer_timeout_ms|on_timeout|
/// retention_ms|paused|aging_ms|dead_retention_ms|prev|prev_aging|
/// dead_letter` (the dead-letter queue last: it may hold `|`).
fn encode_options(s: &StoredOptions) -> String {
    let o = &s.o;
    format!(
        "2|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        o.serial as u8,
        opt_text(o.answer_timeout_ms),
        o.on_timeout.code(),
        opt_text(o.retention_ms),
        o.paused as u8,
        opt_text(o.aging_ms),
        opt_text(o.dead_retention_ms),
        s.prev_aging.is_some() as u8,
        opt_text(s.prev_aging.flatten()),
        o.dead_letter.as_deref().map(|d| format!("={d}")).unwrap_or_default(),
    )
}

fn decode_options(queue: &str, text: &str) -> Result<StoredOptions> {
    let f: Vec<&str> = text.splitn(11, '|').collect();
    if f.len() != 11 || f[0] != "2" {
        return Err(Error::Corrupt(format!("options of queue {queue:?} are damaged")));
    }
    Ok(StoredOptions {
        o: QueueOptions {
            queue: queue.to_string(),
            serial: f[1] == "1",
            answer_timeout_ms: opt_field(f[2]),
            on_timeout: OnTimeout::from_code(parse(f[3]).unwrap_or(0)),
            retention_ms: opt_field(f[4]),
            paused: f[5] == "1",
            aging_ms: opt_field(f[6]),
            dead_retention_ms: opt_field(f[7]),
            dead_letter: f[10].strip_prefix('=').map(str::to_string),
        },
        prev_aging: (f[8] == "1").then(|| opt_field(f[9])),
    })
}

/// A queue's stored options with their bytes (None: never set).
fn read_options(s: &RedisStore, queue: &str) -> Result<(Option<Vec<u8>>, StoredOptions)> {
    let raw = s.get_raw(&s.keys.qo(queue))?;
    let stored = match &raw {
        Some(r) => decode_options(queue, std::str::from_utf8(r).map_err(|_| Error::Corrupt("queue options".into()))?)?,
        None => StoredOptions { o: QueueOptions { queue: queue.to_string(), ..Default::default() }, prev_aging: None },
    };
    Ok((raw, stored))
}

/// What ready-set ranks of a queue depend on (see `Tx::put`).
#[derive(Debug, Clone)]
pub(super) struct Ranking {
    /// The options' stored bytes (guarded).
    pub raw: Option<Vec<u8>>,
    /// The aging step now.
    pub aging: Option<i64>,
    /// The step before its last change, while a re-rank may be pending.
    pub prev: Option<Option<i64>>,
}

/// The ranking of a queue's ready set.
pub(super) fn ranking(s: &RedisStore, queue: &str) -> Result<Ranking> {
    let (raw, stored) = read_options(s, queue)?;
    Ok(Ranking { raw, aging: stored.o.aging_ms, prev: stored.prev_aging })
}

/// Writes a queue's options (`change` edits them) in one guarded commit.
/// A change of the aging step moves the queue's ready set aside in the
/// same commit (every write ranking a task of the queue guards these
/// options, so none can slip in between) and re-ranks it after.
fn write_options(s: &RedisStore, queue: &str, change: impl Fn(&mut QueueOptions)) -> Result<()> {
    let moved = s.retrying(|| {
        let (raw, mut stored) = read_options(s, queue)?;
        let old_aging = stored.o.aging_ms;
        change(&mut stored.o);
        let moved = old_aging != stored.o.aging_ms;
        if moved {
            if stored.prev_aging.is_some() {
                // Finish the previous re-rank first: one old step at a time.
                return Ok(Some(true));
            }
            stored.prev_aging = Some(old_aging);
        }
        let mut tx = Tx::new(s, s.clock.now_ms());
        let key = s.keys.qo(queue);
        tx.guard(key.clone(), raw);
        tx.c(&["SET", &key, &encode_options(&stored)]);
        tx.c(&["SADD", &s.keys.k("queues"), queue]);
        if moved {
            let (ready, old) = (s.keys.ready(queue), s.keys.ready_old(queue));
            tx.c(&["ZUNIONSTORE", &old, "2", &old, &ready]);
            tx.c(&["DEL", &ready]);
        }
        tx.wakes = true;
        Ok(if tx.commit_all()? { Some(moved) } else { None })
    })?;
    if moved {
        migrate_ready(s, queue)?;
        // A step changed while an earlier re-rank was unfinished is applied now.
        if read_options(s, queue)?.1.prev_aging.is_none() {
            let (_, now) = read_options(s, queue)?;
            let mut want = now.o.clone();
            change(&mut want);
            if want.aging_ms != now.o.aging_ms {
                return write_options(s, queue, change);
            }
        }
    }
    Ok(())
}

/// Re-ranks the tasks left in a queue's `ready_old` under the current
/// aging step, each on its own guard, then forgets the previous step.
pub(super) fn migrate_ready(s: &RedisStore, queue: &str) -> Result<()> {
    let old_key = s.keys.ready_old(queue);
    loop {
        let members: Vec<String> = s.q(redis::cmd("ZRANGE").arg(&old_key).arg(0).arg(499))?;
        if members.is_empty() {
            break;
        }
        let pairs: Vec<(String, i64)> =
            members.iter().filter_map(|m| id_of_member(m).map(|id| (m.clone(), id))).collect();
        if pairs.len() < members.len() {
            let bad: Vec<&String> = members.iter().filter(|m| id_of_member(m).is_none()).collect();
            s.q::<()>(redis::cmd("ZREM").arg(&old_key).arg(bad))?;
        }
        per_item(
            s,
            &pairs,
            |p| p.1,
            |tx, (member, _), l| {
                tx.c(&["ZREM", &old_key, member]);
                if let Some(l) = l.filter(|l| l.rec.task.status == Status::Queued && l.rec.task.queue == queue) {
                    // Re-written as it is: put moves it into the ready set
                    // ranked by the current step (or the scheduled set).
                    tx.put(Some(l), Some(&l.rec))?;
                } else if let Some(l) = l {
                    tx.guard(tx.s.keys.task(l.rec.task.id), Some(l.raw.clone()));
                }
                Ok(Ok(()))
            },
        )?;
    }
    // Nothing ranked under the old step remains: forget it.
    s.retrying(|| {
        let (raw, mut stored) = read_options(s, queue)?;
        if stored.prev_aging.is_none() {
            return Ok(Some(()));
        }
        let left: i64 = s.q(redis::cmd("ZCARD").arg(&old_key))?;
        if left > 0 {
            migrate_ready(s, queue)?;
            return Ok(None);
        }
        stored.prev_aging = None;
        let mut tx = Tx::new(s, s.clock.now_ms());
        let key = s.keys.qo(queue);
        tx.guard(key.clone(), raw);
        tx.c(&["SET", &key, &encode_options(&stored)]);
        Ok(if tx.commit_all()? { Some(()) } else { None })
    })
}

/// [`Store::set_queue_options`](crate::store::Store::set_queue_options):
/// replaces the options, keeping the pause (and the capacity).
pub(super) fn set_queue_options(s: &RedisStore, o: &QueueOptions) -> Result<()> {
    rules::check_queue_options(o)?;
    write_options(s, &o.queue, |cur| *cur = QueueOptions { paused: cur.paused, ..o.clone() })?;
    s.wake.bump();
    Ok(())
}

/// [`Store::set_paused`](crate::store::Store::set_paused).
pub(super) fn set_paused(s: &RedisStore, p: &PauseParams) -> Result<()> {
    if p.queue.is_empty() {
        return Err(Error::InvalidArgument("queue name must not be empty".into()));
    }
    write_options(s, &p.queue, |cur| cur.paused = p.paused)?;
    s.wake.bump();
    Ok(())
}

/// The options of a queue as stored, with the aging step before its last
/// change (claims finish a pending re-rank first).
pub(super) fn stored_options(s: &RedisStore, queue: &str) -> Result<StoredOptions> {
    Ok(read_options(s, queue)?.1)
}

/// [`Store::queue_options`](crate::store::Store::queue_options).
pub(super) fn queue_options(s: &RedisStore, queue: &str) -> Result<QueueOptions> {
    Ok(read_options(s, queue)?.1.o)
}

/// [`Store::all_queue_options`](crate::store::Store::all_queue_options).
pub(super) fn all_queue_options(s: &RedisStore) -> Result<Vec<QueueOptions>> {
    let mut queues: Vec<String> = s.q(redis::cmd("SMEMBERS").arg(s.keys.k("queues")))?;
    queues.sort();
    let mut out = Vec::new();
    for q in queues {
        let o = queue_options(s, &q)?;
        if o != (QueueOptions { queue: q.clone(), ..Default::default() }) {
            out.push(o);
        }
    }
    Ok(out)
}

// ---- capacities and limits ------------------------------------------

/// [`Store::set_capacity`](crate::store::Store::set_capacity).
pub(super) fn set_capacity(s: &RedisStore, p: &CapacityParams) -> Result<()> {
    let cap = rules::capacity_to_store(&p.queue, p.capacity)?;
    match cap {
        Some(c) => s.q::<()>(redis::cmd("SET").arg(s.keys.cap(&p.queue)).arg(c))?,
        None => s.q::<()>(redis::cmd("DEL").arg(s.keys.cap(&p.queue)))?,
    }
    s.wake.bump();
    Ok(())
}

/// [`Store::capacity`](crate::store::Store::capacity).
pub(super) fn capacity(s: &RedisStore, queue: &str) -> Result<Option<u64>> {
    let cap: Option<i64> = s.q(redis::cmd("GET").arg(s.keys.cap(queue)))?;
    Ok(cap.map(rules::capacity_from_store))
}

/// A limit with its bucket as stored: `max|rate|burst|tokens|refilled_at`.
pub(super) fn encode_limit(l: &StoredLimit) -> Vec<u8> {
    format!(
        "{}|{}|{}|{}|{}",
        opt_text(l.limit.max_running),
        opt_text(l.limit.rate_per_s),
        opt_text(l.limit.burst),
        l.tokens,
        l.refilled_at
    )
    .into_bytes()
}

fn decode_limit(name: &str, raw: &[u8]) -> Result<StoredLimit> {
    let bad = || Error::Corrupt(format!("function limit {name:?} is damaged"));
    let text = std::str::from_utf8(raw).map_err(|_| bad())?;
    let f: Vec<&str> = text.split('|').collect();
    if f.len() != 5 {
        return Err(bad());
    }
    Ok(StoredLimit {
        limit: FunctionLimit {
            name: name.to_string(),
            max_running: opt_field(f[0]),
            rate_per_s: opt_field(f[1]),
            burst: opt_field(f[2]),
        },
        tokens: parse(f[3]).ok_or_else(bad)?,
        refilled_at: parse(f[4]).ok_or_else(bad)?,
    })
}

/// The stored bytes of each limit, by name.
pub(super) type LimitBytes = HashMap<String, Vec<u8>>;

/// Every limit with its bucket, by name, and the stored bytes (guards).
pub(super) fn stored_limits(s: &RedisStore) -> Result<(Vec<StoredLimit>, LimitBytes)> {
    let mut names: Vec<String> = s.q(redis::cmd("SMEMBERS").arg(s.keys.k("limits")))?;
    names.sort();
    if names.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let keys: Vec<String> = names.iter().map(|n| s.keys.lim(n)).collect();
    let raws: Vec<Option<Vec<u8>>> = s.q(redis::cmd("MGET").arg(&keys))?;
    let mut out = Vec::new();
    let mut by = HashMap::new();
    for (n, r) in names.into_iter().zip(raws) {
        let Some(r) = r else { continue };
        out.push(decode_limit(&n, &r)?);
        by.insert(n, r);
    }
    Ok((out, by))
}

/// [`Store::set_function_limit`](crate::store::Store::set_function_limit).
pub(super) fn set_function_limit(s: &RedisStore, limit: &FunctionLimit) -> Result<()> {
    let write = rules::limit_write(limit)?;
    s.retrying(|| {
        let now = s.clock.now_ms();
        let key = s.keys.lim(&limit.name);
        let old = s.get_raw(&key)?;
        let mut tx = Tx::new(s, now);
        tx.guard(key.clone(), old.clone());
        match write {
            LimitWrite::Delete => {
                tx.c(&["DEL", &key]);
                tx.c(&["SREM", &s.keys.k("limits"), &limit.name]);
            }
            LimitWrite::Upsert => {
                let burst = limit.effective_burst();
                let (tokens, refilled_at) = match old.as_deref().map(|r| decode_limit(&limit.name, r)).transpose()? {
                    Some(o) => (o.tokens.min(burst), o.refilled_at),
                    None => (burst, now),
                };
                let stored = StoredLimit { limit: limit.clone(), tokens, refilled_at };
                tx.cmd(vec![b"SET".to_vec(), key.into_bytes(), encode_limit(&stored)]);
                tx.c(&["SADD", &s.keys.k("limits"), &limit.name]);
            }
        }
        tx.wakes = true;
        Ok(if tx.commit_all()? { Some(()) } else { None })
    })
}

/// [`Store::function_limits`](crate::store::Store::function_limits).
pub(super) fn function_limits(s: &RedisStore) -> Result<Vec<FunctionLimit>> {
    Ok(stored_limits(s)?.0.into_iter().map(|l| l.limit).collect())
}

// ---- reads ----------------------------------------------------------

/// [`Store::get_by_key`](crate::store::Store::get_by_key).
pub(super) fn get_by_key(s: &RedisStore, p: &GetByKeyParams) -> Result<Vec<Option<Task>>> {
    if p.keys.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = p.keys.iter().map(|k| s.keys.key(&p.queue, k)).collect();
    let ids: Vec<Option<i64>> = s.q(redis::cmd("MGET").arg(&keys))?;
    let found: Vec<i64> = ids.iter().flatten().copied().collect();
    let tasks: HashMap<i64, Task> =
        s.load(&found)?.into_iter().flatten().map(|l| (l.rec.task.id, l.rec.task)).collect();
    Ok(ids.into_iter().map(|id| id.and_then(|id| tasks.get(&id).cloned())).collect())
}

/// [`Store::list`](crate::store::Store::list).
pub(super) fn list(s: &RedisStore, p: &ListParams) -> Result<Vec<Task>> {
    rules::check_list_limit(p.limit)?;
    let mut out = Vec::new();
    let mut from = p.after_id.map(|a| format!("({a}")).unwrap_or_else(|| "-inf".into());
    loop {
        let ids: Vec<i64> =
            s.q(redis::cmd("ZRANGEBYSCORE").arg(s.keys.k("all")).arg(&from).arg("+inf").arg("LIMIT").arg(0).arg(1000))?;
        let Some(last) = ids.last().copied() else { break };
        for l in s.load(&ids)?.into_iter().flatten() {
            let t = l.rec.task;
            let keep = p.queue.as_ref().is_none_or(|q| *q == t.queue)
                && p.status.is_none_or(|st| st == t.status)
                && p.batch.as_ref().is_none_or(|b| t.batch.as_ref() == Some(b))
                && p.name.as_ref().is_none_or(|n| *n == t.name)
                && p.key.as_ref().is_none_or(|k| t.key.as_ref() == Some(k));
            if keep {
                out.push(t);
                if out.len() >= p.limit as usize {
                    return Ok(out);
                }
            }
        }
        if ids.len() < 1000 {
            break;
        }
        from = format!("({last}");
    }
    Ok(out)
}

/// [`Store::counts`](crate::store::Store::counts).
pub(super) fn counts(s: &RedisStore) -> Result<Vec<QueueCount>> {
    let raw: HashMap<String, i64> = s.q(redis::cmd("HGETALL").arg(s.keys.k("counts")))?;
    let mut out = Vec::new();
    for (field, n) in raw {
        if n <= 0 {
            continue;
        }
        let Some((code, queue)) = field.split_once(':') else { continue };
        let status = Status::from_code(parse(code).unwrap_or(-1))?;
        out.push(QueueCount { queue: queue.to_string(), status, count: n as u64 });
    }
    out.sort_by(|a, b| (&a.queue, a.status).cmp(&(&b.queue, b.status)));
    Ok(out)
}

/// [`Store::unfinished`](crate::store::Store::unfinished).
pub(super) fn unfinished(s: &RedisStore, queue: &str) -> Result<u64> {
    let n: Option<i64> = s.q(redis::cmd("GET").arg(s.keys.unf(queue)))?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// [`Store::next_run_at`](crate::store::Store::next_run_at).
pub(super) fn next_run_at(s: &RedisStore, queue: &str) -> Result<Option<i64>> {
    if queue_options(s, queue)?.paused {
        return Ok(None);
    }
    let now = s.clock.now_ms();
    let members: Vec<String> =
        s.q(redis::cmd("ZRANGEBYLEX").arg(s.keys.ready(queue)).arg("-").arg("+").arg("LIMIT").arg(0).arg(1000))?;
    let mut ids: Vec<i64> = members.iter().filter_map(|m| id_of_member(m)).collect();
    let old: Vec<String> =
        s.q(redis::cmd("ZRANGEBYLEX").arg(s.keys.ready_old(queue)).arg("-").arg("+").arg("LIMIT").arg(0).arg(1000))?;
    ids.extend(old.iter().filter_map(|m| id_of_member(m)));
    let sched: Vec<i64> = s.q(redis::cmd("ZRANGE").arg(s.keys.sched(queue)).arg(0).arg(999))?;
    ids.extend(sched);
    let best = s
        .load(&ids)?
        .into_iter()
        .flatten()
        .map(|l| l.rec.task)
        .filter(|t| t.status == Status::Queued && t.expires_at.is_none_or(|e| e > t.run_at.max(now)))
        .map(|t| t.run_at)
        .min();
    Ok(best)
}

// ---- purge ----------------------------------------------------------

/// [`Store::purge`](crate::store::Store::purge).
pub(super) fn purge(s: &RedisStore, p: &PurgeParams) -> Result<u64> {
    let now = s.clock.now_ms();
    let mut ids: Vec<i64> = s.q(redis::cmd("ZRANGEBYSCORE").arg(s.keys.k("purge")).arg("-inf").arg(now))?;
    if let Some(before) = p.finished_before {
        let more: Vec<i64> =
            s.q(redis::cmd("ZRANGEBYSCORE").arg(s.keys.k("fin")).arg("-inf").arg(format!("({before}")))?;
        ids.extend(more);
    }
    ids.sort_unstable();
    ids.dedup();
    let out = per_item(
        s,
        &ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) = l.filter(|l| {
                let t = &l.rec.task;
                t.status.is_finished()
                    && (l.rec.purge_at.is_some_and(|at| at <= tx.now)
                        || p.finished_before.is_some_and(|b| t.finished_at.is_some_and(|f| f < b)))
            }) else {
                return Ok(Ok(false));
            };
            // A parent is kept while a dependent is unfinished: the dependent
            // reads its result when it runs.
            let kids: Vec<i64> = tx.s.q(redis::cmd("SMEMBERS").arg(tx.s.keys.kids(*id)))?;
            for k in tx.s.load(&kids)?.into_iter().flatten() {
                if !k.rec.task.status.is_finished() {
                    return Ok(Ok(false));
                }
                tx.guard(tx.s.keys.task(k.rec.task.id), Some(k.raw));
            }
            tx.put(Some(l), None)?;
            tx.c(&["DEL", &tx.s.keys.kids(*id), &tx.s.keys.deps(*id)]);
            Ok(Ok(true))
        },
    )?;
    let n = out.into_iter().filter(|r| matches!(r, Ok(true))).count() as u64;
    prune_events(s, now)?;
    Ok(n)
}

/// Drops events older than the feed's retention (the newest always stays,
/// so positions are never handed out twice).
fn prune_events(s: &RedisStore, now: i64) -> Result<()> {
    let Some(keep) = s.cfg.store.events_retention_ms else { return Ok(()) };
    let cutoff = now.saturating_sub(keep);
    let stream = s.keys.k("ev");
    loop {
        let page: Vec<(String, HashMap<String, Vec<u8>>)> = xrange(s, &stream, "-", 500)?;
        let n = page.len();
        let mut old = Vec::new();
        for (i, (id, fields)) in page.iter().enumerate() {
            let seq = seq_of(id);
            let row = decode_event(seq, fields.get("e").map(Vec::as_slice).unwrap_or(&[]))?;
            if row.at >= cutoff || (i + 1 == n && n < 500) {
                break;
            }
            old.push(id.clone());
        }
        if old.is_empty() {
            return Ok(());
        }
        let done = old.len() < n;
        s.q::<()>(redis::cmd("XDEL").arg(&stream).arg(&old))?;
        if done {
            return Ok(());
        }
    }
}

// ---- listen data ----------------------------------------------------

fn decode_change(version: i64, raw: &[u8]) -> Result<ListenChange> {
    let bad = || Error::Corrupt(format!("listen change {version} is damaged"));
    let rest = raw.strip_prefix(b"v1::").ok_or_else(bad)?;
    let sep = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let at: i64 = std::str::from_utf8(&rest[..sep]).ok().and_then(parse).ok_or_else(bad)?;
    let rest = &rest[sep + 1..];
    let sep = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let key = String::from_utf8(rest[..sep].to_vec()).map_err(|_| bad())?;
    Ok(ListenChange { version, key, value: rest[sep + 1..].to_vec(), at })
}

fn changes(s: &RedisStore, versions: &[i64]) -> Result<Vec<ListenChange>> {
    if versions.is_empty() {
        return Ok(Vec::new());
    }
    let raws: Vec<Option<Vec<u8>>> = s.q(redis::cmd("HMGET").arg(s.keys.k("le")).arg(versions))?;
    versions.iter().zip(raws).filter_map(|(v, r)| r.map(|r| decode_change(*v, &r))).collect()
}

/// [`Store::listen_set`](crate::store::Store::listen_set).
pub(super) fn listen_set(s: &RedisStore, p: &ListenSetParams) -> Result<i64> {
    rules::check_listen_set(&p.key, &p.value, s.cfg.store.max_payload)?;
    if p.key.contains('\0') {
        return Err(Error::InvalidArgument("a listen key must not contain NUL".into()));
    }
    let now = s.clock.now_ms();
    let keys = [s.keys.k("lv"), s.keys.k("lk"), s.keys.k("ll"), s.keys.k("le"), s.keys.k("chg")];
    let before = listen_head(s)?;
    let v: i64 = s.pool.run(|c| {
        let mut inv = s.listen_set.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(&p.key).arg(p.value.as_slice()).arg(now).arg(s.keys.k("wake"));
        inv.invoke(c)
    })?;
    if v > before {
        s.wake.bump();
    }
    Ok(v)
}

/// [`Store::listen_changes`](crate::store::Store::listen_changes).
pub(super) fn listen_changes(s: &RedisStore, p: &ListenChangesParams) -> Result<Vec<ListenChange>> {
    let limit = p.limit.max(1);
    let versions: Vec<i64> = s.q(redis::cmd("ZRANGEBYSCORE")
        .arg(s.keys.k("ll"))
        .arg(format!("({}", p.since))
        .arg("+inf")
        .arg("LIMIT")
        .arg(0)
        .arg(limit))?;
    changes(s, &versions)
}

/// [`Store::listen_get`](crate::store::Store::listen_get).
pub(super) fn listen_get(s: &RedisStore, key: &str) -> Result<Option<ListenChange>> {
    let v: Option<i64> = s.q(redis::cmd("HGET").arg(s.keys.k("lk")).arg(key))?;
    Ok(match v {
        Some(v) => changes(s, &[v])?.pop(),
        None => None,
    })
}

/// [`Store::listen_head`](crate::store::Store::listen_head).
pub(super) fn listen_head(s: &RedisStore) -> Result<i64> {
    let v: Option<i64> = s.q(redis::cmd("GET").arg(s.keys.k("lv")))?;
    Ok(v.unwrap_or(0))
}

/// [`Store::listen_keys`](crate::store::Store::listen_keys).
pub(super) fn listen_keys(s: &RedisStore) -> Result<Vec<ListenChange>> {
    let all: HashMap<String, i64> = s.q(redis::cmd("HGETALL").arg(s.keys.k("lk")))?;
    let mut versions: Vec<i64> = all.values().copied().collect();
    versions.sort_unstable();
    let mut out = changes(s, &versions)?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

// ---- workers --------------------------------------------------------

/// [`Store::register_worker`](crate::store::Store::register_worker).
pub(super) fn register_worker(s: &RedisStore, w: &WorkerInfo) -> Result<()> {
    let queues = rules::queues_to_json(&w.queues)?;
    let now = s.clock.now_ms();
    let old = workers(s)?.into_iter().find(|o| o.id == w.id);
    let started = old.map(|o| o.started_at).unwrap_or(now);
    let v =
        serde_json::json!({"host": w.host, "pid": w.pid, "started_at": started, "heartbeat_at": now, "queues": queues});
    s.q::<()>(redis::cmd("HSET").arg(s.keys.k("workers")).arg(&w.id).arg(v.to_string()))
}

/// [`Store::workers`](crate::store::Store::workers).
pub(super) fn workers(s: &RedisStore) -> Result<Vec<WorkerInfo>> {
    let all: HashMap<String, String> = s.q(redis::cmd("HGETALL").arg(s.keys.k("workers")))?;
    let mut out = Vec::new();
    for (id, text) in all {
        let bad = || Error::Corrupt(format!("worker record {id:?} is damaged"));
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad())?;
        out.push(WorkerInfo {
            id: id.clone(),
            host: v["host"].as_str().ok_or_else(bad)?.to_string(),
            pid: v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).ok_or_else(bad)?,
            started_at: v["started_at"].as_i64().ok_or_else(bad)?,
            heartbeat_at: v["heartbeat_at"].as_i64().ok_or_else(bad)?,
            queues: rules::queues_from_json(v["queues"].as_str().ok_or_else(bad)?)?,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// [`Store::remove_worker`](crate::store::Store::remove_worker).
pub(super) fn remove_worker(s: &RedisStore, id: &str) -> Result<bool> {
    let n: i64 = s.q(redis::cmd("HDEL").arg(s.keys.k("workers")).arg(id))?;
    Ok(n == 1)
}

/// [`Store::check`](crate::store::Store::check): every task record decodes.
pub(super) fn check(s: &RedisStore) -> Result<Vec<crate::store::ShardCheck>> {
    let mut messages = Vec::new();
    let mut from = "-inf".to_string();
    loop {
        let ids: Vec<i64> =
            s.q(redis::cmd("ZRANGEBYSCORE").arg(s.keys.k("all")).arg(&from).arg("+inf").arg("LIMIT").arg(0).arg(1000))?;
        let Some(last) = ids.last().copied() else { break };
        let keys: Vec<String> = ids.iter().map(|id| s.keys.task(*id)).collect();
        let raws: Vec<Option<Vec<u8>>> = s.q(redis::cmd("MGET").arg(&keys))?;
        for (id, raw) in ids.iter().zip(raws) {
            match raw.map(|r| super::codec::decode(&r)) {
                None => messages.push(format!("task {id} is indexed but has no record")),
                Some(Err(e)) => messages.push(format!("task {id}: {e}")),
                Some(Ok(r)) if r.task.id != *id => {
                    messages.push(format!("task {id} holds the record of {}", r.task.id))
                }
                Some(Ok(_)) => {}
            }
        }
        if ids.len() < 1000 {
            break;
        }
        from = format!("({last}");
    }
    let path = crate::store::Store::describe(s);
    Ok(vec![crate::store::ShardCheck { path, ok: messages.is_empty(), messages }])
}

// ---- the event feed -------------------------------------------------

const REDIS_CURSOR: &str = "r:";

fn cursor(seq: i64) -> String {
    format!("{REDIS_CURSOR}{seq}")
}

fn parse_cursor(c: Option<&str>) -> Result<i64> {
    let Some(c) = c else { return Ok(0) };
    let body = c
        .strip_prefix(REDIS_CURSOR)
        .ok_or_else(|| Error::InvalidArgument(format!("event cursor {c:?} is not a cursor of a Redis store")))?;
    body.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| Error::InvalidArgument(format!("event cursor {c:?} is damaged")))
}

fn seq_of(stream_id: &str) -> i64 {
    stream_id.split_once('-').and_then(|(_, s)| s.parse().ok()).unwrap_or(0)
}

type StreamEntries = Vec<(String, HashMap<String, Vec<u8>>)>;

fn xrange(s: &RedisStore, stream: &str, start: &str, count: usize) -> Result<StreamEntries> {
    s.q(redis::cmd("XRANGE").arg(stream).arg(start).arg("+").arg("COUNT").arg(count))
}

/// [`Store::events`](crate::store::Store::events).
pub(super) fn events(s: &RedisStore, p: &EventsParams) -> Result<EventsPage> {
    ev::check_events_limit(p.limit)?;
    let mut at = parse_cursor(p.after.as_deref())?;
    let stream = s.keys.k("ev");
    let mut events = Vec::new();
    loop {
        let want = (p.limit as usize - events.len()).max(1);
        let page = xrange(s, &stream, &format!("(0-{at}"), want.max(100))?;
        let n = page.len();
        for (id, fields) in page {
            let seq = seq_of(&id);
            let row: EventRow = decode_event(seq, fields.get("e").map(Vec::as_slice).unwrap_or(&[]))?;
            at = seq;
            if p.queue.as_ref().is_none_or(|q| *q == row.queue) {
                events.push(row.into_event(0, cursor(seq))?);
                if events.len() >= p.limit as usize {
                    return Ok(EventsPage { events, cursor: cursor(at) });
                }
            }
        }
        if n < want.max(100) {
            break;
        }
    }
    Ok(EventsPage { events, cursor: cursor(at) })
}

/// [`Store::events_head`](crate::store::Store::events_head).
pub(super) fn events_head(s: &RedisStore) -> Result<String> {
    let last: StreamEntries = s.q(redis::cmd("XREVRANGE").arg(s.keys.k("ev")).arg("+").arg("-").arg("COUNT").arg(1))?;
    Ok(cursor(last.first().map(|(id, _)| seq_of(id)).unwrap_or(0)))
}

/// Stores a consumer cursor.
pub(super) fn cursor_set(s: &RedisStore, name: &str, consumer: &str, value: &str) -> Result<()> {
    ev::check_consumer(consumer)?;
    if name.starts_with("event:") {
        parse_cursor(Some(value))?;
    }
    s.q::<()>(redis::cmd("HSET").arg(s.keys.k("cur")).arg(name).arg(value))
}

/// Reads a consumer cursor.
pub(super) fn cursor_get(s: &RedisStore, name: &str, consumer: &str) -> Result<Option<String>> {
    ev::check_consumer(consumer)?;
    s.q(redis::cmd("HGET").arg(s.keys.k("cur")).arg(name))
}

/// [`Store::ack_callbacks`](crate::store::Store::ack_callbacks).
pub(super) fn ack_callbacks(s: &RedisStore, ids: &[i64]) -> Result<Vec<Result<()>>> {
    per_item(
        s,
        ids,
        |id| *id,
        |tx, id, l| {
            let Some(l) = l else { return Ok(Err(rules::task_not_found(*id))) };
            let t = &l.rec.task;
            if !t.status.is_finished() {
                return Ok(Err(Error::InvalidTransition {
                    id: *id,
                    status: t.status,
                    action: "acknowledge the callback of",
                }));
            }
            tx.guard(tx.s.keys.task(*id), Some(l.raw.clone()));
            let row = EventRow {
                seq: 0,
                at: tx.now,
                task_id: *id,
                queue: t.queue.clone(),
                name: t.name.clone(),
                code: KIND_DELIVERED,
                from: Some(t.status.code()),
                to: Some(t.status.code()),
                worker: None,
                error_type: None,
            };
            tx.event(&row);
            let _: Option<&Record> = None;
            Ok(Ok(()))
        },
    )
}
