//! Offline resharding of SQLite stores (`store::sqlite::reshard`): every
//! task and every piece of store-wide data arrives in a store of another
//! shard count, ids are kept where the layout allows and never handed out
//! twice, keys still deduplicate, a store in use is refused, and the source
//! is left as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferroq_core::store::sqlite::{reshard, ReshardParams, ReshardReport};
use ferroq_core::store::{
    CancelParams, CapacityParams, ClaimParams, CompleteParams, FailParams, FunctionLimit, ListParams, ListenSetParams,
    QueueOptions, Retry, WorkerInfo,
};
use ferroq_core::{Error, ManualClock, NewTask, Status, Store, Task};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_700_000_000_000;

fn open(dir: &Path, shards: u32, clock: &Arc<ManualClock>) -> Arc<dyn Store> {
    ferroq_core::open_with_clock(&format!("sqlite://{}?shards={shards}", dir.display()), clock.clone()).unwrap()
}

fn open_any(dir: &Path, clock: &Arc<ManualClock>) -> Arc<dyn Store> {
    ferroq_core::open_with_clock(&format!("sqlite://{}", dir.display()), clock.clone()).unwrap()
}

fn claim(s: &dyn Store, queue: &str, worker: &str, limit: u32) -> Vec<Task> {
    s.claim(&ClaimParams {
        queue: queue.into(),
        worker: worker.into(),
        limit,
        lease_ms: 30_000,
        resources: None,
        home: None,
    })
    .unwrap()
}

fn all_tasks(s: &dyn Store) -> Vec<Task> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .list(&ListParams {
                queue: None,
                status: None,
                batch: None,
                name: None,
                key: None,
                after_id: after,
                limit: 1000,
            })
            .unwrap();
        match page.last() {
            Some(t) => after = Some(t.id),
            None => return out,
        }
        out.extend(page);
    }
}

fn counts(s: &dyn Store) -> BTreeMap<(String, Status), u64> {
    s.counts().unwrap().into_iter().map(|c| ((c.queue, c.status), c.count)).collect()
}

