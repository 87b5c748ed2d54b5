//! Steering tasks from outside (issue 12): 64-bit priorities, the by-id
//! verbs and their guards, forced moves, cancels that stick, answer
//! deadlines, queue options and retention, and refused duplicate keys.

use crate::harness::*;
use ferroq_core::store::{
    CompleteParams, EnqueueParams, FailParams, HeartbeatParams, OnDuplicate, OnTimeout, ProgressParams, PurgeParams,
    QueueOptions, RecoverParams, ReleaseParams, RequeueParams, Retry, SetMetadataParams, SetPriorityParams,
    SetRunAtParams, StartParams,
};
use ferroq_core::{Error, NewTask, Status, Task};

/// An id no store in this suite ever hands out.
const UNKNOWN: i64 = 1_000_000_007;

crate::conformance!(
    priorities_of_any_64_bit_integer_order_correctly,
    set_priority_and_run_at_change_queued_tasks_only,
    start_hands_out_a_chosen_task_whatever_its_run_at,
    forced_moves_act_without_the_lease,
    requeue_brings_back_any_finished_task,
    set_metadata_on_any_status_is_validated,
    cancel_while_running_then_lease_expiry_ends_cancelled,
    cancel_while_running_then_dead_worker_ends_cancelled,
    late_completion_of_a_cancelled_task_keeps_the_result_and_ends_cancelled,
    late_fail_and_release_of_a_cancelled_task_end_cancelled,
    cancel_of_a_started_task_sticks,
    answer_deadline_requeues_without_counting_or_expires,
    queue_options_round_trip_and_keep_the_capacity,
    queue_retention_overrides_the_store_default,
    duplicate_key_as_error_refuses_the_whole_batch,
);

/// Starts one task for `worker` with a 30 s lease.
pub fn start(env: &Env, id: i64, worker: &str) -> Result<Task, Error> {
    env.store.start(&[StartParams { id, worker: worker.into(), lease_ms: 30_000 }]).unwrap().pop().unwrap()
}

/// Sets a queue's options.
pub fn options(env: &Env, o: QueueOptions) {
    env.store.set_queue_options(&o).unwrap();
}

fn forced_complete(env: &Env, id: i64, worker: &str, force: bool) -> Result<(), Error> {
    let p = CompleteParams { id, worker: worker.into(), result: b"by hand".to_vec(), force };
    env.store.complete(&[p]).unwrap().pop().unwrap()
}

fn requeue(env: &Env, id: i64) -> Result<(), Error> {
    env.store.requeue(&[RequeueParams { id }]).unwrap().pop().unwrap()
}

#[track_caller]
fn assert_transition<T: std::fmt::Debug>(r: Result<T, Error>, id: i64, now: Status, what: &str) {
    match r {
        Err(Error::InvalidTransition { id: got, status, action }) => {
            assert_eq!((got, status), (id, now));
            assert_eq!(action, what);
        }
        other => panic!("expected InvalidTransition ({what}) on {id} ({now}), got {other:?}"),
    }
}

fn priorities_of_any_64_bit_integer_order_correctly(b: Backend) {
    let env = b.open();
    let big = 1_i64 << 62;
    let stamp = 1_700_000_123_456_i64;
    let prios = [0, -big, big, stamp, i64::MAX, i64::MIN, -1, big - 1];
    let ids: Vec<i64> = prios.iter().map(|p| env.enqueue(prio("q", *p)).id).collect();
    for (id, p) in ids.iter().zip(prios) {
        assert_eq!(env.get(*id).priority, p, "stored exactly");
    }
    let mut want: Vec<(i64, i64)> = prios.iter().copied().zip(ids.iter().copied()).collect();
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let got: Vec<i64> = (0..prios.len()).map(|_| env.claim_one("q", "w").priority).collect();
    assert_eq!(got, want.iter().map(|w| w.0).collect::<Vec<_>>(), "highest first");
    // A batch claim orders them the same.
    let env = b.open();
    let ids: Vec<i64> = env.store.enqueue(&prios.map(|p| prio("q", p))).unwrap().iter().map(|e| e.id).collect();
    let batch: Vec<i64> = env.claim("q", "w", 100).iter().map(|t| t.priority).collect();
    assert_eq!(batch, want.iter().map(|w| w.0).collect::<Vec<_>>());
    assert_eq!(ids.len(), prios.len());
}

