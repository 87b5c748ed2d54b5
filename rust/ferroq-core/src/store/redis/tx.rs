//! The keys of a store, and the guarded commit every write goes through:
//! a [`Tx`] collects guards (values the decision was made from) and
//! commands, and [`Tx::put`] turns one task's change (old record → new
//! record) into every index and counter update it implies, so no verb
//! maintains an index by hand.
//!
//! The keys (`P` is the store's prefix):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `P:t:<id>` | string | the task record (`codec.rs`) |
//! | `P:seq` | string | the last task id handed out |
//! | `P:ready:<queue>` | sorted set | queued tasks that were due when written or moved, all score 0, ordered by member: priority (descending), run_at, id, each as 16 hex digits |
//! | `P:sched:<queue>` | sorted set | queued tasks not yet due, by run_at (moved to ready by claims) |
//! | `P:lease` | sorted set | running tasks by lease end |
//! | `P:deadline` | sorted set | queued tasks with a deadline, by deadline |
//! | `P:all` | sorted set | every task by id (lists) |
//! | `P:fin`, `P:purge` | sorted sets | finished tasks by finish time, and by purge time |
//! | `P:counts` | hash | tasks per `status:queue` |
//! | `P:rq:<queue>` | set | running tasks of a queue (serial queues) |
//! | `P:unf:<queue>`, `P:run:<queue>`, `P:rn:<name>` | strings | unfinished tasks of a queue, running tasks of a queue, running tasks of a function (guarded by capacity, serial queues and function limits) |
//! | `P:k:<queue>:<key>` | string | the id owning an idempotency key |
//! | `P:waiting` | set | waiting tasks (flows) |
//! | `P:deps:<id>`, `P:kids:<id>` | string, set | a task's parents (comma-separated, in order) and its dependents |
//! | `P:qo:<queue>`, `P:cap:<queue>`, `P:queues` | strings, set | queue options, capacities, queues that have either |
//! | `P:lim:<name>`, `P:limits` | string, set | function limits with their token buckets |
//! | `P:workers` | hash | worker records (JSON) |
//! | `P:lv`, `P:lk`, `P:ll`, `P:le` | string, hash, sorted set, hash | listen data: last version, key → version, versions, version → change |
//! | `P:evseq`, `P:ev`, `P:cur` | string, stream, hash | the event feed and consumer cursors |
//! | `P:chg`, channel `P:wake` | string, pub/sub | the change counter and wake-ups |

use super::codec::{self, Record};
use super::scripts;
use super::RedisStore;
use crate::error::Result;
use crate::store::events::{EventRow, KIND_STATUS, LEASE_LOST_TYPE};
use crate::task::{Status, Task};
use std::collections::HashMap;

/// Builds the store's key names.
pub(super) struct Keys {
    p: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys { p: prefix.to_string() }
    }
    pub fn k(&self, rest: &str) -> String {
        format!("{}:{rest}", self.p)
    }
    pub fn task(&self, id: i64) -> String {
        format!("{}:t:{id}", self.p)
    }
    pub fn ready(&self, queue: &str) -> String {
        format!("{}:ready:{queue}", self.p)
    }
    /// Ready tasks ranked under a queue's previous aging step, until
    /// `admin::migrate_ready` re-ranks them into the ready set.
    pub fn ready_old(&self, queue: &str) -> String {
        format!("{}:ready_old:{queue}", self.p)
    }
    pub fn sched(&self, queue: &str) -> String {
        format!("{}:sched:{queue}", self.p)
    }
    pub fn unf(&self, queue: &str) -> String {
        format!("{}:unf:{queue}", self.p)
    }
    pub fn run(&self, queue: &str) -> String {
        format!("{}:run:{queue}", self.p)
    }
    pub fn running_set(&self, queue: &str) -> String {
        format!("{}:rq:{queue}", self.p)
    }
    pub fn running_name(&self, name: &str) -> String {
        format!("{}:rn:{name}", self.p)
    }
    pub fn key(&self, queue: &str, key: &str) -> String {
        // The queue's length first: a queue name with a colon cannot make
        // two (queue, key) pairs share a name.
        format!("{}:k:{}:{queue}:{key}", self.p, queue.len())
    }
    pub fn deps(&self, id: i64) -> String {
        format!("{}:deps:{id}", self.p)
    }
    pub fn kids(&self, id: i64) -> String {
        format!("{}:kids:{id}", self.p)
    }
    pub fn qo(&self, queue: &str) -> String {
        format!("{}:qo:{queue}", self.p)
    }
    pub fn cap(&self, queue: &str) -> String {
        format!("{}:cap:{queue}", self.p)
    }
    pub fn lim(&self, name: &str) -> String {
        format!("{}:lim:{name}", self.p)
    }
}