/// A store with every kind of task and store-wide data: unkeyed and keyed,
/// queued, scheduled, done (with results), failed, cancelled, purged;
/// listen data, queue options, a capacity, a function limit, cursors.
fn fill(s: &dyn Store, clock: &ManualClock) {
    for i in 0..30 {
        let mut t = NewTask::new("mail", "send", format!("payload {i}").into_bytes());
        t.metadata = Some(format!("{{\"n\": {i}}}"));
        t.batch = Some(format!("b{}", i % 3));
        t.priority = i % 4;
        t.max_attempts = 3;
        if i % 5 == 0 {
            t.run_at = Some(T0 + 3_600_000);
        }
        if i % 2 == 0 {
            t.key = Some(format!("k{i}"));
        }
        s.enqueue(&[t]).unwrap();
    }
    for i in 0..6 {
        s.enqueue(&[NewTask { key: Some(format!("r{i}")), ..NewTask::new("reports", "build", vec![i; 10]) }]).unwrap();
    }
    // Finished tasks of every kind.
    let got = claim(s, "mail", "w1", 8);
    assert_eq!(got.len(), 8);
    for t in &got[..5] {
        let r = s.complete(&[CompleteParams {
            id: t.id,
            worker: "w1".into(),
            result: format!("done {}", t.id).into_bytes(),
            force: false,
        }]);
        r.unwrap().pop().unwrap().unwrap();
    }
    for t in &got[5..7] {
        let f = FailParams {
            id: t.id,
            worker: "w1".into(),
            error: "{\"type\":\"Boom\"}".into(),
            retry: Retry::Never,
            force: false,
        };
        assert_eq!(s.fail(&[f]).unwrap().pop().unwrap().unwrap(), Status::Failed);
    }
    let f =
        FailParams { id: got[7].id, worker: "w1".into(), error: "again".into(), retry: Retry::After(5), force: false };
    assert_eq!(s.fail(&[f]).unwrap().pop().unwrap().unwrap(), Status::Queued);
    let queued = claim(s, "reports", "w2", 1);
    s.complete(&[CompleteParams { id: queued[0].id, worker: "w2".into(), result: b"r".to_vec(), force: false }])
        .unwrap();
    let cancel_me = s.list(&ListParams {
        queue: Some("reports".into()),
        status: Some(Status::Queued),
        batch: None,
        name: None,
        key: None,
        after_id: None,
        limit: 1,
    });
    let id = cancel_me.unwrap()[0].id;
    s.cancel(&[CancelParams { id, worker: None }]).unwrap().pop().unwrap().unwrap();
    // The newest task, finished and deleted: its id must never come back.
    let last = s.enqueue(&[NewTask::new("mail", "send", b"gone".to_vec())]).unwrap()[0].id;
    let t = claim(s, "mail", "w3", 100);
    for t in &t {
        s.complete(&[CompleteParams { id: t.id, worker: "w3".into(), result: vec![], force: false }]).unwrap();
    }
    s.delete(&[last]).unwrap().pop().unwrap().unwrap();
    // Store-wide data.
    s.listen_set(&ListenSetParams { key: "model".into(), value: b"v1".to_vec() }).unwrap();
    s.listen_set(&ListenSetParams { key: "model".into(), value: b"v2".to_vec() }).unwrap();
    s.listen_set(&ListenSetParams { key: "threshold".into(), value: b"0.5".to_vec() }).unwrap();
    s.set_queue_options(&QueueOptions { queue: "mail".into(), retention_ms: Some(60_000), ..Default::default() })
        .unwrap();
    s.set_queue_options(&QueueOptions { queue: "reports".into(), serial: true, ..Default::default() }).unwrap();
    s.set_capacity(&CapacityParams { queue: "mail".into(), capacity: Some(1000) }).unwrap();
    s.set_function_limit(&FunctionLimit { name: "send".into(), max_running: Some(3), rate_per_s: None, burst: None })
        .unwrap();
    s.listen_cursor_set("app", 2).unwrap();
    let head = s.events_head().unwrap();
    s.event_cursor_set("follower", &head).unwrap();
    clock.advance(Duration::from_millis(10));
}

/// Checks the resharded store against the source's tasks and data.
fn check_copy(before: &[Task], report: &ReshardReport, dst: &dyn Store, src_counts: &BTreeMap<(String, Status), u64>) {
    let new_ids: HashMap<i64, i64> = report.renumbered.iter().copied().collect();
    assert_eq!(report.tasks as usize, before.len());
    assert_eq!(report.kept_ids as usize + report.renumbered.len(), before.len());
    assert_eq!(&counts(dst), src_counts);
    assert_eq!(&report.counts, src_counts);
    let n = i64::from(report.shards);
    for t in before {
        let id = new_ids.get(&t.id).copied().unwrap_or(t.id);
        if t.key.is_none() && t.id >= n {
            assert_eq!(id, t.id, "an unkeyed task keeps its id");
        }
        let got = dst.get(&[id]).unwrap().pop().flatten().unwrap_or_else(|| panic!("task {} ({id}) lost", t.id));
        assert_eq!(Task { id, ..t.clone() }, got, "every field kept");
        if let Some(key) = &t.key {
            let by_key = dst
                .get_by_key(&ferroq_core::store::GetByKeyParams { queue: t.queue.clone(), keys: vec![key.clone()] })
                .unwrap();
            assert_eq!(by_key[0].as_ref().map(|t| t.id), Some(id));
        }
    }
    assert_eq!(dst.listen_get("model").unwrap().unwrap().value, b"v2");
    assert_eq!(dst.listen_keys().unwrap().len(), 2);
    assert_eq!(dst.listen_head().unwrap(), 3, "listen versions kept");
    assert_eq!(dst.listen_cursor_get("app").unwrap(), Some(2));
    assert_eq!(dst.queue_options("mail").unwrap().retention_ms, Some(60_000));
    assert!(dst.queue_options("reports").unwrap().serial);
    assert_eq!(dst.capacity("mail").unwrap(), Some(1000));
    assert_eq!(dst.function_limits().unwrap()[0].max_running, Some(3));
    // Event cursors restart at the new feed's beginning.
    let start = format!("s:{}", vec!["0"; report.shards as usize].join("."));
    assert_eq!(dst.event_cursor_get("follower").unwrap(), Some(start));
    assert_eq!(report.event_cursors_reset, vec!["follower".to_string()]);
    assert!(report.event_consumers_behind.is_empty(), "the follower had read to the head");
    assert!(report.events_left > 0);
}