fn set_priority_and_run_at_change_queued_tasks_only(b: Backend) {
    let env = b.open();
    let (a, c) = (env.add("q"), env.add("q"));
    let set_prio = |id, priority| env.store.set_priority(&[SetPriorityParams { id, priority }]).unwrap().pop().unwrap();
    let set_run = |id, run_at| env.store.set_run_at(&[SetRunAtParams { id, run_at }]).unwrap().pop().unwrap();
    set_prio(c, 1_i64 << 40).unwrap();
    assert_eq!(env.get(c).priority, 1 << 40);
    set_run(a, T0 + 60_000).unwrap();
    assert_eq!(env.get(a).run_at, T0 + 60_000);
    assert_eq!(env.claim_one("q", "w").id, c, "raised above a, which is delayed anyway");
    assert!(env.claim("q", "w", 1).is_empty(), "a waits for its new run_at");
    set_run(a, T0).unwrap();
    assert_eq!(env.claim_one("q", "w").id, a, "brought forward");
    // Guards: running, finished, unknown.
    assert_transition(set_prio(a, 5), a, Status::Running, "set the priority of");
    assert_transition(set_run(a, T0), a, Status::Running, "set the run_at of");
    env.complete(a, "w", b"r").unwrap();
    assert_finished(set_prio(a, 5), a, Status::Done);
    assert_finished(set_run(a, T0), a, Status::Done);
    assert_not_found(set_prio(UNKNOWN, 1));
    assert_not_found(set_run(UNKNOWN, T0));
}

fn start_hands_out_a_chosen_task_whatever_its_run_at(b: Backend) {
    let env = b.open();
    let first = env.add("q");
    let later = env.enqueue(NewTask { run_at: Some(T0 + 3_600_000), ..task("q") }).id;
    let t = start(&env, later, "person").unwrap();
    assert_eq!((t.id, t.status, t.worker.as_deref()), (later, Status::Running, Some("person")));
    assert_eq!((t.attempts, t.lease_until, t.started_at), (1, Some(T0 + 30_000), Some(T0)));
    assert_eq!(env.get(later).status, Status::Running);
    assert_eq!(env.claim_one("q", "w").id, first, "the started task is not claimed again");
    // Guards.
    assert_transition(start(&env, later, "other"), later, Status::Running, "start");
    env.complete(later, "person", b"answer").unwrap();
    assert_finished(start(&env, later, "other"), later, Status::Done);
    assert_not_found(start(&env, UNKNOWN, "w"));
    let q = env.add("q");
    assert_invalid(start(&env, q, ""));
    let bad = env.store.start(&[StartParams { id: q, worker: "w".into(), lease_ms: 0 }]).unwrap().pop().unwrap();
    assert_invalid(bad);
    assert_eq!(env.get(q).status, Status::Queued, "a refused start changes nothing");
}

fn forced_moves_act_without_the_lease(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    env.claim_one("q", "w1");
    // Without force, another worker is refused as before.
    assert_lease_lost(forced_complete(&env, id, "operator", false), id, Status::Running);
    let hb = |force| {
        let p = HeartbeatParams { ids: vec![id], worker: "operator".into(), lease_ms: 90_000, force };
        env.store.heartbeat(&p).unwrap()[0]
    };
    assert!(!hb(false).held);
    assert!(hb(true).held, "a forced heartbeat extends anyone's lease");
    assert_eq!(env.get(id).lease_until, Some(T0 + 90_000));
    let progress = |force| {
        let p = ProgressParams { id, worker: "operator".into(), progress: 0.5, force };
        env.store.progress(&[p]).unwrap().pop().unwrap()
    };
    assert_lease_lost(progress(false), id, Status::Running);
    progress(true).unwrap();
    assert_eq!(env.get(id).progress, Some(0.5));
    forced_complete(&env, id, "operator", true).unwrap();
    let t = env.get(id);
    assert_eq!((t.status, t.result.as_deref()), (Status::Done, Some(&b"by hand"[..])));
    assert_finished(forced_complete(&env, id, "operator", true), id, Status::Done);
    // Fail and release by force.
    let f = env.enqueue(attempts("q", 2)).id;
    env.claim_one("q", "w1");
    let fail = |force, retry| {
        let p = FailParams { id: f, worker: "operator".into(), error: "no".into(), retry, force };
        env.store.fail(&[p]).unwrap().pop().unwrap()
    };
    assert_lease_lost(fail(false, Retry::After(0)), f, Status::Running);
    assert_eq!(fail(true, Retry::After(0)).unwrap(), Status::Queued, "attempts left: requeued");
    env.claim_one("q", "w2");
    assert_eq!(fail(true, Retry::Backoff).unwrap(), Status::Failed, "attempts spent");
    let r = env.add("q");
    env.claim_one("q", "w1");
    let release = |force| {
        let p = ReleaseParams { id: r, worker: "operator".into(), force };
        env.store.release(&[p]).unwrap().pop().unwrap()
    };
    assert_lease_lost(release(false), r, Status::Running);
    release(true).unwrap();
    let t = env.get(r);
    assert_eq!((t.status, t.attempts, t.worker), (Status::Queued, 0, None));
    // Forced moves still need a running task.
    assert_transition(forced_complete(&env, r, "operator", true), r, Status::Queued, "complete");
    assert_transition(release(true), r, Status::Queued, "release");
    assert_not_found(forced_complete(&env, UNKNOWN, "operator", true));
}

