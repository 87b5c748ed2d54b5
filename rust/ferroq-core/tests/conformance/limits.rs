//! Store-wide controls: worker records, queue capacity, function limits
//! (concurrency and rate across every worker) and resource requirements.

use crate::harness::*;
use ferroq_core::store::{CapacityParams, ClaimParams, FunctionLimit, WorkerInfo};
use ferroq_core::{Error, NewTask, Status};

crate::conformance!(
    workers_are_recorded_refreshed_and_removed,
    capacity_refuses_sends_beyond_it_and_stores_nothing,
    capacity_counts_only_unfinished_and_new_keys,
    max_running_holds_across_workers,
    rate_limit_hands_out_tokens_by_the_clock,
    limits_round_trip_and_remove,
    bad_limits_are_rejected,
    requirements_are_matched_against_resources,
    bad_resource_maps_are_rejected,
);

fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        host: "host-a".into(),
        pid: 4242,
        started_at: 0,
        heartbeat_at: 0,
        queues: vec!["default".into(), "mail".into()],
    }
}

fn claim_with(env: &Env, queue: &str, worker: &str, limit: u32, resources: Option<&str>) -> Vec<ferroq_core::Task> {
    env.store
        .claim(&ClaimParams {
            queue: queue.into(),
            worker: worker.into(),
            limit,
            lease_ms: 30_000,
            resources: resources.map(String::from),
            home: None,
        })
        .unwrap()
}

fn named(queue: &str, name: &str) -> NewTask {
    NewTask::new(queue, name, b"{}".to_vec())
}

fn workers_are_recorded_refreshed_and_removed(b: Backend) {
    let env = b.open();
    env.store.register_worker(&worker("w1")).unwrap();
    let t0 = env.now();
    env.advance(5_000);
    env.store.register_worker(&WorkerInfo { pid: 7, ..worker("w1") }).unwrap();
    env.store.register_worker(&worker("w2")).unwrap();
    let ws = env.store.workers().unwrap();
    assert_eq!(ws.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["w1", "w2"]);
    assert_eq!((ws[0].started_at, ws[0].heartbeat_at, ws[0].pid), (t0, t0 + 5_000, 7));
    assert_eq!(ws[0].queues, ["default", "mail"]);
    assert!(env.store.remove_worker("w1").unwrap());
    assert!(!env.store.remove_worker("w1").unwrap());
    assert_eq!(env.store.workers().unwrap().len(), 1);
}

fn capacity_refuses_sends_beyond_it_and_stores_nothing(b: Backend) {
    let env = b.open();
    assert_eq!(env.store.capacity("q").unwrap(), None);
    env.store.set_capacity(&CapacityParams { queue: "q".into(), capacity: Some(3) }).unwrap();
    assert_eq!(env.store.capacity("q").unwrap(), Some(3));
    env.add("q");
    env.add("q");
    let err = env.store.enqueue(&[task("q"), task("q")]).unwrap_err();
    assert!(matches!(err, Error::QueueFull { ref queue, limit: 3 } if queue == "q"), "{err}");
    assert_eq!(env.count("q", Status::Queued), 2);
    env.add("q");
    assert!(matches!(env.store.enqueue(&[task("q")]), Err(Error::QueueFull { .. })));
    // Other queues are not capped.
    env.add("other");
    // Finishing one frees a place.
    let t = env.claim_one("q", "w");
    env.complete(t.id, "w", b"").unwrap();
    env.add("q");
    env.store.set_capacity(&CapacityParams { queue: "q".into(), capacity: None }).unwrap();
    env.add("q");
    assert_eq!(env.store.unfinished("q").unwrap(), 4);
}

fn capacity_counts_only_unfinished_and_new_keys(b: Backend) {
    let env = b.open();
    env.store.set_capacity(&CapacityParams { queue: "q".into(), capacity: Some(1) }).unwrap();
    let first = env.enqueue(keyed("q", "k"));
    // Re-sending an existing key stores nothing, so it is not refused.
    let again = env.enqueue(keyed("q", "k"));
    assert_eq!((again.id, again.inserted), (first.id, false));
    assert!(matches!(env.store.enqueue(&[keyed("q", "k2")]), Err(Error::QueueFull { .. })));
}

fn max_running_holds_across_workers(b: Backend) {
    let env = b.open();
    env.store
        .set_function_limit(&FunctionLimit { name: "gpu".into(), max_running: Some(2), rate_per_s: None, burst: None })
        .unwrap();
    for _ in 0..5 {
        env.enqueue(named("q", "gpu"));
    }
    for _ in 0..3 {
        env.enqueue(named("q", "cpu"));
    }
    let a = claim_with(&env, "q", "w1", 10, None);
    let b2 = claim_with(&env, "q", "w2", 10, None);
    let gpu_running = a.iter().chain(&b2).filter(|t| t.name == "gpu").count();
    assert_eq!(gpu_running, 2);
    assert_eq!(a.iter().chain(&b2).filter(|t| t.name == "cpu").count(), 3);
    // Given-back extras are queued again with no attempt counted.
    assert_eq!(env.count("q", Status::Queued), 3);
    for t in env
        .store
        .list(&ferroq_core::store::ListParams { status: Some(Status::Queued), limit: 10, ..Default::default() })
        .unwrap()
    {
        assert_eq!(t.attempts, 0);
    }
    assert!(claim_with(&env, "q", "w3", 10, None).is_empty());
    let done = a.iter().chain(&b2).find(|t| t.name == "gpu").unwrap();
    env.complete(done.id, done.worker.as_deref().unwrap(), b"").unwrap();
    let next = claim_with(&env, "q", "w3", 10, None);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].name, "gpu");
}