/// A task's member in its queue's ready set under aging step `aging`:
/// sorts like the claim order (claim rank descending, then run_at, then
/// id; the rank is the priority without aging, see `rules::claim_rank`),
/// each as 16 hex digits of the value with its sign bit flipped.
pub(super) fn ready_member(t: &Task, aging: Option<i64>) -> String {
    let flip = |v: i64| (v as u64) ^ (1u64 << 63);
    let rank = crate::store::claim_rank(t.priority, t.run_at, aging);
    format!("{:016x}{:016x}{:016x}", !flip(rank), flip(t.run_at), flip(t.id))
}

/// The id at the end of a ready-set member.
pub(super) fn id_of_member(m: &str) -> Option<i64> {
    let tail = m.get(32..48)?;
    u64::from_str_with_radix(tail).map(|v| (v ^ (1u64 << 63)) as i64)
}

trait FromHex: Sized {
    fn from_str_with_radix(s: &str) -> Option<Self>;
}
impl FromHex for u64 {
    fn from_str_with_radix(s: &str) -> Option<Self> {
        u64::from_str_radix(s, 16).ok()
    }
}

/// A record as read: decoded, with its stored bytes (what a guard compares).
#[derive(Debug, Clone)]
pub(super) struct Loaded {
    pub rec: Record,
    pub raw: Vec<u8>,
}

/// One group of guards and commands (see [`scripts::COMMIT`]).
#[derive(Default)]
pub(super) struct Group {
    guards: Vec<(String, Option<Vec<u8>>)>,
    cmds: Vec<Vec<Vec<u8>>>,
    /// The record bytes the group's last `put` writes (None: deletes).
    wrote: Option<Option<Vec<u8>>>,
}

/// A commit being built: groups of guards and commands.
pub(super) struct Tx<'a> {
    pub s: &'a RedisStore,
    pub now: i64,
    groups: Vec<Group>,
    /// Queue options read for ready-set ranks, by queue: the stored bytes
    /// (guarded by every write that ranks a task of the queue) and the
    /// aging step now and before its last change.
    ranks: HashMap<String, super::admin::Ranking>,
    /// Whether the commit wakes waiters (it made work ready or finished some).
    pub wakes: bool,
}

fn arg<T: ToString>(v: T) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// The error type an event records for an error text: `LeaseLost` for
/// recovery's text, the `"type"` of a JSON error, else `Error`.
pub(super) fn error_type(e: Option<&str>) -> Option<String> {
    let e = e?;
    if e.starts_with("lease lost") {
        return Some(LEASE_LOST_TYPE.to_string());
    }
    if e.trim_start().starts_with('{') {
        return match serde_json::from_str::<serde_json::Value>(e) {
            Ok(v) => v.get("type").and_then(|t| t.as_str()).map(str::to_string),
            Err(_) => Some("Error".into()),
        };
    }
    Some("Error".into())
}

impl<'a> Tx<'a> {
    pub fn new(s: &'a RedisStore, now: i64) -> Self {
        Tx { s, now, groups: vec![Group::default()], wakes: false, ranks: HashMap::new() }
    }

    /// Starts a new group (for `each` commits).
    pub fn group(&mut self) {
        self.groups.push(Group::default());
    }

    /// Starts the group of the next item of an `each` commit (reusing the
    /// current one while it is empty); returns its index.
    pub fn item(&mut self) -> usize {
        if !self.cur().guards.is_empty() || !self.cur().cmds.is_empty() {
            self.group();
        }
        self.groups.len() - 1
    }

    fn cur(&mut self) -> &mut Group {
        // A Tx always has at least one group.
        let last = self.groups.len() - 1;
        &mut self.groups[last]
    }

