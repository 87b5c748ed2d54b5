//! Every verb of the store and every status transition, with the typed
//! errors of guarded transitions that do not apply.

use crate::harness::*;
use ferroq_core::store::{
    CompleteParams, GetByKeyParams, HeartbeatParams, ListParams, ListenChangesParams, ListenSetParams, ProgressParams,
    PurgeParams, RecoverParams, Retry, RetryParams,
};
use ferroq_core::{Backoff, BackoffStrategy, Error, NewTask, Status};

/// An id no store in this suite ever hands out.
const UNKNOWN: i64 = 1_000_000_007;

crate::conformance!(
    enqueue_one_stores_every_field,
    enqueue_many_keeps_input_order,
    enqueue_large_mixed_batch_keeps_every_field,
    claim_leases_and_counts_the_attempt,
    claim_respects_limit_and_queue,
    heartbeat_extends_lease_and_reports_cancel,
    progress_is_recorded_and_guarded,
    complete_stores_the_result_once,
    complete_by_another_worker_is_lease_lost,
    fail_retry_after_requeues_at_that_time,
    fail_backoff_exponential_is_exact_then_exhausts,
    fail_backoff_defaults_to_the_store_policy,
    fail_never_is_final_with_attempts_left,
    fail_is_guarded,
    cancel_queued_is_immediate,
    cancel_running_flags_then_worker_acknowledges,
    release_does_not_count_the_attempt,
    retry_brings_back_failed_cancelled_and_expired,
    retry_refuses_unfinished_and_done,
    recover_requeues_expired_leases_then_fails_them,
    recover_by_worker_ignores_the_lease,
    recovered_task_keeps_its_place_in_the_queue,
    ids_are_never_reused_after_a_purge,
    expire_moves_queued_tasks_past_their_deadline,
    get_unknown_ids_are_none,
    get_by_key_finds_unfinished_and_finished,
    list_filters_by_queue_status_and_batch,
    list_filters_by_name_and_key,
    delete_removes_finished_tasks_and_frees_their_keys,
    list_pages_by_after_id_without_gaps,
    counts_and_unfinished_follow_transitions,
    purge_removes_tasks_past_retention,
    purge_finished_before_keeps_unfinished_and_newer,
    listen_data_versions_and_changes,
    batch_verbs_report_per_item,
);

fn enqueue_one_stores_every_field(b: Backend) {
    let env = b.open();
    let backoff = Backoff::new(BackoffStrategy::Linear, 250, 1.0, 5_000, 0.0).unwrap();
    let t = NewTask {
        queue: "mail".into(),
        name: "app.tasks:send".into(),
        payload: vec![0, 1, 2, 255],
        priority: 7,
        run_at: Some(T0 + 5_000),
        max_attempts: 3,
        key: Some("user-42".into()),
        batch: Some("b1".into()),
        expires_at: Some(T0 + 60_000),
        metadata: Some(r#"{"a":1}"#.into()),
        backoff: Some(backoff),
        result_ttl_ms: Some(1_234),
        requires: None,
    };
    let e = env.enqueue(t.clone());
    assert!(e.inserted);
    let got = env.get(e.id);
    assert_eq!(got.id, e.id);
    assert_eq!(got.queue, "mail");
    assert_eq!(got.name, "app.tasks:send");
    assert_eq!(got.payload, vec![0, 1, 2, 255]);
    assert_eq!(got.priority, 7);
    assert_eq!(got.status, Status::Queued);
    assert_eq!(got.run_at, T0 + 5_000);
    assert_eq!(got.attempts, 0);
    assert_eq!(got.max_attempts, 3);
    assert_eq!(got.lease_until, None);
    assert_eq!(got.worker, None);
    assert_eq!(got.key.as_deref(), Some("user-42"));
    assert_eq!(got.batch.as_deref(), Some("b1"));
    assert_eq!(got.progress, None);
    assert_eq!(got.result, None);
    assert_eq!(got.error, None);
    assert_eq!(got.created_at, T0);
    assert_eq!(got.started_at, None);
    assert_eq!(got.finished_at, None);
    assert_eq!(got.expires_at, Some(T0 + 60_000));
    assert_eq!(got.metadata.as_deref(), Some(r#"{"a":1}"#));
    assert!(!got.cancel_requested);
    assert_eq!(got.backoff, Some(backoff));
    assert_eq!(got.result_ttl_ms, Some(1_234));

    // Defaults: run_at = now, nothing optional set.
    let d = env.get(env.add("mail"));
    assert_eq!(d.run_at, T0);
    assert_eq!((d.priority, d.max_attempts, d.key, d.batch, d.backoff), (0, 1, None, None, None));
}

fn enqueue_many_keeps_input_order(b: Backend) {
    let env = b.open();
    let tasks: Vec<NewTask> = (0..20u8).map(|i| NewTask::new("q", "job", vec![i])).collect();
    let out = env.store.enqueue(&tasks).unwrap();
    assert_eq!(out.len(), 20);
    assert!(out.iter().all(|e| e.inserted));
    let mut ids: Vec<i64> = out.iter().map(|e| e.id).collect();
    for (i, e) in out.iter().enumerate() {
        assert_eq!(env.get(e.id).payload, vec![i as u8], "result {i} names the wrong task");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "ids are unique");
    assert_eq!(env.count("q", Status::Queued), 20);
    assert!(env.store.enqueue(&[]).unwrap().is_empty());
    assert_eq!(env.total(), 20);
}

fn enqueue_large_mixed_batch_keeps_every_field(b: Backend) {
    // Big enough for several multi-row statements per shard, with keyed
    // tasks (one a duplicate of an earlier one) and per-task fields between
    // them: every task must come back as sent, ids in input order.
    let env = b.open();
    let tasks: Vec<NewTask> = (0..250u32)
        .map(|i| {
            let mut t = NewTask::new("q", format!("job{}", i % 7), i.to_be_bytes().to_vec());
            t.priority = (i % 5) as i64;
            t.max_attempts = 1 + i % 3;
            if i % 9 == 0 {
                t.key = Some(format!("k{}", i % 90));
            }
            if i % 11 == 0 {
                t.batch = Some("b".into());
            }
            t
        })
        .collect();
    let out = env.store.enqueue(&tasks).unwrap();
    assert_eq!(out.len(), 250);
    for (i, e) in out.iter().enumerate() {
        // Keys k0..k89 repeat from i = 90 * n: only the first of each stores.
        let duplicate = i % 9 == 0 && i >= 90;
        assert_eq!(e.inserted, !duplicate, "task {i}");
        if duplicate {
            assert_eq!(e.id, out[i % 90].id, "task {i} reports the task holding its key");
            continue;
        }
        let t = env.get(e.id);
        assert_eq!(t.payload, (i as u32).to_be_bytes().to_vec(), "task {i}");
        assert_eq!(t.name, format!("job{}", i % 7));
        assert_eq!(t.priority, (i % 5) as i64);
        assert_eq!(t.max_attempts, 1 + i as u32 % 3);
        assert_eq!(t.key, (i % 9 == 0).then(|| format!("k{}", i % 90)));
        assert_eq!(t.batch.as_deref(), (i % 11 == 0).then_some("b"));
    }
    let stored: Vec<i64> =
        out.iter().enumerate().filter(|(i, _)| !(i % 9 == 0 && *i >= 90)).map(|(_, e)| e.id).collect();
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "ids follow input order");
    assert_eq!(env.count("q", Status::Queued), stored.len() as u64);
}

fn claim_leases_and_counts_the_attempt(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 3)).id;
    env.advance(10);
    let got = env.claim_lease("q", "w1", 5, 2_000);
    assert_eq!(got.len(), 1);
    let t = &got[0];
    assert_eq!(t.id, id);
    assert_eq!(t.status, Status::Running);
    assert_eq!(t.attempts, 1);
    assert_eq!(t.worker.as_deref(), Some("w1"));
    assert_eq!(t.lease_until, Some(T0 + 10 + 2_000));
    assert_eq!(t.started_at, Some(T0 + 10));
    assert_eq!(env.get(id), *t, "what claim returns is what is stored");
    assert!(env.claim("q", "w2", 5).is_empty(), "a running task is not claimed twice");
}