fn rate_limit_hands_out_tokens_by_the_clock(b: Backend) {
    let env = b.open();
    env.store
        .set_function_limit(&FunctionLimit {
            name: "api".into(),
            max_running: None,
            rate_per_s: Some(2.0),
            burst: Some(3.0),
        })
        .unwrap();
    for _ in 0..10 {
        env.enqueue(named("q", "api"));
    }
    assert_eq!(claim_with(&env, "q", "w1", 10, None).len(), 3); // the burst
    assert!(claim_with(&env, "q", "w2", 10, None).is_empty());
    env.advance(499);
    assert!(claim_with(&env, "q", "w2", 10, None).is_empty());
    env.advance(1);
    assert_eq!(claim_with(&env, "q", "w2", 10, None).len(), 1);
    env.advance(1_500);
    assert_eq!(claim_with(&env, "q", "w1", 10, None).len(), 3);
    env.advance(60_000); // refill caps at the burst
    assert_eq!(claim_with(&env, "q", "w1", 10, None).len(), 3);
    assert_eq!(env.count("q", Status::Running), 10);
}

fn limits_round_trip_and_remove(b: Backend) {
    let env = b.open();
    let l = FunctionLimit { name: "f".into(), max_running: Some(4), rate_per_s: Some(10.0), burst: None };
    env.store.set_function_limit(&l).unwrap();
    assert_eq!(env.store.function_limits().unwrap(), vec![l.clone()]);
    env.store.set_function_limit(&FunctionLimit { max_running: None, rate_per_s: None, ..l }).unwrap();
    assert!(env.store.function_limits().unwrap().is_empty());
}

fn bad_limits_are_rejected(b: Backend) {
    let env = b.open();
    for bad in [
        FunctionLimit { name: "".into(), max_running: Some(1), rate_per_s: None, burst: None },
        FunctionLimit { name: "f".into(), max_running: Some(0), rate_per_s: None, burst: None },
        FunctionLimit { name: "f".into(), max_running: None, rate_per_s: Some(0.0), burst: None },
        FunctionLimit { name: "f".into(), max_running: None, rate_per_s: Some(f64::NAN), burst: None },
        FunctionLimit { name: "f".into(), max_running: None, rate_per_s: Some(1.0), burst: Some(0.5) },
    ] {
        assert!(matches!(env.store.set_function_limit(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
    assert!(env.store.function_limits().unwrap().is_empty());
}

fn requirements_are_matched_against_resources(b: Backend) {
    let env = b.open();
    let big = env.enqueue(NewTask { requires: Some(r#"{"gpu_memory_gb": 16}"#.into()), ..task("q") }).id;
    let small = env.enqueue(NewTask { requires: Some(r#"{"gpu_memory_gb": 8, "cpus": 2}"#.into()), ..task("q") }).id;
    let plain = env.add("q");
    assert_eq!(env.get(big).requires.as_deref(), Some(r#"{"gpu_memory_gb": 16}"#));
    // A worker with no resources only gets the task without requirements.
    let got: Vec<i64> = claim_with(&env, "q", "cpu-box", 10, None).iter().map(|t| t.id).collect();
    assert_eq!(got, [plain]);
    // 12 GB is enough for the 8 GB task (with 2 cpus), not for the 16 GB one.
    let got: Vec<i64> =
        claim_with(&env, "q", "mid", 10, Some(r#"{"gpu_memory_gb": 12, "cpus": 4}"#)).iter().map(|t| t.id).collect();
    assert_eq!(got, [small]);
    let got: Vec<i64> =
        claim_with(&env, "q", "big", 10, Some(r#"{"gpu_memory_gb": 80, "cpus": 1}"#)).iter().map(|t| t.id).collect();
    assert_eq!(got, [big]);
}

fn bad_resource_maps_are_rejected(b: Backend) {
    let env = b.open();
    for bad in [r#"[1]"#, r#"{"gpu": "lots"}"#, r#"{"gpu": -1}"#, "not json"] {
        let r = env.store.enqueue(&[NewTask { requires: Some(bad.into()), ..task("q") }]);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad}");
        let r = env.store.claim(&ClaimParams {
            queue: "q".into(),
            worker: "w".into(),
            limit: 1,
            lease_ms: 1_000,
            resources: Some(bad.into()),
            home: None,
        });
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad}");
    }
    assert_eq!(env.total(), 0);
}