    /// What group `g`'s last `put` writes: Some(bytes), Some(None) for a
    /// delete, None when it wrote no record.
    pub fn wrote(&self, g: usize) -> Option<Option<Vec<u8>>> {
        self.groups.get(g).and_then(|g| g.wrote.clone())
    }

    /// The commit writes only if `key` holds `value` now (None: absent).
    pub fn guard(&mut self, key: String, value: Option<Vec<u8>>) {
        self.cur().guards.push((key, value));
    }

    /// Adds a command.
    pub fn cmd(&mut self, words: Vec<Vec<u8>>) {
        self.cur().cmds.push(words);
    }

    /// Adds a command of string words.
    pub fn c(&mut self, words: &[&str]) {
        self.cmd(words.iter().map(|w| w.as_bytes().to_vec()).collect());
    }

    fn counter(&mut self, key: String, by: i64) {
        self.cmd(vec![b"INCRBY".to_vec(), key.into_bytes(), arg(by)]);
    }

    fn count(&mut self, queue: &str, status: Status, by: i64) {
        let k = self.s.keys.k("counts");
        self.cmd(vec![b"HINCRBY".to_vec(), k.into_bytes(), format!("{}:{queue}", status.code()).into_bytes(), arg(by)]);
    }

    /// Appends an event row.
    pub fn event(&mut self, row: &EventRow) {
        if !self.s.cfg.store.events {
            return;
        }
        let words = vec![
            b"EV".to_vec(),
            self.s.keys.k("evseq").into_bytes(),
            self.s.keys.k("ev").into_bytes(),
            codec::encode_event(row),
        ];
        self.cmd(words);
    }