fn requeue_brings_back_any_finished_task(b: Backend) {
    let env = b.open();
    let done = env.add("q");
    env.claim_one("q", "w");
    env.complete(done, "w", b"old").unwrap();
    requeue(&env, done).unwrap();
    let t = env.get(done);
    assert_eq!((t.status, t.attempts, t.result, t.run_at), (Status::Queued, 0, None, T0));
    assert_eq!(env.claim_one("q", "w").id, done, "it runs again");
    env.fail(done, "w", "boom", Retry::Never).unwrap();
    requeue(&env, done).unwrap();
    assert_eq!(env.get(done).status, Status::Queued);
    env.cancel(done, None).unwrap();
    requeue(&env, done).unwrap();
    let exp = env.enqueue(NewTask { expires_at: Some(T0 + 10), ..task("x") }).id;
    env.advance(20);
    assert_eq!(env.store.expire().unwrap(), vec![exp]);
    requeue(&env, exp).unwrap();
    assert_eq!(env.get(exp).status, Status::Queued);
    // Guards.
    assert_transition(requeue(&env, done), done, Status::Queued, "requeue");
    env.claim_one("q", "w");
    assert_transition(requeue(&env, done), done, Status::Running, "requeue");
    assert_not_found(requeue(&env, UNKNOWN));
    // retry keeps refusing done tasks.
    env.complete(done, "w", b"r").unwrap();
    assert!(matches!(env.retry(done), Err(Error::InvalidTransition { status: Status::Done, .. })));
}