fn claim_respects_limit_and_queue(b: Backend) {
    let env = b.open();
    for _ in 0..10 {
        env.add("a");
    }
    env.add("b");
    assert_eq!(env.claim("a", "w", 3).len(), 3);
    assert_eq!(env.claim("a", "w", 100).len(), 7);
    assert!(env.claim("a", "w", 100).is_empty());
    assert!(env.claim("nope", "w", 100).is_empty());
    let b_tasks = env.claim("b", "w", 100);
    assert_eq!(b_tasks.len(), 1);
    assert_eq!(b_tasks[0].queue, "b");
}

fn heartbeat_extends_lease_and_reports_cancel(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 2)).id;
    let other = env.enqueue(attempts("q", 2)).id;
    env.claim_lease("q", "w1", 1, 1_000);
    env.claim_lease("q", "w2", 1, 1_000);
    env.advance(800);
    let hb = |ids: Vec<i64>, worker: &str| {
        env.store.heartbeat(&HeartbeatParams { ids, worker: worker.into(), lease_ms: 1_000, force: false }).unwrap()
    };
    let out = hb(vec![id, other, UNKNOWN, 0], "w1");
    assert_eq!(out.len(), 4);
    assert_eq!((out[0].id, out[0].held, out[0].cancel_requested), (id, true, false));
    assert_eq!((out[1].id, out[1].held), (other, false), "w1 does not hold w2's task");
    assert_eq!((out[2].id, out[2].held), (UNKNOWN, false));
    assert_eq!((out[3].id, out[3].held), (0, false));
    assert_eq!(env.get(id).lease_until, Some(T0 + 1_800));
    assert_eq!(env.get(other).lease_until, Some(T0 + 1_000), "w2's lease untouched");

    // Past the original lease, but the heartbeat moved it: not recovered.
    env.advance(800);
    let recovered = env.store.recover(&RecoverParams::default()).unwrap();
    assert_eq!(recovered, vec![(other, Status::Queued)]);
    assert_eq!(env.get(id).status, Status::Running);

    // A cancel request reaches the worker through its heartbeat.
    assert_eq!(env.cancel(id, None).unwrap(), Status::Running);
    let out = hb(vec![id], "w1");
    assert!(out[0].held && out[0].cancel_requested);
    assert!(env.get(id).cancel_requested);

    // Bad lease lengths are refused.
    for lease_ms in [0, -5, 8 * 24 * 3_600_000] {
        let r = env.store.heartbeat(&HeartbeatParams { ids: vec![id], worker: "w1".into(), lease_ms, force: false });
        assert_invalid(r);
    }
}