    /// Writes one task's change: `old` as read (None: a new task), `new`
    /// (None: deleted). Guards on the old bytes; updates every index,
    /// counter and the event feed.
    pub fn put(&mut self, old: Option<&Loaded>, new: Option<&Record>) -> Result<()> {
        // Ready-set ranks depend on the queue's aging step: guard the
        // options they were computed with (a change of the step moves the
        // ready set aside atomically, see `admin::set_queue_options`).
        let mut aging: HashMap<String, (Option<i64>, Option<Option<i64>>)> = HashMap::new();
        for t in [old.map(|o| &o.rec.task), new.map(|n| &n.task)].into_iter().flatten() {
            if t.status != Status::Queued || aging.contains_key(&t.queue) {
                continue;
            }
            if !self.ranks.contains_key(&t.queue) {
                let r = super::admin::ranking(self.s, &t.queue)?;
                self.ranks.insert(t.queue.clone(), r);
            }
            if let Some(r) = self.ranks.get(&t.queue).cloned() {
                self.guard(self.s.keys.qo(&t.queue), r.raw);
                aging.insert(t.queue.clone(), (r.aging, r.prev));
            }
        }
        let k = &self.s.keys;
        let id = old.map(|o| o.rec.task.id).or(new.map(|n| n.task.id)).unwrap_or(0);
        let tkey = k.task(id);
        self.guard(tkey.clone(), old.map(|o| o.raw.clone()));
        let ot = old.map(|o| &o.rec.task);
        let nt = new.map(|n| &n.task);
        match new {
            Some(n) => {
                let bytes = codec::encode(n);
                self.cur().wrote = Some(Some(bytes.clone()));
                self.cmd(vec![b"SET".to_vec(), tkey.into_bytes(), bytes]);
            }
            None => {
                self.cur().wrote = Some(None);
                self.c(&["DEL", &tkey]);
            }
        }
        let ids = id.to_string();
        // Queued indexes.
        if let Some(o) = ot.filter(|o| o.status == Status::Queued) {
            let (now_aging, prev) = aging.get(&o.queue).cloned().unwrap_or((None, None));
            self.c(&["ZREM", &k.ready(&o.queue), &ready_member(o, now_aging)]);
            if let Some(prev) = prev {
                self.c(&["ZREM", &k.ready_old(&o.queue), &ready_member(o, prev)]);
            }
            self.c(&["ZREM", &k.sched(&o.queue), &ids]);
            if o.expires_at.is_some() {
                self.c(&["ZREM", &k.k("deadline"), &ids]);
            }
        }
        if let Some(n) = nt.filter(|n| n.status == Status::Queued) {
            if n.run_at <= self.now {
                let now_aging = aging.get(&n.queue).and_then(|a| a.0);
                self.c(&["ZADD", &k.ready(&n.queue), "0", &ready_member(n, now_aging)]);
            } else {
                self.c(&["ZADD", &k.sched(&n.queue), &n.run_at.to_string(), &ids]);
            }
            if let Some(d) = n.expires_at {
                self.c(&["ZADD", &k.k("deadline"), &d.to_string(), &ids]);
            }
            self.wakes = true;
        }
        // Leases.
        if ot.is_some_and(|o| o.status == Status::Running) {
            self.c(&["ZREM", &k.k("lease"), &ids]);
        }
        if let Some(n) = nt.filter(|n| n.status == Status::Running) {
            self.c(&["ZADD", &k.k("lease"), &n.lease_until.unwrap_or(0).to_string(), &ids]);
        }
        // Waiting.
        let waits = |t: Option<&Task>| t.is_some_and(|t| t.status == Status::Waiting);
        if waits(ot) && !waits(nt) {
            self.c(&["SREM", &k.k("waiting"), &ids]);
        }
        if waits(nt) && !waits(ot) {
            self.c(&["SADD", &k.k("waiting"), &ids]);
        }
        // Finished indexes.
        if ot.is_some_and(|o| o.status.is_finished()) {
            self.c(&["ZREM", &k.k("fin"), &ids]);
            self.c(&["ZREM", &k.k("purge"), &ids]);
        }
        if let Some(n) = new.filter(|n| n.task.status.is_finished()) {
            self.c(&["ZADD", &k.k("fin"), &n.task.finished_at.unwrap_or(self.now).to_string(), &ids]);
            if let Some(p) = n.purge_at {
                self.c(&["ZADD", &k.k("purge"), &p.to_string(), &ids]);
            }
            self.wakes = true;
        }
        // Existence, keys, counters.
        // A key belongs to the task's home queue (a dead letter's origin).
        match (old, new) {
            (None, Some(n)) => {
                self.c(&["ZADD", &k.k("all"), &ids, &ids]);
                if let Some(key) = &n.task.key {
                    self.c(&["SET", &k.key(n.origin.as_deref().unwrap_or(&n.task.queue), key), &ids]);
                }
            }
            (Some(o), None) => {
                self.c(&["ZREM", &k.k("all"), &ids]);
                if let Some(key) = &o.rec.task.key {
                    self.c(&["DEL", &k.key(o.rec.origin.as_deref().unwrap_or(&o.rec.task.queue), key)]);
                }
            }
            _ => {}
        }
        let unf = |t: Option<&Task>| t.is_some_and(|t| !t.status.is_finished());
        let running = |t: Option<&Task>| t.is_some_and(|t| t.status == Status::Running);
        let (qo, qn) = (ot.map(|t| t.queue.clone()), nt.map(|t| t.queue.clone()));
        if ot.map(|t| (t.status, &t.queue)) != nt.map(|t| (t.status, &t.queue)) {
            if let Some(o) = ot {
                self.count(&o.queue, o.status, -1);
            }
            if let Some(n) = nt {
                self.count(&n.queue, n.status, 1);
            }
        }
        if unf(ot) != unf(nt) || (unf(ot) && qo != qn) {
            if let Some(o) = ot.filter(|o| !o.status.is_finished()) {
                self.counter(k.unf(&o.queue), -1);
            }
            if let Some(n) = nt.filter(|n| !n.status.is_finished()) {
                self.counter(k.unf(&n.queue), 1);
            }
        }
        if running(ot) != running(nt) {
            if let Some(o) = ot.filter(|o| o.status == Status::Running) {
                self.c(&["SREM", &k.running_set(&o.queue), &ids]);
                self.counter(k.run(&o.queue), -1);
                self.counter(k.running_name(&o.name), -1);
            }
            if let Some(n) = nt.filter(|n| n.status == Status::Running) {
                self.c(&["SADD", &k.running_set(&n.queue), &ids]);
                self.counter(k.run(&n.queue), 1);
                self.counter(k.running_name(&n.name), 1);
            }
        }
        self.record_events(ot, nt);
        Ok(())
    }

