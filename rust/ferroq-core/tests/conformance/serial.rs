//! One-at-a-time (serial) queues and `active`: at most one running task
//! per serial queue, store-wide, whatever the shards and threads; `start`
//! switches; `active` never hands out two.

use crate::harness::*;
use crate::steer::{options, start};
use ferroq_core::store::{ActiveParams, ClaimParams, QueueOptions, RecoverParams};
use ferroq_core::{Status, Store, Task};
use std::collections::HashSet;
use std::sync::{Arc, Barrier};

crate::conformance!(
    serial_queue_hands_out_one_task_at_a_time,
    active_returns_the_running_task_else_the_next,
    start_on_a_serial_queue_switches_the_active_task,
    serial_queue_respects_recovery_and_cancels,
    sixteen_threads_never_see_two_running,
    sixteen_threads_calling_active_get_one_task,
    sixteen_threads_starting_on_a_serial_queue_leave_one_running,
);

fn serial(env: &Env, queue: &str) {
    options(env, QueueOptions { queue: queue.into(), serial: true, ..Default::default() });
}

fn active(store: &dyn Store, queue: &str, worker: &str) -> Option<Task> {
    store.active(&ActiveParams { queue: queue.into(), worker: worker.into(), lease_ms: 30_000 }).unwrap()
}

fn serial_queue_hands_out_one_task_at_a_time(b: Backend) {
    let env = b.open();
    serial(&env, "s");
    let ids: Vec<i64> = (0..5).map(|_| env.add("s")).collect();
    let plain: Vec<i64> = (0..3).map(|_| env.add("p")).collect();
    let first = env.claim("s", "w1", 10);
    assert_eq!(first.iter().map(|t| t.id).collect::<Vec<_>>(), vec![ids[0]], "one task, the first");
    assert!(env.claim("s", "w2", 10).is_empty(), "nothing while one runs");
    assert_eq!(env.claim("p", "w2", 10).len(), plain.len(), "other queues are not held back");
    env.complete(ids[0], "w1", b"r").unwrap();
    for want in &ids[1..] {
        let got = env.claim("s", "w", 10);
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![*want]);
        assert!(env.claim("s", "w", 10).is_empty());
        env.complete(*want, "w", b"r").unwrap();
    }
    assert_eq!(env.count("s", Status::Done), 5);
}

fn active_returns_the_running_task_else_the_next(b: Backend) {
    let env = b.open();
    serial(&env, "prompts");
    assert!(active(&*env.store, "prompts", "page").is_none());
    let a = env.add("prompts");
    let c = env.add("prompts");
    let got = active(&*env.store, "prompts", "page").unwrap();
    assert_eq!((got.id, got.status, got.worker.as_deref()), (a, Status::Running, Some("page")));
    assert_eq!(active(&*env.store, "prompts", "other").unwrap().id, a, "the same task, whoever asks");
    env.complete(a, "page", b"answer").unwrap();
    assert_eq!(active(&*env.store, "prompts", "page").unwrap().id, c, "the next is activated");
    assert_eq!(env.cancel(c, None).unwrap(), Status::Running);
    env.cancel(c, Some("page")).unwrap();
    assert!(active(&*env.store, "prompts", "page").is_none(), "a cancelled active task is gone");
    // active works on a queue not declared serial too, one at a time.
    let x = env.add("plain");
    env.add("plain");
    assert_eq!(active(&*env.store, "plain", "w").unwrap().id, x);
    assert_eq!(active(&*env.store, "plain", "w").unwrap().id, x);
    assert_eq!(env.count("plain", Status::Running), 1);
}