fn set_metadata_on_any_status_is_validated(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    let set = |id, m: Option<&str>| {
        let p = SetMetadataParams { id, metadata: m.map(String::from) };
        env.store.set_metadata(&[p]).unwrap().pop().unwrap()
    };
    set(id, Some(r#"{"step": 1}"#)).unwrap();
    assert_eq!(env.get(id).metadata.as_deref(), Some(r#"{"step": 1}"#));
    env.claim_one("q", "w");
    set(id, Some(r#"{"step": 2}"#)).unwrap();
    assert_eq!(env.get(id).metadata.as_deref(), Some(r#"{"step": 2}"#));
    env.complete(id, "w", b"r").unwrap();
    set(id, Some("[1, 2]")).unwrap();
    assert_eq!(env.get(id).metadata.as_deref(), Some("[1, 2]"));
    set(id, None).unwrap();
    assert_eq!(env.get(id).metadata, None);
    assert_invalid(set(id, Some("not json")));
    let big = format!("\"{}\"", "x".repeat(70_000));
    assert!(matches!(set(id, Some(&big)), Err(Error::PayloadTooLarge { what: "metadata", .. })));
    assert_eq!(env.get(id).metadata, None, "refused metadata is not stored");
    assert_not_found(set(UNKNOWN, Some("{}")));
}

fn cancel_while_running_then_lease_expiry_ends_cancelled(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 5)).id;
    env.claim_lease("q", "w", 1, 1_000);
    assert_eq!(env.cancel(id, None).unwrap(), Status::Running, "flagged for its worker");
    env.advance(1_001);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(id, Status::Cancelled)]);
    let t = env.get(id);
    assert_eq!((t.status, t.error.as_deref()), (Status::Cancelled, Some("cancelled")));
    assert!(env.claim("q", "w2", 10).is_empty(), "never runs again");
    assert!(env.store.recover(&RecoverParams::default()).unwrap().is_empty());
}

fn cancel_while_running_then_dead_worker_ends_cancelled(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 5)).id;
    let other = env.add("q");
    env.claim("q", "dead", 2);
    assert_eq!(env.cancel(id, None).unwrap(), Status::Running);
    let mut got = env.store.recover(&RecoverParams { worker: Some("dead".into()) }).unwrap();
    got.sort();
    assert_eq!(got, vec![(id, Status::Cancelled), (other, Status::Queued)]);
    assert_eq!(env.claim_one("q", "w").id, other, "only the uncancelled one runs again");
}

fn late_completion_of_a_cancelled_task_keeps_the_result_and_ends_cancelled(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    env.claim_one("q", "w");
    env.cancel(id, None).unwrap();
    env.complete(id, "w", b"late answer").unwrap();
    let t = env.get(id);
    assert_eq!(t.status, Status::Cancelled, "a cancel sticks");
    assert_eq!(t.result.as_deref(), Some(&b"late answer"[..]), "the late result is kept");
    assert_finished(env.complete(id, "w", b"again"), id, Status::Cancelled);
}

fn late_fail_and_release_of_a_cancelled_task_end_cancelled(b: Backend) {
    let env = b.open();
    let f = env.enqueue(attempts("q", 5)).id;
    env.claim_one("q", "w");
    env.cancel(f, None).unwrap();
    assert_eq!(env.fail(f, "w", "interrupted", Retry::After(0)).unwrap(), Status::Cancelled);
    assert_eq!(env.get(f).status, Status::Cancelled);
    let r = env.add("q");
    env.claim_one("q", "w");
    env.cancel(r, None).unwrap();
    env.release(r, "w").unwrap();
    assert_eq!(env.get(r).status, Status::Cancelled, "a released task whose cancel was asked is not requeued");
    assert!(env.claim("q", "w", 10).is_empty());
}

fn cancel_of_a_started_task_sticks(b: Backend) {
    let env = b.open();
    let id = env.enqueue(attempts("q", 5)).id;
    let t = start(&env, id, "person").unwrap();
    assert_eq!(t.status, Status::Running);
    assert_eq!(env.cancel(id, None).unwrap(), Status::Running);
    env.advance(30_001);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(id, Status::Cancelled)]);
    assert!(env.claim("q", "w", 1).is_empty());
}

fn answer_deadline_requeues_without_counting_or_expires(b: Backend) {
    let env = b.open();
    options(&env, QueueOptions { queue: "ask".into(), answer_timeout_ms: Some(5_000), ..Default::default() });
    let id = env.add("ask");
    let t = env.claim_lease("ask", "page", 1, 600_000).pop().unwrap();
    assert_eq!(t.lease_until, Some(T0 + 5_000), "the deadline is the lease; remaining time = lease_until - now");
    env.advance(4_000);
    let p = HeartbeatParams { ids: vec![id], worker: "page".into(), lease_ms: 5_000, force: false };
    assert!(env.store.heartbeat(&p).unwrap()[0].held);
    assert_eq!(env.get(id).lease_until, Some(T0 + 9_000), "a heartbeat extends it");
    env.advance(5_001);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(id, Status::Queued)]);
    let t = env.get(id);
    assert_eq!((t.status, t.attempts, t.error.as_deref()), (Status::Queued, 0, Some("answer deadline passed")));
    // Started tasks get the deadline too; the expire policy ends them.
    options(
        &env,
        QueueOptions {
            queue: "ask".into(),
            answer_timeout_ms: Some(2_000),
            on_timeout: OnTimeout::Expire,
            ..Default::default()
        },
    );
    let now = env.now();
    assert_eq!(start(&env, id, "page").unwrap().lease_until, Some(now + 2_000));
    env.advance(2_001);
    assert_eq!(env.store.recover(&RecoverParams::default()).unwrap(), vec![(id, Status::Expired)]);
    assert_eq!(env.get(id).status, Status::Expired);
    // A worker declared dead is a crash, deadline or not: requeued, counted.
    let other = env.add("ask");
    env.claim_one("ask", "dead");
    assert_eq!(
        env.store.recover(&RecoverParams { worker: Some("dead".into()) }).unwrap(),
        vec![(other, Status::Queued)]
    );
    assert_eq!(env.get(other).attempts, 1);
}