fn progress_is_recorded_and_guarded(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    let queued = env.add("q2");
    env.claim_one("q", "w1");
    let progress = |id: i64, worker: &str, progress: f64| {
        env.store
            .progress(&[ProgressParams { id, worker: worker.into(), progress, force: false }])
            .unwrap()
            .pop()
            .unwrap()
    };
    progress(id, "w1", 0.25).unwrap();
    assert_eq!(env.get(id).progress, Some(0.25));
    progress(id, "w1", 1.0).unwrap();
    assert_eq!(env.get(id).progress, Some(1.0));
    assert_lease_lost(progress(id, "w2", 0.5), id, Status::Running);
    for bad in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        assert_invalid(progress(id, "w1", bad));
    }
    assert_eq!(env.get(id).progress, Some(1.0), "refused reports change nothing");
    assert_lease_lost(progress(queued, "w1", 0.5), queued, Status::Queued);
    assert_not_found(progress(UNKNOWN, "w1", 0.5));
    env.complete(id, "w1", b"r").unwrap();
    assert_finished(progress(id, "w1", 0.5), id, Status::Done);
}

fn complete_stores_the_result_once(b: Backend) {
    let env = b.open_with("max_payload=100");
    let id = env.add("q");
    env.claim_one("q", "w1");
    env.advance(50);
    // Too large a result is refused and the task stays running.
    let big = env.complete(id, "w1", &[7u8; 101]);
    assert!(matches!(big, Err(Error::PayloadTooLarge { what: "result", size: 101, limit: 100 })), "{big:?}");
    assert_eq!(env.get(id).status, Status::Running);

    env.complete(id, "w1", &[9u8; 100]).unwrap();
    let t = env.get(id);
    assert_eq!(t.status, Status::Done);
    assert_eq!(t.result.as_deref(), Some(&[9u8; 100][..]));
    assert_eq!(t.finished_at, Some(T0 + 50));
    assert_eq!(t.lease_until, None);
    assert_eq!(t.attempts, 1);
    assert_eq!(t.error, None);
    assert_finished(env.complete(id, "w1", b"again"), id, Status::Done);
    assert_eq!(env.get(id).result.as_deref(), Some(&[9u8; 100][..]), "second complete changed nothing");
    assert_not_found(env.complete(UNKNOWN, "w1", b""));
    assert_not_found(env.complete(-1, "w1", b""));
}

fn complete_by_another_worker_is_lease_lost(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 2)).id;
    let queued = env.add("q2");
    env.claim_lease("q", "w1", 1, 1_000);
    assert_lease_lost(env.complete(id, "w2", b"x"), id, Status::Running);
    assert_lease_lost(env.complete(queued, "w1", b"x"), queued, Status::Queued);
    // After its lease expired and the task was recovered and claimed again
    // by w2, the first worker's late completion is refused.
    env.advance(1_001);
    env.store.recover(&RecoverParams::default()).unwrap();
    assert_lease_lost(env.complete(id, "w1", b"late"), id, Status::Queued);
    env.claim_one("q", "w2");
    assert_lease_lost(env.complete(id, "w1", b"late"), id, Status::Running);
    env.complete(id, "w2", b"ok").unwrap();
    assert_eq!(env.get(id).result.as_deref(), Some(&b"ok"[..]));
}

fn fail_retry_after_requeues_at_that_time(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 3)).id;
    env.claim_one("q", "w1");
    assert_eq!(env.fail(id, "w1", "boom", Retry::After(5_000)).unwrap(), Status::Queued);
    let t = env.get(id);
    assert_eq!(t.status, Status::Queued);
    assert_eq!(t.run_at, T0 + 5_000);
    assert_eq!(t.attempts, 1);
    assert_eq!(t.error.as_deref(), Some("boom"));
    assert_eq!((t.worker, t.lease_until), (None, None));
    assert!(env.claim("q", "w1", 1).is_empty());
    env.advance(4_999);
    assert!(env.claim("q", "w1", 1).is_empty(), "not before its retry time");
    env.advance(1);
    let again = env.claim_one("q", "w2");
    assert_eq!((again.id, again.attempts), (id, 2));
}

fn fail_backoff_exponential_is_exact_then_exhausts(b: Backend) {
    let env = b.open();
    let backoff = Backoff::new(BackoffStrategy::Exponential, 1_000, 2.0, 1_000_000, 0.0).unwrap();
    let id = env.enqueue(NewTask { backoff: Some(backoff), ..attempts("q", 4) }).id;
    let mut delays = Vec::new();
    for attempt in 1..=3u32 {
        let t = env.claim_one("q", "w");
        assert_eq!(t.attempts, attempt);
        let before = env.now();
        assert_eq!(env.fail(id, "w", &format!("err {attempt}"), Retry::Backoff).unwrap(), Status::Queued);
        let t = env.get(id);
        delays.push(t.run_at - before);
        // Just before the backoff ends nothing is claimable.
        env.advance(t.run_at - before - 1);
        assert!(env.claim("q", "w", 1).is_empty());
        env.advance(1);
    }
    assert_eq!(delays, vec![1_000, 2_000, 4_000]);
    env.claim_one("q", "w");
    env.advance(3);
    assert_eq!(env.fail(id, "w", "last", Retry::Backoff).unwrap(), Status::Failed);
    let t = env.get(id);
    assert_eq!(t.status, Status::Failed);
    assert_eq!(t.attempts, 4);
    assert_eq!(t.error.as_deref(), Some("last"));
    assert_eq!(t.finished_at, Some(env.now()));
    assert_eq!(env.count("q", Status::Failed), 1);
    assert!(env.claim("q", "w", 1).is_empty());
}