    fn record_events(&mut self, ot: Option<&Task>, nt: Option<&Task>) {
        let (os, ns) = (ot.map(|t| t.status), nt.map(|t| t.status));
        let Some(any) = nt.or(ot) else { return };
        if os != ns {
            let (at, error_type) = match (ot, nt) {
                (None, Some(n)) => (n.created_at, None),
                (_, Some(n)) if n.status == Status::Running => (n.started_at.unwrap_or(self.now), None),
                (_, Some(n)) if n.status.is_finished() => {
                    let e = if n.status == Status::Failed { error_type(n.error.as_deref()) } else { None };
                    (n.finished_at.unwrap_or(self.now), e)
                }
                (Some(o), Some(n)) if o.status == Status::Running && n.status == Status::Queued => {
                    let e = if n.attempts >= o.attempts { error_type(n.error.as_deref()) } else { None };
                    (self.now, e)
                }
                _ => (self.now, None),
            };
            let code = if nt.is_none() { crate::store::events::KIND_PURGED } else { KIND_STATUS };
            let worker = nt.and_then(|n| n.worker.clone()).or_else(|| ot.and_then(|o| o.worker.clone()));
            let worker = if nt.is_none() { None } else { worker };
            self.event(&EventRow {
                seq: 0,
                at,
                task_id: any.id,
                queue: any.queue.clone(),
                name: any.name.clone(),
                code,
                from: os.map(Status::code),
                to: ns.map(Status::code),
                worker,
                error_type,
            });
        }
        if let (Some(o), Some(n)) = (ot, nt) {
            if n.cancel_requested && !o.cancel_requested && o.status == n.status {
                self.event(&EventRow {
                    seq: 0,
                    at: self.now,
                    task_id: n.id,
                    queue: n.queue.clone(),
                    name: n.name.clone(),
                    code: crate::store::events::KIND_CANCEL_REQUESTED,
                    from: Some(o.status.code()),
                    to: Some(n.status.code()),
                    worker: n.worker.clone(),
                    error_type: None,
                });
            }
        }
    }

    fn args(&self, mode: &str) -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = vec![mode.as_bytes().to_vec(), arg(self.groups.len())];
        for g in &self.groups {
            a.push(arg(g.guards.len()));
            for (k, v) in &g.guards {
                a.push(k.as_bytes().to_vec());
                match v {
                    Some(v) => {
                        a.push(b"1".to_vec());
                        a.push(v.clone());
                    }
                    None => {
                        a.push(b"0".to_vec());
                        a.push(Vec::new());
                    }
                }
            }
            a.push(arg(g.cmds.len()));
            for c in &g.cmds {
                a.push(arg(c.len()));
                a.extend(c.iter().cloned());
            }
        }
        a
    }

    /// Adds the change counter and wake-up to the last group.
    fn finish(&mut self) {
        if self.wakes {
            let (chg, wake) = (self.s.keys.k("chg"), self.s.keys.k("wake"));
            self.group();
            self.c(&["INCR", &chg]);
            self.c(&["PUBLISH", &wake, "1"]);
        }
    }

    /// Commits all or nothing; false when a guard failed (nothing written).
    pub fn commit_all(mut self) -> Result<bool> {
        self.finish();
        if self.groups.iter().all(|g| g.cmds.is_empty()) {
            return Ok(true);
        }
        let args = self.args("all");
        let wakes = self.wakes;
        let out: i64 = self.s.eval(&self.s.commit, &args)?;
        if out == 1 && wakes {
            self.s.wake.bump();
        }
        Ok(out == 1)
    }

    /// Commits group by group; which groups were written (the wake-up
    /// group, if any, is left out).
    pub fn commit_each(mut self) -> Result<Vec<bool>> {
        let n = self.groups.len();
        self.finish();
        let args = self.args("each");
        let wakes = self.wakes;
        let out: String = self.s.eval(&self.s.commit, &args)?;
        let flags: Vec<bool> = out.bytes().take(n).map(|b| b == b'1').collect();
        if wakes && flags.iter().any(|f| *f) {
            self.s.wake.bump();
        }
        Ok(flags)
    }
}

/// Unused: keeps the script module referenced from here for readers.
#[allow(dead_code)]
const _COMMIT: &str = scripts::COMMIT;
