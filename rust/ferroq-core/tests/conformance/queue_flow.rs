//! Time and flow (issue 15), the store side: pausing and resuming a queue,
//! priority aging, and dead-letter routing with its own retention.

use crate::harness::*;
use crate::steer::{options, start};
use ferroq_core::store::{
    claim_rank, ActiveParams, GetByKeyParams, PauseParams, PurgeParams, QueueOptions, RecoverParams, RequeueParams,
    Retry, SetPriorityParams, SetRunAtParams,
};
use ferroq_core::{Error, NewTask, Status, Task};
use std::time::Duration;

crate::conformance!(
    a_paused_queue_takes_sends_but_hands_nothing_out,
    pausing_keeps_the_other_options_and_they_keep_the_pause,
    a_paused_serial_queue_reports_its_running_task_and_starts_none,
    aging_orders_by_priority_and_waiting_time_as_the_rule_says,
    aging_lets_an_old_task_through_a_flood_within_its_bound,
    aging_follows_changes_of_priority_run_at_and_the_queue_option,
    failed_tasks_are_filed_in_the_dead_letter_queue_and_retried_home,
    dead_letters_keep_their_own_retention,
);

fn pause(env: &Env, queue: &str, paused: bool) {
    env.store.set_paused(&PauseParams { queue: queue.into(), paused }).unwrap();
}

fn a_paused_queue_takes_sends_but_hands_nothing_out(b: Backend) {
    let env = b.open();
    let running = env.add("q");
    env.claim_one("q", "w");
    pause(&env, "q", true);
    let waiting: Vec<i64> = (0..3).map(|_| env.add("q")).collect();
    let other = env.add("other");
    assert!(env.claim("q", "w", 10).is_empty(), "a paused queue hands nothing out");
    assert!(env.store.next_run_at("q").unwrap().is_none(), "nothing of it becomes ready by time");
    let p = ferroq_core::store::ClaimParams {
        queue: "q".into(),
        worker: "w".into(),
        limit: 10,
        lease_ms: 30_000,
        resources: None,
        home: None,
    };
    assert!(env.store.claim_wait(&p, Duration::from_millis(20)).unwrap().is_empty());
    match start(&env, waiting[0], "person") {
        Err(Error::QueuePaused { queue }) => assert_eq!(queue, "q"),
        other => panic!("expected QueuePaused, got {other:?}"),
    }
    assert_eq!(env.get(waiting[0]).status, Status::Queued, "a refused start changes nothing");
    let active = ActiveParams { queue: "q".into(), worker: "w2".into(), lease_ms: 30_000 };
    assert_eq!(env.store.active(&active).unwrap().map(|t| t.id), Some(running), "the running task is reported");
    // Running tasks finish as usual; other queues are not affected.
    env.complete(running, "w", b"r").unwrap();
    assert!(env.store.active(&active).unwrap().is_none(), "active starts nothing while paused");
    assert_eq!(env.claim_one("other", "w").id, other);
    assert!(env.store.queue_options("q").unwrap().paused);
    assert_eq!(env.count("q", Status::Queued), 3);
    // Resumed, it drains in its usual order.
    pause(&env, "q", false);
    assert!(!env.store.queue_options("q").unwrap().paused);
    assert_eq!(env.claim("q", "w", 10).iter().map(|t| t.id).collect::<Vec<_>>(), waiting);
    assert_invalid(env.store.set_paused(&PauseParams { queue: String::new(), paused: true }));
}