fn fail_backoff_defaults_to_the_store_policy(b: Backend) {
    // The default policy: exponential from 1 s, doubling, 10% jitter.
    let env = b.open();
    let id = env.enqueue(attempts("q", 3)).id;
    env.claim_one("q", "w");
    env.fail(id, "w", "e", Retry::Backoff).unwrap();
    let d1 = env.get(id).run_at - T0;
    assert!((900..=1_000).contains(&d1), "first default delay {d1}");
    env.advance(d1);
    env.claim_one("q", "w");
    env.fail(id, "w", "e", Retry::Backoff).unwrap();
    let d2 = env.get(id).run_at - env.now();
    assert!((1_800..=2_000).contains(&d2), "second default delay {d2}");
}

fn fail_never_is_final_with_attempts_left(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 5)).id;
    env.claim_one("q", "w");
    assert_eq!(env.fail(id, "w", "fatal", Retry::Never).unwrap(), Status::Failed);
    let t = env.get(id);
    assert_eq!((t.status, t.attempts, t.error.as_deref()), (Status::Failed, 1, Some("fatal")));
    // Retry::After with no attempts left is final too.
    let id2 = env.add("q");
    env.claim_one("q", "w");
    assert_eq!(env.fail(id2, "w", "e", Retry::After(10)).unwrap(), Status::Failed);
}

fn fail_is_guarded(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 3)).id;
    let queued = env.add("q2");
    env.claim_one("q", "w1");
    assert_lease_lost(env.fail(id, "w2", "e", Retry::Backoff), id, Status::Running);
    assert_eq!(env.get(id).attempts, 1, "a refused fail changes nothing");
    assert_eq!(env.get(id).error, None);
    assert_lease_lost(env.fail(queued, "w1", "e", Retry::Backoff), queued, Status::Queued);
    assert_not_found(env.fail(UNKNOWN, "w1", "e", Retry::Backoff));
    env.complete(id, "w1", b"").unwrap();
    assert_finished(env.fail(id, "w1", "e", Retry::Backoff), id, Status::Done);
}

fn cancel_queued_is_immediate(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    env.advance(5);
    assert_eq!(env.cancel(id, None).unwrap(), Status::Cancelled);
    let t = env.get(id);
    assert_eq!(t.status, Status::Cancelled);
    assert_eq!(t.finished_at, Some(T0 + 5));
    assert!(env.claim("q", "w", 10).is_empty(), "a cancelled task is not claimed");
    assert_finished(env.cancel(id, None), id, Status::Cancelled);
    assert_not_found(env.cancel(UNKNOWN, None));
    // A worker acknowledging a cancel of a task it does not hold is refused.
    let q2 = env.add("q");
    assert_lease_lost(env.cancel(q2, Some("w")), q2, Status::Queued);
    assert_eq!(env.get(q2).status, Status::Queued);
}

fn cancel_running_flags_then_worker_acknowledges(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    env.claim_one("q", "w1");
    assert_eq!(env.cancel(id, None).unwrap(), Status::Running);
    let t = env.get(id);
    assert_eq!(t.status, Status::Running);
    assert!(t.cancel_requested);
    assert_lease_lost(env.cancel(id, Some("w2")), id, Status::Running);
    assert_eq!(env.cancel(id, Some("w1")).unwrap(), Status::Cancelled);
    let t = env.get(id);
    assert_eq!((t.status, t.worker.as_deref()), (Status::Cancelled, Some("w1")));
    assert!(t.finished_at.is_some());
    assert_finished(env.complete(id, "w1", b""), id, Status::Cancelled);
    assert_finished(env.cancel(id, Some("w1")), id, Status::Cancelled);
}

fn release_does_not_count_the_attempt(b: Backend) {
    let env = b.open();
    let id = env.add("q"); // a single attempt allowed
    let queued = env.add("q2");
    for _ in 0..3 {
        let t = env.claim_one("q", "w1");
        assert_eq!(t.attempts, 1);
        assert_lease_lost(env.release(id, "w2"), id, Status::Running);
        env.release(id, "w1").unwrap();
        let t = env.get(id);
        assert_eq!((t.status, t.attempts, t.worker, t.lease_until), (Status::Queued, 0, None, None));
    }
    assert_lease_lost(env.release(id, "w1"), id, Status::Queued);
    assert_lease_lost(env.release(queued, "w1"), queued, Status::Queued);
    assert_not_found(env.release(UNKNOWN, "w1"));
    env.claim_one("q", "w1");
    env.complete(id, "w1", b"").unwrap();
    assert_finished(env.release(id, "w1"), id, Status::Done);
}

fn retry_brings_back_failed_cancelled_and_expired(b: Backend) {
    let env = b.open();
    let failed = env.enqueue(attempts("q", 2)).id;
    env.claim_one("q", "w");
    env.fail(failed, "w", "bad", Retry::Never).unwrap();
    let cancelled = env.add("q");
    env.cancel(cancelled, None).unwrap();
    let expired = env.enqueue(NewTask { expires_at: Some(T0 + 100), ..task("q") }).id;
    env.advance(100);
    assert_eq!(env.store.expire().unwrap(), vec![expired]);
    assert_eq!(env.get(expired).status, Status::Expired);

    env.advance(1_000);
    let out = env.store.retry(&[failed, cancelled, expired].map(|id| RetryParams { id })).unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    for id in [failed, cancelled, expired] {
        let t = env.get(id);
        assert_eq!(t.status, Status::Queued, "task {id}");
        assert_eq!(t.attempts, 0, "retry gives fresh attempts");
        assert_eq!(t.run_at, env.now());
        assert_eq!(t.finished_at, None);
        assert_eq!(t.expires_at, None, "a retried task is not expired again at once");
    }
    assert_eq!(env.get(failed).error.as_deref(), Some("bad"), "the last error is kept");
    let mut claimed: Vec<i64> = env.claim("q", "w", 10).iter().map(|t| t.id).collect();
    claimed.sort();
    let mut want = vec![failed, cancelled, expired];
    want.sort();
    assert_eq!(claimed, want);
    for id in want {
        env.complete(id, "w", b"ok").unwrap();
    }
    assert_eq!(env.count("q", Status::Done), 3);
    assert_eq!(env.total(), 3, "retry moved tasks, it did not copy them");
}