fn queue_options_round_trip_and_keep_the_capacity(b: Backend) {
    let env = b.open();
    let defaults = QueueOptions { queue: "q".into(), ..Default::default() };
    assert_eq!(env.store.queue_options("q").unwrap(), defaults);
    assert!(env.store.all_queue_options().unwrap().is_empty());
    let cap = |c| ferroq_core::store::CapacityParams { queue: "q".into(), capacity: c };
    env.store.set_capacity(&cap(Some(10))).unwrap();
    assert!(env.store.all_queue_options().unwrap().is_empty(), "a capacity alone is not an option");
    let o = QueueOptions {
        queue: "q".into(),
        serial: true,
        answer_timeout_ms: Some(240_000),
        on_timeout: OnTimeout::Expire,
        retention_ms: Some(10_000),
        ..Default::default()
    };
    options(&env, o.clone());
    let b_opts = QueueOptions { queue: "b".into(), serial: true, ..Default::default() };
    options(&env, b_opts.clone());
    assert_eq!(env.store.queue_options("q").unwrap(), o);
    assert_eq!(env.store.all_queue_options().unwrap(), vec![b_opts, o.clone()]);
    assert_eq!(env.store.capacity("q").unwrap(), Some(10), "options keep the capacity");
    env.store.set_capacity(&cap(None)).unwrap();
    assert_eq!(env.store.queue_options("q").unwrap(), o, "removing the capacity keeps the options");
    assert_eq!(env.store.capacity("q").unwrap(), None);
    env.enqueue(task("q"));
    // Back to the defaults.
    options(&env, defaults.clone());
    assert_eq!(env.store.queue_options("q").unwrap(), defaults);
    for bad in [
        QueueOptions { queue: String::new(), ..Default::default() },
        QueueOptions { answer_timeout_ms: Some(0), ..defaults.clone() },
        QueueOptions { retention_ms: Some(-5), ..defaults.clone() },
    ] {
        assert_invalid(env.store.set_queue_options(&bad));
    }
}

fn queue_retention_overrides_the_store_default(b: Backend) {
    let env = b.open();
    options(&env, QueueOptions { queue: "prompts".into(), retention_ms: Some(10_000), ..Default::default() });
    let kept_short = env.add("prompts");
    let own_ttl = env.enqueue(NewTask { result_ttl_ms: Some(60_000), ..task("prompts") }).id;
    let default = env.add("other");
    for q in ["prompts", "prompts", "other"] {
        let t = env.claim_one(q, "w");
        env.complete(t.id, "w", b"r").unwrap();
    }
    env.advance(9_000);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 0, "kept for pollers");
    env.advance(1_001);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 1);
    assert!(!env.exists(kept_short), "the queue's retention");
    assert!(env.exists(own_ttl), "a task's own result TTL comes first");
    assert!(env.exists(default), "other queues keep the store default");
}

fn duplicate_key_as_error_refuses_the_whole_batch(b: Backend) {
    let env = b.open();
    let first = env.enqueue(keyed("q", "user-1")).id;
    let strict = |tasks: &[NewTask]| env.store.enqueue_with(&EnqueueParams { tasks, on_duplicate: OnDuplicate::Error });
    let batch = [keyed("q", "user-2"), task("q"), keyed("q", "user-1"), keyed("q", "user-3")];
    match strict(&batch) {
        Err(Error::DuplicateKey { queue, key, id }) => {
            assert_eq!((queue.as_str(), key.as_str(), id), ("q", "user-1", Some(first)));
        }
        other => panic!("expected DuplicateKey, got {other:?}"),
    }
    assert_eq!(env.total(), 1, "nothing of the batch was stored");
    match strict(&[keyed("q", "a"), keyed("q", "a")]) {
        Err(Error::DuplicateKey { key, id: None, .. }) => assert_eq!(key, "a"),
        other => panic!("expected DuplicateKey within the batch, got {other:?}"),
    }
    assert_eq!(env.total(), 1);
    // A key finished long ago is still taken (until purged).
    env.claim_one("q", "w");
    env.complete(first, "w", b"r").unwrap();
    assert!(matches!(strict(&[keyed("q", "user-1")]), Err(Error::DuplicateKey { id: Some(i), .. }) if i == first));
    // Without a duplicate it stores everything, as a normal enqueue.
    let ok = strict(&[keyed("q", "user-2"), task("q"), keyed("r", "user-1")]).unwrap();
    assert!(ok.iter().all(|e| e.inserted));
    assert_eq!(env.total(), 4);
    assert_eq!(env.get(ok[0].id).key.as_deref(), Some("user-2"));
    // The default stays idempotent.
    let again =
        env.store.enqueue_with(&EnqueueParams { tasks: &[keyed("q", "user-2")], on_duplicate: OnDuplicate::Existing });
    assert_eq!(again.unwrap()[0], ferroq_core::store::Enqueued { id: ok[0].id, inserted: false });
    // Bad input is still InvalidArgument, before any key is looked at.
    assert_invalid(strict(&[keyed("q", "")]));
}