fn pausing_keeps_the_other_options_and_they_keep_the_pause(b: Backend) {
    let env = b.open();
    let o = QueueOptions {
        queue: "q".into(),
        retention_ms: Some(5_000),
        aging_ms: Some(60_000),
        dead_letter: Some("q.dead".into()),
        dead_retention_ms: Some(86_400_000),
        ..Default::default()
    };
    options(&env, o.clone());
    env.store.set_capacity(&ferroq_core::store::CapacityParams { queue: "q".into(), capacity: Some(9) }).unwrap();
    pause(&env, "q", true);
    assert_eq!(env.store.queue_options("q").unwrap(), QueueOptions { paused: true, ..o.clone() });
    assert_eq!(env.store.capacity("q").unwrap(), Some(9));
    // Setting the options (with `paused: false` in them) keeps the pause.
    let serial = QueueOptions { serial: true, ..o.clone() };
    options(&env, serial.clone());
    assert_eq!(env.store.queue_options("q").unwrap(), QueueOptions { paused: true, ..serial.clone() });
    // A queue with no options but the pause is listed.
    pause(&env, "bare", true);
    let all = env.store.all_queue_options().unwrap();
    assert_eq!(all.iter().map(|o| (o.queue.as_str(), o.paused)).collect::<Vec<_>>(), [("bare", true), ("q", true)]);
    pause(&env, "bare", false);
    pause(&env, "q", false);
    assert_eq!(env.store.queue_options("q").unwrap(), serial);
    assert_eq!(env.store.all_queue_options().unwrap(), vec![serial]);
    for bad in [
        QueueOptions { aging_ms: Some(0), ..o.clone() },
        QueueOptions { dead_letter: Some("q".into()), ..o.clone() },
        QueueOptions { dead_letter: Some(String::new()), ..o.clone() },
        QueueOptions { dead_retention_ms: Some(-1), ..o.clone() },
    ] {
        assert_invalid(env.store.set_queue_options(&bad));
    }
}

fn a_paused_serial_queue_reports_its_running_task_and_starts_none(b: Backend) {
    let env = b.open();
    options(&env, QueueOptions { queue: "s".into(), serial: true, ..Default::default() });
    let first = env.add("s");
    let second = env.add("s");
    let active = ActiveParams { queue: "s".into(), worker: "desk".into(), lease_ms: 30_000 };
    assert_eq!(env.store.active(&active).unwrap().map(|t| t.id), Some(first));
    pause(&env, "s", true);
    assert_eq!(env.store.active(&active).unwrap().map(|t| t.id), Some(first));
    env.complete(first, "desk", b"r").unwrap();
    assert!(env.store.active(&active).unwrap().is_none());
    assert!(env.claim("s", "w", 1).is_empty());
    assert!(matches!(start(&env, second, "desk"), Err(Error::QueuePaused { .. })));
    pause(&env, "s", false);
    assert_eq!(env.store.active(&active).unwrap().map(|t| t.id), Some(second));
}