/// Every id the source ever handed out (including the deleted newest one).
fn max_id_ever(before: &[Task]) -> i64 {
    before.iter().map(|t| t.id).max().unwrap() + 1
}

fn reshard_case(from: u32, to: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let clock = Arc::new(ManualClock::new(T0));
    let (before, src_counts) = {
        let s = open(&src, from, &clock);
        fill(&*s, &clock);
        (all_tasks(&*s), counts(&*s))
    };
    let report = reshard(&ReshardParams::new(&src, &dst, to), clock.clone()).unwrap();
    assert_eq!((report.src_shards, report.shards), (from, to));
    // The source is as it was (and keeps its shard count).
    {
        let s = open(&src, from, &clock);
        assert_eq!(all_tasks(&*s), before);
    }
    let d = open_any(&dst, &clock);
    let files: Vec<PathBuf> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.iter().filter(|p| p.extension().is_some_and(|e| e == "db")).count(), to as usize);
    check_copy(&before, &report, &*d, &src_counts);
    for (old, new) in &report.renumbered {
        assert!(*new > max_id_ever(&before), "task {old} got {new}, at or below an old id");
    }
    // Keys still deduplicate: a send of a taken key returns the task.
    for t in before.iter().filter(|t| t.key.is_some()) {
        let again = NewTask { key: t.key.clone(), ..NewTask::new(&t.queue, "send", b"dup".to_vec()) };
        let got = d.enqueue(&[again]).unwrap()[0];
        assert!(!got.inserted, "key {:?} deduplicated", t.key);
    }
    // New sends never reuse an id, in any shard.
    let old_ids: HashSet<i64> = before.iter().map(|t| t.id).collect();
    let fresh: Vec<NewTask> = (0..40).map(|i| NewTask::new("mail", "send", vec![i])).collect();
    let mut seen = HashSet::new();
    for e in d.enqueue(&fresh).unwrap() {
        assert!(e.inserted);
        assert!(e.id > max_id_ever(&before), "new id {} at or below an old one", e.id);
        assert!(!old_ids.contains(&e.id) && seen.insert(e.id));
    }
    // A fresh handle (another process) agrees.
    drop(d);
    let d = open_any(&dst, &clock);
    let e = d.enqueue(&[NewTask::new("mail", "send", b"x".to_vec())]).unwrap()[0];
    assert!(!seen.contains(&e.id) && e.id > *seen.iter().max().unwrap());
    // And a worker drains it: every queued task runs.
    clock.advance(Duration::from_secs(7200));
    let mut ran = 0;
    loop {
        let got = claim(&*d, "mail", "w", 100);
        if got.is_empty() {
            break;
        }
        for t in &got {
            d.complete(&[CompleteParams { id: t.id, worker: "w".into(), result: vec![], force: false }])
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
        }
        ran += got.len();
    }
    let queued_mail = src_counts.get(&("mail".to_string(), Status::Queued)).copied().unwrap_or(0);
    assert_eq!(ran as u64, queued_mail + 41);
}

#[test]
fn one_shard_to_four() {
    reshard_case(1, 4);
}

