//! The event feed: every status change recorded once, in order per task,
//! and followed exactly once from a persisted cursor — across a restart of
//! the follower (a new store handle) and across shards; pruning by
//! retention; the feed turned off. Also the listen-data additions: equal
//! values are not changes, consumer versions, every key's latest value.

use crate::harness::{task, Backend, Env};
use ferroq_core::store::{
    EventKind, EventsPage, EventsParams, ListenChangesParams, ListenSetParams, PurgeParams, RecoverParams, Retry,
};
use ferroq_core::{Error, Status, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

crate::conformance!(
    every_transition_is_recorded_once_with_its_details,
    a_follower_sees_every_event_once_across_restarts,
    a_queue_filter_moves_the_cursor_past_other_queues,
    events_are_pruned_by_purge_and_positions_never_go_back,
    events_off_records_nothing,
    event_reads_refuse_bad_cursors_and_limits,
    callbacks_are_acknowledged_only_for_finished_tasks,
    an_equal_listen_value_is_not_a_change,
    listen_consumers_keep_their_version_and_keys_list_latest_values,
);

/// A follower: reads pages of `page` events after its stored cursor,
/// stores the cursor after each page, and keeps what it saw.
struct Follower {
    name: &'static str,
    page: u32,
    seen: Vec<ferroq_core::store::Event>,
}

impl Follower {
    fn new(name: &'static str, page: u32) -> Self {
        Follower { name, page, seen: Vec::new() }
    }

    /// Reads until nothing is new; returns how many events it read.
    fn drain(&mut self, store: &dyn Store) -> usize {
        let mut n = 0;
        loop {
            let after = store.event_cursor_get(self.name).unwrap();
            let page = store.events(&EventsParams { after, limit: self.page, queue: None }).unwrap();
            store.event_cursor_set(self.name, &page.cursor).unwrap();
            if page.events.is_empty() {
                return n;
            }
            n += page.events.len();
            self.seen.extend(page.events);
        }
    }

    /// Drains until it has seen `n` events in all (PostgreSQL shows an
    /// event once every older transaction has ended: other tests' too).
    fn drain_to(&mut self, store: &dyn Store, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.seen.len() < n && Instant::now() < deadline {
            if self.drain(store) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(self.seen.len(), n, "events seen by {}", self.name);
    }

    /// The kinds it saw for each task, in order.
    fn by_task(&self) -> HashMap<i64, Vec<EventKind>> {
        let mut out: HashMap<i64, Vec<EventKind>> = HashMap::new();
        for e in &self.seen {
            out.entry(e.task_id).or_default().push(e.kind);
        }
        out
    }
}

/// A second handle on the same store (a restarted process), where the
/// backend can be reopened; the same handle for memory stores.
fn reopen(env: &Env) -> Arc<dyn Store> {
    if matches!(env.url.split(':').next(), Some("memory")) {
        return env.store.clone();
    }
    ferroq_core::open_with_clock(&env.url, env.clock.clone()).unwrap()
}

/// How long a test waits for events to show.
const WAIT: Duration = Duration::from_secs(20);

/// Reads one page after `after`, waiting until it holds `n` events.
fn page_of(store: &dyn Store, after: Option<String>, queue: Option<&str>, n: usize) -> EventsPage {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = EventsParams { after: after.clone(), limit: 1_000, queue: queue.map(String::from) };
        let page = store.events(&p).unwrap();
        if page.events.len() >= n || Instant::now() >= deadline {
            assert_eq!(page.events.len(), n, "{:?}", page.events);
            return page;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const VALUE_ERROR: &str = r#"{"type": "ValueError", "message": "bad", "traceback": ""}"#;

fn every_transition_is_recorded_once_with_its_details(b: Backend) {
    use EventKind::*;
    let env = b.open();
    let start = env.store.events_head().unwrap();
    // Completed, its callback delivered, then purged.
    let done = env.add("q");
    assert_eq!(env.claim_one("q", "w1").id, done);
    env.complete(done, "w1", b"ok").unwrap();
    assert!(env.store.ack_callbacks(&[done]).unwrap()[0].is_ok());
    // Retried once, failed for good, requeued by retry.
    let failed = env.enqueue(crate::harness::attempts("q", 3)).id;
    env.claim_one("q", "w1");
    assert_eq!(env.fail(failed, "w1", VALUE_ERROR, Retry::After(0)).unwrap(), Status::Queued);
    env.claim_one("q", "w2");
    assert_eq!(env.fail(failed, "w2", VALUE_ERROR, Retry::Never).unwrap(), Status::Failed);
    env.retry(failed).unwrap();
    // Cancelled while queued.
    let cancelled = env.add("c");
    assert_eq!(env.cancel(cancelled, None).unwrap(), Status::Cancelled);
    // Released by its worker.
    let released = env.add("r");
    env.claim_one("r", "w1");
    env.release(released, "w1").unwrap();
    // A cancel asked while running, then acknowledged by the worker.
    let asked = env.add("a");
    env.claim_one("a", "w3");
    assert_eq!(env.cancel(asked, None).unwrap(), Status::Running);
    assert_eq!(env.cancel(asked, Some("w3")).unwrap(), Status::Cancelled);
    // Past its deadline before it ran.
    let mut t = task("e");
    t.expires_at = Some(env.now() + 1_000);
    let expired = env.enqueue(t).id;
    // Its worker lost: the lease runs out and recovery puts it back.
    let lost = env.add("l");
    env.claim_lease("l", "w4", 1, 500);
    env.advance(2_000);
    assert_eq!(env.store.expire().unwrap(), vec![expired]);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(lost, Status::Queued)]);
    // Purged: everything finished before now.
    env.advance(1);
    let purged = env.store.purge(&PurgeParams { finished_before: Some(env.now()) }).unwrap();
    assert_eq!(purged, 4, "done, cancelled twice and expired (the failed task was requeued)");

    let mut f = Follower::new("all", 1_000);
    f.drain_to(&*env.store, 28);
    let kinds = f.by_task();
    assert_eq!(kinds[&done], vec![Sent, Claimed, Completed, Delivered, Purged]);
    assert_eq!(kinds[&failed], vec![Sent, Claimed, Retrying, Claimed, Failed, Requeued]);
    assert_eq!(kinds[&cancelled], vec![Sent, Cancelled, Purged]);
    assert_eq!(kinds[&released], vec![Sent, Claimed, Released]);
    assert_eq!(kinds[&asked], vec![Sent, Claimed, CancelRequested, Cancelled, Purged]);
    assert_eq!(kinds[&expired], vec![Sent, Expired, Purged]);
    assert_eq!(kinds[&lost], vec![Sent, Claimed, Recovered]);
    assert_eq!(f.seen.len(), kinds.values().map(Vec::len).sum::<usize>());

    let of = |id: i64, kind: EventKind| f.seen.iter().find(|e| e.task_id == id && e.kind == kind).unwrap().clone();
    let sent = of(done, Sent);
    assert_eq!((sent.queue.as_str(), sent.name.as_str()), ("q", task("q").name.as_str()));
    assert_eq!((sent.from, sent.to), (None, Some(Status::Queued)));
    assert_eq!(sent.at, crate::harness::T0, "the store clock");
    let claimed = of(done, Claimed);
    assert_eq!(
        (claimed.from, claimed.to, claimed.worker.as_deref()),
        (Some(Status::Queued), Some(Status::Running), Some("w1"))
    );
    let completed = of(done, Completed);
    assert_eq!(
        (completed.from, completed.to, completed.worker.as_deref()),
        (Some(Status::Running), Some(Status::Done), Some("w1"))
    );
    assert_eq!(completed.error_type, None);
    let retrying = of(failed, Retrying);
    assert_eq!((retrying.from, retrying.to), (Some(Status::Running), Some(Status::Queued)));
    assert_eq!((retrying.worker.as_deref(), retrying.error_type.as_deref()), (Some("w1"), Some("ValueError")));
    let fail = of(failed, Failed);
    assert_eq!((fail.worker.as_deref(), fail.error_type.as_deref()), (Some("w2"), Some("ValueError")));
    assert_eq!(of(failed, Requeued).from, Some(Status::Failed));
    assert_eq!(of(released, Released).error_type, None);
    assert_eq!(of(lost, Recovered).error_type.as_deref(), Some("LeaseLost"));
    assert_eq!(of(lost, Recovered).worker.as_deref(), Some("w4"));
    assert_eq!(
        (of(cancelled, Cancelled).from, of(asked, Cancelled).from),
        (Some(Status::Queued), Some(Status::Running))
    );
    assert_eq!(of(expired, Expired).from, Some(Status::Queued));
    let gone = of(done, Purged);
    assert_eq!((gone.from, gone.to), (Some(Status::Done), None));
    assert_eq!(of(done, Delivered).to, Some(Status::Done));
    // Each event's own cursor resumes right after it.
    let third = &f.seen[2];
    let rest = page_of(&*env.store, Some(third.cursor.clone()), None, f.seen.len() - 3);
    assert_eq!(rest.events[0], f.seen[3]);
    // The head taken before anything happened sees it all too.
    let from_start = page_of(&*env.store, Some(start), None, f.seen.len());
    assert_eq!(from_start.events, f.seen);
}

fn a_follower_sees_every_event_once_across_restarts(b: Backend) {
    let env = b.open();
    let mut follower = Follower::new("f", 7);
    let mut handle = reopen(&env);
    let mut sent = Vec::new();
    for round in 0..12 {
        let ids: Vec<i64> =
            env.store.enqueue(&(0..10).map(|_| task("q")).collect::<Vec<_>>()).unwrap().iter().map(|e| e.id).collect();
        sent.extend(&ids);
        env.advance(1);
        for t in env.claim("q", "w", 6) {
            env.complete(t.id, "w", b"r").unwrap();
        }
        env.advance(1);
        follower.drain(&*handle);
        if round % 3 == 2 {
            // The follower restarts: a new handle, resuming from the
            // cursor it stored.
            drop(handle);
            handle = reopen(&env);
        }
    }
    loop {
        let batch = env.claim("q", "w", 50);
        if batch.is_empty() {
            break;
        }
        for t in batch {
            env.complete(t.id, "w", b"r").unwrap();
        }
    }
    follower.drain_to(&*handle, 3 * sent.len());
    let kinds = follower.by_task();
    assert_eq!(kinds.len(), sent.len());
    for id in &sent {
        assert_eq!(kinds[id], vec![EventKind::Sent, EventKind::Claimed, EventKind::Completed], "task {id}");
    }
    assert_eq!(follower.seen.len(), 3 * sent.len());
    // A second consumer starting now is independent of the first.
    Follower::new("late", 100).drain_to(&*handle, 3 * sent.len());
    assert_eq!(follower.drain(&*handle), 0);
}

fn a_queue_filter_moves_the_cursor_past_other_queues(b: Backend) {
    let env = b.open();
    let a = env.add("a");
    let x = env.add("x");
    page_of(&*env.store, None, None, 2);
    let page = page_of(&*env.store, None, Some("x"), 1);
    assert_eq!(page.events.iter().map(|e| e.task_id).collect::<Vec<_>>(), vec![x]);
    env.claim_one("a", "w");
    page_of(&*env.store, Some(page.cursor.clone()), None, 1);
    let next = env
        .store
        .events(&EventsParams { after: Some(page.cursor.clone()), limit: 10, queue: Some("x".into()) })
        .unwrap();
    assert!(next.events.is_empty());
    // Unfiltered from the filtered cursor: only what came after it.
    let all = page_of(&*env.store, Some(page.cursor), None, 1);
    assert_eq!(all.events.iter().map(|e| (e.task_id, e.kind)).collect::<Vec<_>>(), vec![(a, EventKind::Claimed)]);
}

fn events_are_pruned_by_purge_and_positions_never_go_back(b: Backend) {
    let env = b.open_with("events_retention_s=60");
    let old: Vec<i64> = (0..8).map(|_| env.add("q")).collect();
    let mut f = Follower::new("f", 100);
    f.drain_to(&*env.store, old.len());
    env.advance(61_000);
    env.store.purge(&PurgeParams::default()).unwrap();
    let left = env.store.events(&EventsParams { after: None, limit: 100, queue: None }).unwrap();
    // At most each shard's newest event is kept (so positions never repeat).
    assert!(left.events.len() <= b.shards() as usize, "{} events left", left.events.len());
    let new = env.add("q");
    f.drain_to(&*env.store, old.len() + 1);
    assert_eq!(f.seen.last().unwrap().task_id, new);
    env.advance(1_000);
    env.store.purge(&PurgeParams::default()).unwrap();
    let recent = env.store.events(&EventsParams { after: None, limit: 100, queue: None }).unwrap();
    assert!(recent.events.iter().any(|e| e.task_id == new), "a recent event is kept");
}

fn events_off_records_nothing(b: Backend) {
    let env = b.open_with("events=off");
    let id = env.add("q");
    env.claim_one("q", "w");
    env.complete(id, "w", b"ok").unwrap();
    assert!(env.store.ack_callbacks(&[id]).unwrap()[0].is_ok());
    let page = env.store.events(&EventsParams { after: None, limit: 100, queue: None }).unwrap();
    assert!(page.events.is_empty(), "{:?}", page.events);
}

fn event_reads_refuse_bad_cursors_and_limits(b: Backend) {
    let env = b.open();
    for bad in ["", "x", "s:1.2.3.4.5.6.7", "p:x", "s:-1"] {
        let r = env.store.events(&EventsParams { after: Some(bad.into()), limit: 10, queue: None });
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad}: {r:?}");
        assert!(matches!(env.store.event_cursor_set("c", bad), Err(Error::InvalidArgument(_))), "{bad}");
    }
    for limit in [0, 10_001] {
        let r = env.store.events(&EventsParams { after: None, limit, queue: None });
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{limit}");
    }
    assert!(matches!(env.store.event_cursor_get(""), Err(Error::InvalidArgument(_))));
    assert_eq!(env.store.event_cursor_get("nobody").unwrap(), None);
    let head = env.store.events_head().unwrap();
    env.store.event_cursor_set("c", &head).unwrap();
    assert_eq!(env.store.event_cursor_get("c").unwrap(), Some(head));
}

fn callbacks_are_acknowledged_only_for_finished_tasks(b: Backend) {
    let env = b.open();
    let queued = env.add("q");
    let done = env.add("q");
    env.claim("q", "w", 2);
    env.complete(done, "w", b"ok").unwrap();
    let out = env.store.ack_callbacks(&[done, queued, 999_999_999]).unwrap();
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(Error::InvalidTransition { status: Status::Running, .. })), "{:?}", out[1]);
    assert!(matches!(out[2], Err(Error::NotFound(_))), "{:?}", out[2]);
}