/// The order claims must follow on a queue with aging step `aging`.
fn expected_order(tasks: &mut [Task], aging: Option<i64>) -> Vec<i64> {
    tasks.sort_by(|a, b| {
        claim_rank(b.priority, b.run_at, aging)
            .cmp(&claim_rank(a.priority, a.run_at, aging))
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
    tasks.iter().map(|t| t.id).collect()
}

fn aging_orders_by_priority_and_waiting_time_as_the_rule_says(b: Backend) {
    let env = b.open();
    let aging = Some(1_000);
    options(&env, QueueOptions { queue: "q".into(), aging_ms: aging, ..Default::default() });
    // Priorities and send times mixed so that rank, run_at and id each decide
    // some pairs; a few extremes check the clamp agrees with the rule.
    let mut ids = Vec::new();
    for i in 0..40_i64 {
        let priority = (i * 7) % 11 - 5;
        ids.push(env.enqueue(prio("q", priority)).id);
        env.advance(((i * 13) % 5) * 400);
    }
    ids.push(env.enqueue(prio("q", i64::MAX)).id);
    ids.push(env.enqueue(prio("q", i64::MIN)).id);
    ids.push(env.enqueue(NewTask { run_at: Some(env.now() - 90_000), ..prio("q", -80) }).id);
    let mut stored: Vec<Task> = ids.iter().map(|id| env.get(*id)).collect();
    let want = expected_order(&mut stored, aging);
    let got: Vec<i64> = env.claim("q", "w", 100).iter().map(|t| t.id).collect();
    assert_eq!(got, want);
    // The same in one batch (multi-row inserts), extremes included.
    options(&env, QueueOptions { queue: "batch".into(), aging_ms: aging, ..Default::default() });
    let mut batch: Vec<NewTask> = (0..70_i64)
        .map(|i| NewTask { run_at: Some(env.now() - (i * 13) % 5 * 400), ..prio("batch", (i * 7) % 11 - 5) })
        .collect();
    batch.push(prio("batch", i64::MAX));
    batch.push(NewTask { run_at: Some(i64::MIN / 2), ..prio("batch", i64::MIN) });
    let ids: Vec<i64> = env.store.enqueue(&batch).unwrap().iter().map(|e| e.id).collect();
    let mut stored: Vec<Task> = ids.iter().map(|id| env.get(*id)).collect();
    let want = expected_order(&mut stored, aging);
    // Claimed a few at a time: each claim must take the best of what is left.
    let mut got = Vec::new();
    while got.len() < want.len() {
        let claimed = env.claim("batch", "w", 3);
        assert!(!claimed.is_empty());
        got.extend(claimed.iter().map(|t| t.id));
    }
    assert_eq!(got, want);
    // Without aging the same sends go in plain priority order.
    let mut plain = Vec::new();
    for i in 0..20_i64 {
        plain.push(env.enqueue(prio("p", (i * 7) % 11 - 5)).id);
        env.advance(700);
    }
    let mut stored: Vec<Task> = plain.iter().map(|id| env.get(*id)).collect();
    let want = expected_order(&mut stored, None);
    assert_eq!(env.claim("p", "w", 100).iter().map(|t| t.id).collect::<Vec<_>>(), want);
}

fn aging_lets_an_old_task_through_a_flood_within_its_bound(b: Backend) {
    let env = b.open();
    let step = 1_000;
    options(&env, QueueOptions { queue: "q".into(), aging_ms: Some(step), ..Default::default() });
    let (low_priority, high) = (0, 5);
    let low = env.enqueue(prio("q", low_priority)).id;
    // Every step, two more high-priority tasks arrive and a worker takes one:
    // the flood never drains, yet the old task gets through.
    let mut waited = None;
    let mut ahead = Vec::new();
    for round in 0..50_i64 {
        env.enqueue(prio("q", high));
        env.enqueue(prio("q", high));
        let t = env.claim_one("q", "w");
        env.complete(t.id, "w", b"").unwrap();
        if t.id == low {
            waited = Some(round);
            break;
        }
        ahead.push(t);
        env.advance(step);
    }
    let rounds = waited.expect("the low-priority task never got through the flood");
    // The documented bound: only work sent less than (q - p + 1) steps after
    // it goes first; here that is the 2 x 5 tasks of the first five steps.
    let bound = (high - low_priority + 1) * step;
    assert!(ahead.iter().all(|t| t.run_at < T0 + bound), "a task sent after the bound went first");
    assert_eq!(rounds, 2 * high, "aging is one level per step, no faster, no slower");
    // The same flood without aging starves it.
    let env = b.open();
    let low = env.enqueue(prio("q", 0)).id;
    for _ in 0..50 {
        env.enqueue(prio("q", high));
        env.enqueue(prio("q", high));
        let t = env.claim_one("q", "w");
        assert_ne!(t.id, low);
        env.complete(t.id, "w", b"").unwrap();
        env.advance(step);
    }
}

fn aging_follows_changes_of_priority_run_at_and_the_queue_option(b: Backend) {
    let env = b.open();
    let old = env.enqueue(NewTask { max_attempts: 3, ..prio("q", 0) }).id;
    env.advance(10_000);
    let new = env.enqueue(prio("q", 3)).id;
    let head = |env: &Env| {
        let t = env.claim_one("q", "w");
        env.release(t.id, "w").unwrap();
        t.id
    };
    assert_eq!(head(&env), new, "no aging: priority first");
    // Turning aging on re-ranks tasks already waiting.
    options(&env, QueueOptions { queue: "q".into(), aging_ms: Some(1_000), ..Default::default() });
    assert_eq!(head(&env), old, "10 s of waiting is worth 10 levels");
    // set_priority and set_run_at re-rank the task they change.
    let p = SetPriorityParams { id: new, priority: 20 };
    env.store.set_priority(&[p]).unwrap().pop().unwrap().unwrap();
    assert_eq!(head(&env), new);
    let r = SetRunAtParams { id: new, run_at: env.now() - 5_000 };
    env.store.set_run_at(&[r]).unwrap().pop().unwrap().unwrap();
    assert_eq!(head(&env), new);
    let r = SetRunAtParams { id: old, run_at: env.now() - 100_000 };
    env.store.set_run_at(&[r]).unwrap().pop().unwrap().unwrap();
    assert_eq!(head(&env), old);
    // A retried attempt is ranked from when it is ready again.
    let t = env.claim_one("q", "w");
    assert_eq!(t.id, old);
    env.fail(old, "w", "boom", Retry::After(0)).unwrap();
    assert_eq!(head(&env), new, "old's wait starts again at its retry");
    // A task put back from `task_done` is ranked from now too.
    let t = env.claim_one("q", "w");
    env.complete(t.id, "w", b"").unwrap();
    env.advance(60_000);
    let fresh = env.enqueue(prio("q", 0)).id;
    env.store.requeue(&[RequeueParams { id: new }]).unwrap().pop().unwrap().unwrap();
    let order: Vec<i64> = env.claim("q", "w", 10).iter().map(|t| t.id).collect();
    assert_eq!(order, [old, new, fresh], "60 s of waiting beat 20 levels; 20 from now beats 0 from now");
    for id in order {
        env.release(id, "w").unwrap();
    }
    // Turning aging off restores plain priority order.
    options(&env, QueueOptions { queue: "q".into(), ..Default::default() });
    let order: Vec<i64> = env.claim("q", "w", 10).iter().map(|t| t.id).collect();
    assert_eq!(order, [new, old, fresh]);
}

fn failed_tasks_are_filed_in_the_dead_letter_queue_and_retried_home(b: Backend) {
    let env = b.open();
    options(&env, QueueOptions { queue: "q".into(), dead_letter: Some("q.dead".into()), ..Default::default() });
    let keyed_id = env.enqueue(NewTask { max_attempts: 2, ..keyed("q", "order-7") }).id;
    let plain = env.add("q");
    let cancelled = env.add("q");
    // Attempts left: retried in its own queue.
    let t = env.claim_one("q", "w");
    assert_eq!(t.id, keyed_id);
    assert_eq!(env.fail(keyed_id, "w", "first", Retry::After(0)).unwrap(), Status::Queued);
    assert_eq!(env.get(keyed_id).queue, "q");
    // Attempts exhausted: filed in the dead-letter queue, still failed.
    let claimed: Vec<i64> = env.claim("q", "w", 2).iter().map(|t| t.id).collect();
    assert_eq!(claimed, [keyed_id, plain]);
    assert_eq!(env.fail(keyed_id, "w", "second", Retry::Backoff).unwrap(), Status::Failed);
    assert_eq!(env.fail(plain, "w", "bad", Retry::Never).unwrap(), Status::Failed);
    for id in [keyed_id, plain] {
        let t = env.get(id);
        assert_eq!((t.queue.as_str(), t.status), ("q.dead", Status::Failed));
    }
    assert_eq!(env.get(keyed_id).error.as_deref(), Some("second"));
    assert_eq!(env.count("q.dead", Status::Failed), 2);
    assert_eq!(env.count("q", Status::Failed), 0);
    // Cancelled tasks are not dead letters.
    env.cancel(cancelled, None).unwrap();
    assert_eq!(env.get(cancelled).queue, "q");
    // A key stays its home queue's: found there, and a resend is idempotent.
    let by_key = GetByKeyParams { queue: "q".into(), keys: vec!["order-7".into()] };
    assert_eq!(env.store.get_by_key(&by_key).unwrap()[0].as_ref().map(|t| t.id), Some(keyed_id));
    let again = env.enqueue(keyed("q", "order-7"));
    assert_eq!((again.id, again.inserted), (keyed_id, false));
    // The same key failing in another queue routed to the same place is stored too.
    options(&env, QueueOptions { queue: "r".into(), dead_letter: Some("q.dead".into()), ..Default::default() });
    let r_id = env.enqueue(keyed("r", "order-7")).id;
    env.claim_one("r", "w");
    assert_eq!(env.fail(r_id, "w", "no", Retry::Never).unwrap(), Status::Failed);
    assert_eq!(env.get(r_id).queue, "q.dead");
    // A retry sends a dead letter home, with fresh attempts.
    env.retry(keyed_id).unwrap();
    let t = env.get(keyed_id);
    assert_eq!((t.queue.as_str(), t.status, t.attempts), ("q", Status::Queued, 0));
    assert_eq!(env.claim_one("q", "w").id, keyed_id);
    env.complete(keyed_id, "w", b"ok").unwrap();
    assert_eq!(env.get(keyed_id).queue, "q", "a done task stays home");
    assert_eq!(env.count("q.dead", Status::Failed), 2);
    // Crashes that use up the attempts route too.
    let crashing = env.add("q");
    for _ in 0..3 {
        env.claim_one("q", "w");
        env.store.recover(&RecoverParams { worker: Some("w".into()) }).unwrap();
    }
    assert_eq!((env.get(crashing).queue.as_str(), env.get(crashing).status), ("q.dead", Status::Failed));
    // Routing off: failures stay in their queue.
    options(&env, QueueOptions { queue: "q".into(), ..Default::default() });
    let stays = env.add("q");
    env.claim_one("q", "w");
    env.fail(stays, "w", "x", Retry::Never).unwrap();
    assert_eq!(env.get(stays).queue, "q");
}

fn dead_letters_keep_their_own_retention(b: Backend) {
    let env = b.open();
    let o = QueueOptions {
        queue: "q".into(),
        retention_ms: Some(1_000),
        dead_letter: Some("q.dead".into()),
        dead_retention_ms: Some(60_000),
        ..Default::default()
    };
    options(&env, o);
    let done = env.add("q");
    let failed = env.add("q");
    let ttl = env.enqueue(NewTask { result_ttl_ms: Some(5_000), ..task("q") }).id;
    env.claim("q", "w", 3);
    env.complete(done, "w", b"r").unwrap();
    env.fail(failed, "w", "x", Retry::Never).unwrap();
    env.fail(ttl, "w", "x", Retry::Never).unwrap();
    env.advance(5_001);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 1);
    assert!(!env.exists(done), "done tasks follow the queue's retention");
    assert!(env.exists(failed) && env.exists(ttl), "dead letters are kept longer, even with a result TTL");
    env.advance(55_000);
    assert_eq!(env.store.purge(&PurgeParams::default()).unwrap(), 2);
    // A purged dead letter frees its key in its home queue.
    let k = env.enqueue(keyed("q", "k")).id;
    env.claim_one("q", "w");
    env.fail(k, "w", "x", Retry::Never).unwrap();
    env.advance(60_001);
    env.store.purge(&PurgeParams::default()).unwrap();
    let again = env.enqueue(keyed("q", "k"));
    assert!(again.inserted);
    // So does one deleted by hand.
    env.claim_one("q", "w");
    env.fail(again.id, "w", "x", Retry::Never).unwrap();
    assert_eq!(env.get(again.id).queue, "q.dead");
    env.store.delete(&[again.id]).unwrap().pop().unwrap().unwrap();
    assert!(env.enqueue(keyed("q", "k")).inserted);
}