fn start_on_a_serial_queue_switches_the_active_task(b: Backend) {
    let env = b.open();
    serial(&env, "s");
    let a = env.add("s");
    let c = env.add("s");
    let d = env.add("s");
    assert_eq!(env.claim_one("s", "page").id, a);
    let got = start(&env, c, "page").unwrap();
    assert_eq!((got.id, got.status), (c, Status::Running));
    let back = env.get(a);
    assert_eq!((back.status, back.attempts, back.worker), (Status::Queued, 0, None), "switched out, not counted");
    assert_eq!(env.count("s", Status::Running), 1);
    assert!(env.claim("s", "w", 5).is_empty());
    assert_eq!(active(&*env.store, "s", "page").unwrap().id, c);
    // A switched-out task whose cancel was asked ends cancelled.
    assert_eq!(env.cancel(c, None).unwrap(), Status::Running);
    start(&env, d, "page").unwrap();
    assert_eq!(env.get(c).status, Status::Cancelled);
    assert_eq!(env.count("s", Status::Running), 1);
    // Switching back.
    start(&env, a, "page").unwrap();
    assert_eq!(env.get(d).status, Status::Queued);
    assert_eq!(env.get(a).status, Status::Running);
    assert_eq!(env.count("s", Status::Running), 1);
}

fn serial_queue_respects_recovery_and_cancels(b: Backend) {
    let env = b.open();
    serial(&env, "s");
    let a = env.enqueue(attempts("s", 5)).id;
    let c = env.add("s");
    env.claim_lease("s", "w", 1, 1_000);
    env.advance(1_001);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(a, Status::Queued)]);
    assert_eq!(env.claim_one("s", "w").id, a, "recovered in its old place");
    env.cancel(a, None).unwrap();
    assert!(env.claim("s", "w", 1).is_empty(), "still running until its worker stops");
    env.release(a, "w").unwrap();
    assert_eq!(env.get(a).status, Status::Cancelled);
    assert_eq!(env.claim_one("s", "w").id, c);
}

/// Runs `f` on 16 threads at once (released together); returns their results.
fn at_once<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl Fn(&dyn Store, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(16));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (store, barrier, f) = (store.clone(), barrier.clone(), f.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(&*store, i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn sixteen_threads_never_see_two_running(b: Backend) {
    let env = b.open();
    serial(&env, "s");
    for _ in 0..40 {
        env.add("s");
    }
    for round in 0..8 {
        let got: Vec<Vec<Task>> = at_once(&env.store, |store, i| {
            let p = ClaimParams {
                queue: "s".into(),
                worker: format!("w{i}"),
                limit: 5,
                lease_ms: 30_000,
                resources: None,
                home: None,
            };
            store.claim(&p).unwrap()
        });
        let handed: Vec<&Task> = got.iter().flatten().collect();
        assert_eq!(handed.len(), 1, "round {round}: one task handed out, got {handed:?}");
        assert_eq!(env.count("s", Status::Running), 1);
        let t = handed[0];
        env.complete(t.id, t.worker.as_deref().unwrap(), b"r").unwrap();
    }
}

fn sixteen_threads_calling_active_get_one_task(b: Backend) {
    let env = b.open();
    for _ in 0..20 {
        env.add("prompts");
    }
    for serial_queue in [false, true] {
        if serial_queue {
            serial(&env, "prompts");
        }
        for round in 0..4 {
            let got = at_once(&env.store, |store, i| active(store, "prompts", &format!("page{i}")).map(|t| t.id));
            let ids: HashSet<Option<i64>> = got.into_iter().collect();
            assert_eq!(ids.len(), 1, "round {round} (serial {serial_queue}): every caller sees one task: {ids:?}");
            assert_eq!(env.count("prompts", Status::Running), 1);
            let id = ids.into_iter().next().flatten().unwrap();
            let worker = env.get(id).worker.unwrap();
            env.complete(id, &worker, b"r").unwrap();
        }
    }
}

fn sixteen_threads_starting_on_a_serial_queue_leave_one_running(b: Backend) {
    let env = b.open();
    serial(&env, "s");
    let ids: Vec<i64> = (0..16).map(|_| env.add("s")).collect();
    let ids = Arc::new(ids);
    let chosen = ids.clone();
    let got = at_once(&env.store, move |store, i| {
        let p = ferroq_core::store::StartParams { id: chosen[i], worker: format!("w{i}"), lease_ms: 30_000 };
        store.start(&[p]).unwrap().pop().unwrap().is_ok()
    });
    assert!(got.iter().filter(|ok| **ok).count() >= 1);
    assert_eq!(env.count("s", Status::Running), 1, "the last switch wins; never two");
    assert_eq!(env.count("s", Status::Queued), 15);
    assert!(env.claim("s", "w", 5).is_empty());
    let _ = ids;
}