#[test]
fn four_shards_to_two() {
    reshard_case(4, 2);
}

#[test]
fn four_shards_to_one() {
    reshard_case(4, 1);
}

#[test]
fn two_shards_to_three() {
    reshard_case(2, 3);
}

/// A store with one running task of worker `w` (and its worker record).
fn running_store(dir: &Path, clock: &Arc<ManualClock>) -> (i64, i64) {
    let s = open(dir, 2, clock);
    for i in 0..4 {
        s.enqueue(&[NewTask::new("q", "job", vec![i])]).unwrap();
    }
    s.register_worker(&WorkerInfo {
        id: "w".into(),
        host: "h".into(),
        pid: 1,
        started_at: 0,
        heartbeat_at: 0,
        queues: vec!["q".into()],
    })
    .unwrap();
    let got = claim(&*s, "q", "w", 2);
    s.cancel(&[CancelParams { id: got[1].id, worker: None }]).unwrap();
    (got[0].id, got[1].id)
}

#[test]
fn a_store_in_use_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let clock = Arc::new(ManualClock::new(T0));
    let (running, _) = running_store(&src, &clock);
    let err = reshard(&ReshardParams::new(&src, &dst, 3), clock.clone()).unwrap_err();
    match &err {
        Error::StoreInUse(m) => {
            assert!(m.contains("2 task(s) running") && m.contains(&running.to_string()), "{m}");
            assert!(m.contains("1 live worker(s) (w)"), "{m}");
        }
        other => panic!("expected StoreInUse, got {other:?}"),
    }
    assert!(!dst.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary directory left");
    // A stale worker record alone no longer refuses; running tasks still do.
    clock.advance(Duration::from_secs(31));
    let err = reshard(&ReshardParams::new(&src, &dst, 3), clock.clone()).unwrap_err();
    assert!(matches!(&err, Error::StoreInUse(m) if !m.contains("live worker")), "{err:?}");
}

#[test]
fn released_running_tasks_are_queued_without_the_attempt_and_cancels_stick() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let clock = Arc::new(ManualClock::new(T0));
    let (running, cancelled) = running_store(&src, &clock);
    let p = ReshardParams { release_running: true, ..ReshardParams::new(&src, &dst, 3) };
    let report = reshard(&p, clock.clone()).unwrap();
    assert_eq!(report.workers_dropped, 1);
    let new = |old: i64| report.renumbered.iter().find(|(o, _)| *o == old).map_or(old, |(_, n)| *n);
    let mut want = vec![new(running), new(cancelled)];
    want.sort_unstable();
    assert_eq!(report.released, want);
    let d = open_any(&dst, &clock);
    let t = d.get(&[new(running)]).unwrap().pop().flatten().unwrap();
    assert_eq!((t.status, t.attempts, t.worker, t.lease_until), (Status::Queued, 0, None, None));
    let c = d.get(&[new(cancelled)]).unwrap().pop().flatten().unwrap();
    assert_eq!((c.status, c.finished_at), (Status::Cancelled, Some(T0)));
    assert!(d.workers().unwrap().is_empty());
    assert_eq!(claim(&*d, "q", "w2", 10).len(), 3, "the released task runs again");
    // The source still has its running tasks.
    let s = open_any(&src, &clock);
    assert_eq!(s.get(&[running]).unwrap()[0].as_ref().unwrap().status, Status::Running);
}