fn retry_refuses_unfinished_and_done(b: Backend) {
    let env = b.open();
    let queued = env.add("q");
    let running = env.add("q");
    let done = env.add("q");
    env.claim("q", "w", 3);
    env.release(queued, "w").unwrap();
    env.complete(done, "w", b"").unwrap();
    for (id, status) in [(queued, Status::Queued), (running, Status::Running), (done, Status::Done)] {
        match env.retry(id) {
            Err(Error::InvalidTransition { id: got, status: s, .. }) => {
                assert_eq!((got, s), (id, status));
            }
            other => panic!("retry of a {status} task: {other:?}"),
        }
        assert_eq!(env.get(id).status, status);
    }
    assert_not_found(env.retry(UNKNOWN));
}

fn recover_requeues_expired_leases_then_fails_them(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 2)).id;
    let healthy = env.add("q");
    env.claim_lease("q", "w1", 1, 1_000);
    env.claim_lease("q", "w2", 1, 5_000);
    env.advance(1_000);
    assert!(env.store.recover(&RecoverParams::default()).unwrap().is_empty(), "the lease runs to its last ms");
    env.advance(1);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(id, Status::Queued)]);
    let t = env.get(id);
    assert_eq!((t.status, t.attempts, t.worker), (Status::Queued, 1, None));
    assert!(t.error.as_deref().unwrap_or("").contains("w1"), "error names the lost worker: {:?}", t.error);
    assert_eq!(env.get(healthy).status, Status::Running);
    assert_lease_lost(env.complete(id, "w1", b""), id, Status::Queued);
    assert_lease_lost(env.fail(id, "w1", "e", Retry::Backoff), id, Status::Queued);

    let t = env.claim_lease("q", "w3", 1, 1_000).pop().unwrap();
    assert_eq!((t.id, t.attempts), (id, 2));
    env.advance(1_001);
    // Crashes get RECOVERY_MIN_ATTEMPTS attempts even when the task has fewer.
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(id, Status::Queued)]);
    let t = env.claim_lease("q", "w4", 1, 1_000).pop().unwrap();
    assert_eq!((t.id, t.attempts), (id, ferroq_core::store::RECOVERY_MIN_ATTEMPTS));
    env.advance(1_001);
    let out = env.store.recover(&RecoverParams::default()).unwrap();
    assert_eq!(out, vec![(id, Status::Failed)], "no attempts left: recovered into failed");
    assert_eq!(env.get(id).status, Status::Failed);
    assert_eq!(env.get(healthy).status, Status::Running, "its lease runs to T0 + 5 s");
    assert!(env.store.recover(&RecoverParams::default()).unwrap().is_empty());
}

fn ids_are_never_reused_after_a_purge(b: Backend) {
    let env = b.open();
    let old: Vec<i64> = (0..8).map(|_| env.add("q")).collect();
    for t in env.claim("q", "w", 8) {
        env.complete(t.id, "w", b"").unwrap();
    }
    env.advance(1);
    let purged = env.store.purge(&PurgeParams { finished_before: Some(env.now()) }).unwrap();
    assert_eq!(purged, 8);
    let newer = env.add("q");
    assert!(old.iter().all(|id| newer > *id && !env.exists(*id)), "{newer} after {old:?}");
}

fn recovered_task_keeps_its_place_in_the_queue(b: Backend) {
    let env = b.open();
    let first = env.add("q");
    assert_eq!(env.claim_lease("q", "crashed", 1, 1_000)[0].id, first);
    env.advance(10);
    let later: Vec<i64> = (0..3).map(|_| env.add("q")).collect();
    env.advance(5_000);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(first, Status::Queued)]);
    // It was next once already: it goes before the tasks sent after it.
    let order: Vec<i64> = env.claim("q", "w", 10).iter().map(|t| t.id).collect();
    assert_eq!(order[0], first);
    assert_eq!(order[1..], later[..]);
}

fn recover_by_worker_ignores_the_lease(b: Backend) {
    let env = b.open();
    let ids: Vec<i64> = (0..6).map(|_| env.enqueue(attempts("q", 3)).id).collect();
    let a: Vec<i64> = env.claim_lease("q", "dead", 4, 60_000).iter().map(|t| t.id).collect();
    let live: Vec<i64> = env.claim_lease("q", "alive", 2, 60_000).iter().map(|t| t.id).collect();
    assert_eq!(a.len() + live.len(), ids.len());
    let mut out = env.store.recover(&RecoverParams { worker: Some("dead".into()) }).unwrap();
    out.sort();
    let mut want: Vec<(i64, Status)> = a.iter().map(|id| (*id, Status::Queued)).collect();
    want.sort();
    assert_eq!(out, want);
    for id in &live {
        assert_eq!(env.get(*id).status, Status::Running);
    }
    assert_eq!(env.count("q", Status::Queued), 4);
    assert!(env.store.recover(&RecoverParams { worker: Some("nobody".into()) }).unwrap().is_empty());
}