/// A PostgreSQL store of schema version 1 (32-bit priorities, no queue
/// options) is migrated when opened: its tasks stay, and priorities of
/// any 64-bit integer work afterwards.
#[test]
fn postgres_store_of_schema_1_is_migrated() {
    if let Some(why) = Backend::Postgres.unavailable() {
        eprintln!("{why}");
        return;
    }
    let env = Backend::Postgres.open();
    let old = env.enqueue(prio("q", 7)).id;
    env.store.set_capacity(&ferroq_core::store::CapacityParams { queue: "q".into(), capacity: Some(50) }).unwrap();
    let schema = env.pg_schema.clone().unwrap();
    let mut admin = ::postgres::Client::connect(&std::env::var(PG_URL_VAR).unwrap(), ::postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "SET search_path = {schema};
             ALTER TABLE task ALTER COLUMN priority TYPE integer;
             ALTER TABLE task_done ALTER COLUMN priority TYPE integer;
             DROP INDEX task_ready; ALTER TABLE task DROP COLUMN claim_rank;
             CREATE INDEX task_ready ON task (queue, priority DESC, run_at, id) WHERE status = 0;
             DROP INDEX task_done_by_key; ALTER TABLE task_done DROP COLUMN origin;
             CREATE INDEX task_done_by_key ON task_done (queue, key) WHERE key IS NOT NULL;
             DROP FUNCTION ferroq_rank(bigint, bigint, bigint);
             ALTER TABLE queue_setting DROP COLUMN paused, DROP COLUMN aging_ms, DROP COLUMN dead_letter,
                 DROP COLUMN dead_retention_ms;
             ALTER TABLE queue_setting DROP COLUMN serial, DROP COLUMN answer_timeout_ms,
                 DROP COLUMN on_timeout, DROP COLUMN retention_ms;
             DROP TRIGGER task_finished_settle ON task_done; DROP FUNCTION settle_dependents();
             DROP FUNCTION settle_waiting(bigint[]); DROP TABLE task_dep;
             UPDATE meta SET value = '1' WHERE name = 'schema_version';"
        ))
        .unwrap();
    let store = ferroq_core::open_with_clock(&env.url, env.clock.clone()).unwrap();
    assert_eq!(store.get(&[old]).unwrap()[0].as_ref().unwrap().priority, 7);
    assert_eq!(store.capacity("q").unwrap(), Some(50));
    let big = store.enqueue(&[prio("q", 1 << 62)]).unwrap()[0].id;
    assert_eq!(store.get(&[big]).unwrap()[0].as_ref().unwrap().priority, 1 << 62);
    store.set_queue_options(&QueueOptions { queue: "q".into(), serial: true, ..Default::default() }).unwrap();
    assert!(store.queue_options("q").unwrap().serial);
    // The ready index is on the claim rank now, and aging works.
    store.set_queue_options(&QueueOptions { queue: "q".into(), aging_ms: Some(1_000), ..Default::default() }).unwrap();
    let claim = |n| ferroq_core::store::ClaimParams {
        queue: "q".into(),
        worker: "w".into(),
        limit: n,
        lease_ms: 30_000,
        resources: None,
        home: None,
    };
    let order: Vec<i64> = store.claim(&claim(10)).unwrap().iter().map(|t| t.id).collect();
    assert_eq!(order, [big, old]);
    let version: String =
        admin.query_one(&format!("SELECT value FROM {schema}.meta WHERE name = 'schema_version'"), &[]).unwrap().get(0);
    assert_eq!(version, "4");
    // Migrated to the latest version too: flows work.
    use ferroq_core::store::{Dep, FlowTask};
    let got = store.enqueue_flow(&[FlowTask { task: task("q"), after: vec![Dep::Task(old)] }]).unwrap();
    assert_eq!(store.get(&[got[0].id]).unwrap()[0].as_ref().unwrap().status, Status::Waiting);
}