fn an_equal_listen_value_is_not_a_change(b: Backend) {
    let env = b.open();
    let set = |k: &str, v: &[u8]| env.store.listen_set(&ListenSetParams { key: k.into(), value: v.to_vec() }).unwrap();
    let v1 = set("k", b"1");
    assert_eq!(set("k", b"1"), v1, "an equal value returns the current version");
    let v2 = set("k", b"2");
    assert!(v2 > v1);
    assert_eq!(set("k", b"2"), v2);
    let v3 = set("k", b"1");
    assert!(v3 > v2, "a value equal to an older one is a change");
    let changes = env.store.listen_changes(&ListenChangesParams { since: 0, limit: 100 }).unwrap();
    assert_eq!(changes.iter().map(|c| c.version).collect::<Vec<_>>(), vec![v1, v2, v3]);
    assert_eq!(env.store.listen_head().unwrap(), v3);
}

fn listen_consumers_keep_their_version_and_keys_list_latest_values(b: Backend) {
    let env = b.open();
    let set = |k: &str, v: &[u8]| env.store.listen_set(&ListenSetParams { key: k.into(), value: v.to_vec() }).unwrap();
    assert_eq!(env.store.listen_cursor_get("sched").unwrap(), None);
    let a1 = set("a", b"1");
    env.store.listen_cursor_set("sched", a1).unwrap();
    // Changes made while the consumer was away.
    let b1 = set("b", b"x");
    let a2 = set("a", b"2");
    let store = reopen(&env);
    let since = store.listen_cursor_get("sched").unwrap().unwrap();
    assert_eq!(since, a1);
    let missed = store.listen_changes(&ListenChangesParams { since, limit: 100 }).unwrap();
    assert_eq!(missed.iter().map(|c| c.version).collect::<Vec<_>>(), vec![b1, a2]);
    store.listen_cursor_set("sched", a2).unwrap();
    assert_eq!(env.store.listen_cursor_get("sched").unwrap(), Some(a2));
    assert!(matches!(env.store.listen_cursor_set("sched", -1), Err(Error::InvalidArgument(_))));
    let keys = env.store.listen_keys().unwrap();
    let got: Vec<(&str, &[u8], i64)> = keys.iter().map(|c| (c.key.as_str(), c.value.as_slice(), c.version)).collect();
    assert_eq!(got, vec![("a", &b"2"[..], a2), ("b", &b"x"[..], b1)]);
}