fn expire_moves_queued_tasks_past_their_deadline(b: Backend) {
    let env = b.open();
    let soon = env.enqueue(NewTask { expires_at: Some(T0 + 1_000), ..task("q") }).id;
    let later = env.enqueue(NewTask { expires_at: Some(T0 + 5_000), ..task("q") }).id;
    let none = env.add("q");
    let running = env.enqueue(NewTask { expires_at: Some(T0 + 1_000), ..task("r") }).id;
    env.claim_one("r", "w");
    env.advance(999);
    assert!(env.store.expire().unwrap().is_empty());
    env.advance(1);
    // Past its deadline a task is not claimable even before expire() runs.
    let claimable: Vec<i64> = env.claim("q", "w", 10).iter().map(|t| t.id).collect();
    assert!(!claimable.contains(&soon), "an expired task was claimed");
    for id in claimable {
        env.release(id, "w").unwrap();
    }
    assert_eq!(env.store.expire().unwrap(), vec![soon]);
    let t = env.get(soon);
    assert_eq!((t.status, t.finished_at, t.attempts), (Status::Expired, Some(T0 + 1_000), 0));
    assert_eq!(env.get(running).status, Status::Running, "a started task does not expire");
    assert_eq!(env.get(later).status, Status::Queued);
    assert_eq!(env.get(none).status, Status::Queued);
    assert!(env.store.expire().unwrap().is_empty());
    assert_finished(env.cancel(soon, None), soon, Status::Expired);
}

fn get_unknown_ids_are_none(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    let got = env.store.get(&[UNKNOWN, id, 0, -1, i64::MAX, id + 1]).unwrap();
    assert_eq!(got.len(), 6);
    assert!(got[0].is_none() && got[2].is_none() && got[3].is_none() && got[4].is_none() && got[5].is_none());
    assert_eq!(got[1].as_ref().map(|t| t.id), Some(id));
}

fn get_by_key_finds_unfinished_and_finished(b: Backend) {
    let env = b.open();
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let ids: Vec<i64> = keys.iter().map(|k| env.enqueue(keyed("q", k)).id).collect();
    let claimed = env.claim("q", "w", 3);
    for t in &claimed {
        env.complete(t.id, "w", b"done").unwrap();
    }
    let mut ask = keys.clone();
    ask.push("missing".into());
    let got = env.store.get_by_key(&GetByKeyParams { queue: "q".into(), keys: ask }).unwrap();
    assert_eq!(got.len(), 9);
    for (i, id) in ids.iter().enumerate() {
        let t = got[i].as_ref().unwrap();
        assert_eq!((t.id, t.key.as_deref()), (*id, Some(keys[i].as_str())));
    }
    assert!(got[8].is_none());
    assert!(env
        .store
        .get_by_key(&GetByKeyParams { queue: "other".into(), keys: keys.clone() })
        .unwrap()
        .iter()
        .all(Option::is_none));
    let done = claimed[0].key.clone().unwrap();
    assert_eq!(
        env.store.get_by_key(&GetByKeyParams { queue: "q".into(), keys: vec![done] }).unwrap()[0]
            .as_ref()
            .unwrap()
            .status,
        Status::Done
    );
}

fn list_filters_by_queue_status_and_batch(b: Backend) {
    let env = b.open();
    let mut all = Vec::new();
    for i in 0..12 {
        let queue = if i % 3 == 0 { "b" } else { "a" };
        let batch = if i % 2 == 0 { Some("even".to_string()) } else { None };
        all.push(env.enqueue(NewTask { batch, ..task(queue) }).id);
    }
    let done: Vec<i64> = env.claim("a", "w", 3).iter().map(|t| t.id).collect();
    for id in &done {
        env.complete(*id, "w", b"").unwrap();
    }
    let list = |p: ListParams| -> Vec<i64> { env.store.list(&p).unwrap().iter().map(|t| t.id).collect() };
    let page = |limit| ListParams { limit, ..Default::default() };
    let everything = list(page(100));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(everything, sorted, "list is in id order and includes finished tasks");
    let in_b = list(ListParams { queue: Some("b".into()), ..page(100) });
    assert_eq!(in_b.len(), 4);
    assert!(in_b.iter().all(|id| env.get(*id).queue == "b"));
    let mut done_sorted = done.clone();
    done_sorted.sort();
    assert_eq!(list(ListParams { status: Some(Status::Done), ..page(100) }), done_sorted);
    assert_eq!(list(ListParams { status: Some(Status::Running), ..page(100) }), Vec::<i64>::new());
    let queued_a = list(ListParams { queue: Some("a".into()), status: Some(Status::Queued), ..page(100) });
    assert_eq!(queued_a.len(), 5);
    let even = list(ListParams { batch: Some("even".into()), ..page(100) });
    assert_eq!(even.len(), 6);
    assert!(even.iter().all(|id| env.get(*id).batch.as_deref() == Some("even")));
    let even_b = list(ListParams { batch: Some("even".into()), queue: Some("b".into()), ..page(100) });
    assert_eq!(even_b.len(), 2);
    assert_eq!(list(page(5)), sorted[..5].to_vec());
    assert_invalid(env.store.list(&page(0)));
    assert_invalid(env.store.list(&page(100_001)));
}