#[test]
fn bad_requests_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let clock = Arc::new(ManualClock::new(T0));
    drop(open(&src, 2, &clock));
    let bad = |dest: PathBuf, shards: u32| reshard(&ReshardParams::new(&src, dest, shards), clock.clone()).unwrap_err();
    assert!(matches!(bad(dir.path().join("d"), 2), Error::InvalidArgument(m) if m.contains("already has 2")));
    assert!(matches!(bad(dir.path().join("d"), 0), Error::InvalidArgument(_)));
    assert!(matches!(bad(dir.path().join("d"), 65), Error::InvalidArgument(_)));
    assert!(matches!(bad(src.join("inner"), 3), Error::InvalidArgument(m) if m.contains("overlap")));
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    assert!(matches!(bad(full.clone(), 3), Error::InvalidArgument(m) if m.contains("not empty")));
    let not_store = dir.path().join("empty");
    std::fs::create_dir(&not_store).unwrap();
    let r = reshard(&ReshardParams::new(&not_store, dir.path().join("d"), 3), clock.clone());
    assert!(matches!(r, Err(Error::NotAStore(_))), "{r:?}");
    assert!(!dir.path().join("d").exists());
    // An existing empty directory is a fine destination.
    let empty = dir.path().join("empty-dest");
    std::fs::create_dir(&empty).unwrap();
    reshard(&ReshardParams::new(&src, &empty, 3), clock.clone()).unwrap();
    assert_eq!(open_any(&empty, &clock).counts().unwrap().len(), 0);
}

#[test]
fn a_table_of_a_later_build_stops_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let clock = Arc::new(ManualClock::new(T0));
    drop(open(&src, 2, &clock));
    let conn = rusqlite::Connection::open(src.join("shard-001.db")).unwrap();
    conn.execute_batch("CREATE TABLE task_edge (parent INTEGER, child INTEGER); INSERT INTO task_edge VALUES (1, 3);")
        .unwrap();
    drop(conn);
    let err = reshard(&ReshardParams::new(&src, &dst, 3), clock.clone()).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("task_edge")), "{err:?}");
    assert!(!dst.exists());
}

#[test]
fn flow_dependencies_follow_their_tasks_and_still_release_children() {
    use ferroq_core::store::{Dep, FlowTask};
    for (from, to) in [(1, 4), (4, 1), (2, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let clock = Arc::new(ManualClock::new(T0));
        let ids: Vec<i64> = {
            let s = open(&src, from, &clock);
            // A chain of keyed steps (keys move tasks between shards) and a join.
            let mut flow = Vec::new();
            for i in 0..6usize {
                let task = NewTask { key: Some(format!("step-{i}")), ..NewTask::new("f", "step", vec![i as u8]) };
                let after = if i == 0 { vec![] } else { vec![Dep::Earlier(i - 1)] };
                flow.push(FlowTask { task, after });
            }
            let after = vec![Dep::Earlier(2), Dep::Earlier(5)];
            flow.push(FlowTask { task: NewTask::new("f", "join", vec![9]), after });
            s.enqueue_flow(&flow).unwrap().into_iter().map(|e| e.id).collect()
        };
        let report = reshard(&ReshardParams::new(&src, &dst, to), clock.clone()).unwrap();
        let new = |old: i64| report.renumbered.iter().find(|(o, _)| *o == old).map_or(old, |(_, n)| *n);
        let d = open_any(&dst, &clock);
        let want: Vec<Vec<i64>> = (0..7)
            .map(|i| match i {
                0 => vec![],
                6 => vec![new(ids[2]), new(ids[5])],
                i => vec![new(ids[i - 1])],
            })
            .collect();
        let got = d.dependencies(&ids.iter().map(|&i| new(i)).collect::<Vec<_>>()).unwrap();
        assert_eq!(got, want, "{from} -> {to}");
        // Running the chain in the new store releases each child in turn.
        let mut ran = Vec::new();
        loop {
            let got = claim(&*d, "f", "w", 10);
            if got.is_empty() {
                break;
            }
            for t in &got {
                ran.push(t.id);
                d.complete(&[CompleteParams { id: t.id, worker: "w".into(), result: vec![], force: false }])
                    .unwrap()
                    .pop()
                    .unwrap()
                    .unwrap();
            }
        }
        assert_eq!(ran, ids.iter().map(|&i| new(i)).collect::<Vec<_>>(), "{from} -> {to}");
    }
}