fn list_filters_by_name_and_key(b: Backend) {
    let env = b.open();
    let mut resize = Vec::new();
    for i in 0..9 {
        let name = if i % 3 == 0 { "resize" } else { "crop" };
        let id = env.enqueue(NewTask::new("q", name, b"p".to_vec())).id;
        if name == "resize" {
            resize.push(id);
        }
    }
    let k = env.enqueue(keyed("q", "the-key")).id;
    env.enqueue(keyed("other", "the-key"));
    let done = env.claim("q", "w", 20);
    for t in &done {
        env.complete(t.id, "w", b"").unwrap();
    }
    let list = |p: ListParams| -> Vec<i64> { env.store.list(&p).unwrap().iter().map(|t| t.id).collect() };
    resize.sort();
    assert_eq!(list(ListParams { name: Some("resize".into()), limit: 100, ..Default::default() }), resize);
    assert_eq!(
        list(ListParams { key: Some("the-key".into()), queue: Some("q".into()), limit: 100, ..Default::default() }),
        vec![k]
    );
    assert_eq!(list(ListParams { key: Some("the-key".into()), limit: 100, ..Default::default() }).len(), 2);
    assert!(list(ListParams { name: Some("nothing".into()), limit: 100, ..Default::default() }).is_empty());
    let both = ListParams { name: Some("resize".into()), status: Some(Status::Done), limit: 2, ..Default::default() };
    assert_eq!(list(both), resize[..2].to_vec());
}

fn delete_removes_finished_tasks_and_frees_their_keys(b: Backend) {
    let env = b.open();
    let done = env.enqueue(keyed("q", "k")).id;
    let failed = env.enqueue(attempts("q", 1)).id;
    let running = env.add("q");
    env.claim("q", "w", 3);
    env.complete(done, "w", b"r").unwrap();
    env.fail(failed, "w", "boom", Retry::Backoff).unwrap();
    let queued = env.add("q");
    let out = env.store.delete(&[done, failed, running, queued, UNKNOWN]).unwrap();
    assert!(out[0].is_ok() && out[1].is_ok(), "{out:?}");
    for (r, id, status) in [(&out[2], running, Status::Running), (&out[3], queued, Status::Queued)] {
        match r {
            Err(Error::InvalidTransition { id: got, status: s, .. }) => assert_eq!((*got, *s), (id, status)),
            other => panic!("delete of a {status} task: {other:?}"),
        }
        assert_eq!(env.get(id).status, status);
    }
    assert!(matches!(out[4], Err(Error::NotFound(_))), "{:?}", out[4]);
    assert!(env.store.get(&[done, failed]).unwrap().iter().all(Option::is_none));
    assert!(env.store.delete(&[done]).unwrap()[0].is_err(), "a second delete finds nothing");
    // The key is free again, and the deleted ids are never handed out again.
    let again = env.enqueue(keyed("q", "k")).id;
    assert!(![done, failed, running, queued].contains(&again));
}

fn list_pages_by_after_id_without_gaps(b: Backend) {
    let env = b.open();
    // Mixed routing (keyed and round-robin) spreads tasks unevenly over shards.
    let mut ids = Vec::new();
    for i in 0..37 {
        let t = if i % 4 == 0 { keyed("q", &format!("key-{i}")) } else { task("q") };
        ids.push(env.enqueue(t).id);
    }
    let finished: Vec<i64> = env.claim("q", "w", 9).iter().map(|t| t.id).collect();
    for id in &finished {
        env.complete(*id, "w", b"").unwrap();
    }
    ids.sort();
    for limit in [1u32, 4, 7, 36, 37, 100] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = env.store.list(&ListParams { after_id: after, limit, ..Default::default() }).unwrap();
            assert!(page.len() <= limit as usize);
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().id);
            seen.extend(page.iter().map(|t| t.id));
        }
        assert_eq!(seen, ids, "paging with limit {limit}");
    }
    // Paging within a filter.
    let mut done = Vec::new();
    let mut after = None;
    loop {
        let p = ListParams { status: Some(Status::Done), after_id: after, limit: 2, ..Default::default() };
        let page = env.store.list(&p).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|t| t.id);
        done.extend(page.iter().map(|t| t.id));
    }
    let mut want = finished.clone();
    want.sort();
    assert_eq!(done, want);
}

fn counts_and_unfinished_follow_transitions(b: Backend) {
    let env = b.open();
    assert!(env.store.counts().unwrap().is_empty());
    assert_eq!(env.store.unfinished("a").unwrap(), 0);
    for _ in 0..5 {
        env.enqueue(attempts("a", 2));
    }
    for _ in 0..2 {
        env.add("b");
    }
    let t = env.claim("a", "w", 4);
    env.complete(t[0].id, "w", b"").unwrap();
    env.fail(t[1].id, "w", "e", Retry::Never).unwrap();
    env.cancel(t[2].id, Some("w")).unwrap();
    let counts: Vec<(String, Status, u64)> =
        env.store.counts().unwrap().into_iter().map(|c| (c.queue, c.status, c.count)).collect();
    let want: Vec<(String, Status, u64)> = vec![
        ("a".into(), Status::Queued, 1),
        ("a".into(), Status::Running, 1),
        ("a".into(), Status::Done, 1),
        ("a".into(), Status::Failed, 1),
        ("a".into(), Status::Cancelled, 1),
        ("b".into(), Status::Queued, 2),
    ];
    let mut got = counts.clone();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    assert_eq!(env.store.unfinished("a").unwrap(), 2);
    assert_eq!(env.store.unfinished("b").unwrap(), 2);
    assert_eq!(env.store.unfinished("c").unwrap(), 0);
}

fn purge_removes_tasks_past_retention(b: Backend) {
    let env = b.open_with("retention_s=60");
    let done = env.add("q");
    let short = env.enqueue(NewTask { result_ttl_ms: Some(1_000), ..task("q") }).id;
    let failed = env.add("q");
    let queued = env.add("q");
    let running = env.add("r");
    let ids: Vec<i64> = env.claim("q", "w", 3).iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 3);
    env.claim_one("r", "w");
    env.complete(done, "w", b"").unwrap();
    env.complete(short, "w", b"").unwrap();
    env.fail(failed, "w", "e", Retry::Never).unwrap();
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 0);
    env.advance(999);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 0);
    env.advance(1);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 1, "the task's own TTL");
    assert!(!env.exists(short));
    env.advance(59_000);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 2, "the store's retention");
    assert!(!env.exists(done) && !env.exists(failed));
    // Unfinished tasks are never purged, however old.
    env.advance(365 * 24 * 3_600_000);
    assert_eq!(env.store.purge(&PurgeParams { finished_before: Some(env.now()) }).unwrap(), 0);
    assert!(env.exists(queued) && env.exists(running));
    assert_eq!(env.total(), 2);
}

fn purge_finished_before_keeps_unfinished_and_newer(b: Backend) {
    let env = b.open_with("retention_s=none");
    let old = env.add("q");
    let newer = env.add("q");
    let queued = env.add("q2");
    env.claim("q", "w", 2);
    env.complete(old, "w", b"").unwrap();
    env.advance(10_000);
    env.cancel(newer, Some("w")).unwrap();
    env.advance(1_000_000_000);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 0, "no retention: kept forever");
    let p = PurgeParams { finished_before: Some(T0 + 10_000) };
    assert_eq!(env.store.purge(&p).unwrap(), 1);
    assert!(!env.exists(old));
    assert!(env.exists(newer) && env.exists(queued));
    let p = PurgeParams { finished_before: Some(T0 + 10_001) };
    assert_eq!(env.store.purge(&p).unwrap(), 1);
    assert!(!env.exists(newer) && env.exists(queued));
}

fn listen_data_versions_and_changes(b: Backend) {
    let env = b.open_with("max_payload=100");
    let s = &env.store;
    assert_eq!(s.listen_head().unwrap(), 0);
    assert_eq!(s.listen_get("a").unwrap(), None);
    assert!(s.listen_changes(&ListenChangesParams { since: 0, limit: 10 }).unwrap().is_empty());
    let v1 = s.listen_set(&ListenSetParams { key: "a".into(), value: b"one".to_vec() }).unwrap();
    env.advance(5);
    let v2 = s.listen_set(&ListenSetParams { key: "b".into(), value: b"two".to_vec() }).unwrap();
    let v3 = s.listen_set(&ListenSetParams { key: "a".into(), value: b"three".to_vec() }).unwrap();
    assert!(v1 < v2 && v2 < v3, "versions increase: {v1} {v2} {v3}");
    assert_eq!(s.listen_head().unwrap(), v3);
    let a = s.listen_get("a").unwrap().unwrap();
    assert_eq!((a.version, a.key.as_str(), a.value.as_slice(), a.at), (v3, "a", &b"three"[..], T0 + 5));
    let all = s.listen_changes(&ListenChangesParams { since: 0, limit: 10 }).unwrap();
    let seen: Vec<(i64, &str, &[u8])> = all.iter().map(|c| (c.version, c.key.as_str(), c.value.as_slice())).collect();
    assert_eq!(seen, vec![(v1, "a", &b"one"[..]), (v2, "b", &b"two"[..]), (v3, "a", &b"three"[..])]);
    let after = s.listen_changes(&ListenChangesParams { since: v1, limit: 1 }).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].version, v2);
    assert!(s.listen_changes(&ListenChangesParams { since: v3, limit: 10 }).unwrap().is_empty());
    assert_invalid(s.listen_set(&ListenSetParams { key: "".into(), value: b"x".to_vec() }));
    let big = s.listen_set(&ListenSetParams { key: "a".into(), value: vec![0u8; 101] });
    assert!(matches!(big, Err(Error::PayloadTooLarge { .. })), "{big:?}");
    assert_eq!(s.listen_head().unwrap(), v3, "refused sets store nothing");
}

fn batch_verbs_report_per_item(b: Backend) {
    // One bad item in a batch is reported for that item; the others apply.
    let env = b.open();
    let ids: Vec<i64> = (0..6).map(|_| env.add("q")).collect();
    let claimed = env.claim("q", "w", 6);
    assert_eq!(claimed.len(), 6);
    let mut items: Vec<CompleteParams> = ids
        .iter()
        .map(|id| CompleteParams { id: *id, worker: "w".into(), result: id.to_le_bytes().to_vec(), force: false })
        .collect();
    items[2].worker = "intruder".into();
    items.push(CompleteParams { id: UNKNOWN, worker: "w".into(), result: vec![], force: false });
    let out = env.store.complete(&items).unwrap();
    assert_eq!(out.len(), 7);
    for (i, r) in out.iter().enumerate() {
        match i {
            2 => assert!(matches!(r, Err(Error::LeaseLost { .. })), "{r:?}"),
            6 => assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}"),
            _ => assert!(r.is_ok(), "item {i}: {r:?}"),
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let t = env.get(*id);
        if i == 2 {
            assert_eq!(t.status, Status::Running);
        } else {
            assert_eq!((t.status, t.result), (Status::Done, Some(id.to_le_bytes().to_vec())));
        }
    }
}
