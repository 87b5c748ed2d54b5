//! Which task runs next: priority, then run_at, then enqueue order, across
//! shards; delayed tasks; idempotent keys.

use crate::harness::*;
use ferroq_core::store::{GetByKeyParams, PurgeParams};
use ferroq_core::{NewTask, Status, Task};

crate::conformance!(
    priority_then_run_at_then_enqueue_order,
    claim_of_n_is_the_globally_best_n,
    equal_priority_tasks_all_get_their_turn,
    ids_follow_enqueue_order_whatever_the_routing,
    delayed_tasks_wait_for_run_at,
    next_run_at_ignores_tasks_that_can_never_run,
    same_key_same_queue_is_the_same_task,
    same_key_in_another_queue_is_a_new_task,
    duplicate_keys_inside_one_batch,
    big_keyed_batch_stores_each_key_once,
    key_stays_taken_until_the_task_is_purged,
);

/// The tasks of `ids`, sorted the way the store must claim them.
fn best_first(env: &Env, ids: &[i64]) -> Vec<i64> {
    let mut tasks: Vec<Task> = ids.iter().map(|id| env.get(*id)).collect();
    tasks.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)).then(a.id.cmp(&b.id)));
    tasks.iter().map(|t| t.id).collect()
}

fn priority_then_run_at_then_enqueue_order(b: Backend) {
    let env = b.open();
    // (priority, run_at offset) in enqueue order, on two queues: one is
    // drained a task at a time, the other in one claim.
    let spec = [(0, 0), (5, 0), (-3, 0), (5, -1_000), (10, 0), (5, 0), (0, -10)];
    let mut ids = std::collections::HashMap::new();
    for queue in ["one", "all"] {
        let v: Vec<i64> =
            spec.iter().map(|&(p, dt)| env.enqueue(NewTask { run_at: Some(T0 + dt), ..prio(queue, p) }).id).collect();
        ids.insert(queue, v);
    }
    // e(10), d(5, older run_at), b(5), f(5, enqueued after b), g(0, older), a(0), c(-3)
    let order = [4, 3, 1, 5, 6, 0, 2];
    let want = |queue: &str| -> Vec<i64> { order.iter().map(|&i| ids[queue][i]).collect() };
    let one: Vec<i64> = (0..spec.len()).map(|_| env.claim_one("one", "w").id).collect();
    assert_eq!(one, want("one"));
    let all: Vec<i64> = env.claim("all", "w", 100).iter().map(|t| t.id).collect();
    assert_eq!(all, want("all"), "a batch claim is returned in claim order");
}

fn claim_of_n_is_the_globally_best_n(b: Backend) {
    let env = b.open();
    // Round-robin routing puts task i on shard i % shards: on 4 shards the
    // ten best tasks all sit on shard 2, so a claim that took its share
    // from each shard would be wrong.
    let ids: Vec<i64> = (0..40)
        .map(|i| {
            let p = if i % 4 == 2 { 9 } else { i % 3 };
            env.enqueue(prio("q", p)).id
        })
        .collect();
    let want = best_first(&env, &ids);
    let first: Vec<i64> = env.claim("q", "w", 10).iter().map(|t| t.id).collect();
    assert_eq!(first, want[..10].to_vec());
    assert!(first.iter().all(|id| env.get(*id).priority == 9));
    let next: Vec<i64> = env.claim("q", "w", 7).iter().map(|t| t.id).collect();
    assert_eq!(next, want[10..17].to_vec());
    // Released tasks come back at their place in the order.
    env.release(first[3], "w").unwrap();
    assert_eq!(env.claim_one("q", "w2").id, first[3]);
    let rest: Vec<i64> = env.claim("q", "w", 100).iter().map(|t| t.id).collect();
    assert_eq!(rest, want[17..].to_vec());
}

fn equal_priority_tasks_all_get_their_turn(b: Backend) {
    let env = b.open();
    // Enqueued one by one: round robin spreads them over every shard.
    let ids: Vec<i64> = (0..12).map(|_| env.add("q")).collect();
    let one_by_one: Vec<i64> = (0..6).map(|_| env.claim_one("q", "w").id).collect();
    assert_eq!(one_by_one, ids[..6].to_vec(), "FIFO within a priority, across shards");
    let batch: Vec<i64> = env.claim("q", "w", 3).iter().map(|t| t.id).collect();
    assert_eq!(batch, ids[6..9].to_vec());
    // Keyed tasks land on their key's shard; later tasks on any shard are
    // still reached.
    let keyed_ids: Vec<i64> = (0..8).map(|i| env.enqueue(keyed("q", &format!("k{i}"))).id).collect();
    env.advance(1);
    let late: Vec<i64> = (0..4).map(|_| env.add("q")).collect();
    let mut got: Vec<i64> = Vec::new();
    for _ in 0..20 {
        let c = env.claim("q", "w", 2);
        if c.is_empty() {
            break;
        }
        got.extend(c.iter().map(|t| t.id));
    }
    assert_eq!(got.len(), 3 + 8 + 4, "every queued task was claimed");
    let mut want: Vec<i64> = ids[9..].iter().chain(&keyed_ids).copied().collect();
    want.sort();
    let mut head = got[..11].to_vec();
    head.sort();
    assert_eq!(head, want, "older run_at first");
    assert_eq!(got[11..].to_vec(), late, "then the later tasks, in enqueue order");
}

fn ids_follow_enqueue_order_whatever_the_routing(b: Backend) {
    let env = b.open();
    let n = b.shards() as i64;
    // Keyed tasks land where their key hashes; enqueue them until the
    // shards hold different numbers of tasks.
    let mut per_shard = vec![0; n as usize];
    for i in 0..200 {
        let id = env.enqueue(keyed("skew", &format!("key-{i}"))).id;
        per_shard[(id % n) as usize] += 1;
        if i >= 4 && per_shard.iter().min() != per_shard.iter().max() {
            break;
        }
    }
    assert!(n == 1 || per_shard.iter().min() != per_shard.iter().max(), "{per_shard:?}");
    // Then, all in the same millisecond: one batch of mixed tasks, and
    // single tasks. Same priority and run_at: claim order is enqueue order.
    let batch: Vec<NewTask> =
        (0..30).map(|i| if i % 3 == 0 { keyed("q", &format!("b{i}")) } else { task("q") }).collect();
    let mut want: Vec<i64> = env.store.enqueue(&batch).unwrap().iter().map(|e| e.id).collect();
    want.extend((0..8).map(|_| env.add("q")));
    want.push(env.enqueue(keyed("q", "last")).id);
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(sorted, want, "ids increase in enqueue order");
    let got: Vec<i64> = env.claim("q", "w", 100).iter().map(|t| t.id).collect();
    assert_eq!(got, want);
}

fn delayed_tasks_wait_for_run_at(b: Backend) {
    let env = b.open();
    let delayed = env.enqueue(NewTask { run_at: Some(T0 + 10_000), ..prio("q", 100) }).id;
    assert!(env.claim("q", "w", 10).is_empty());
    assert_eq!(env.store.next_run_at("q").unwrap(), Some(T0 + 10_000));
    assert_eq!(env.store.next_run_at("other").unwrap(), None);
    // A ready task of lower priority is not held back by the delayed one.
    let ready = env.enqueue(prio("q", 0)).id;
    assert_eq!(env.store.next_run_at("q").unwrap(), Some(T0));
    assert_eq!(env.claim_one("q", "w").id, ready);
    env.advance(9_999);
    assert!(env.claim("q", "w", 10).is_empty());
    env.advance(1);
    let t = env.claim_one("q", "w");
    assert_eq!((t.id, t.attempts), (delayed, 1));
    assert_eq!(env.store.next_run_at("q").unwrap(), None);
}

fn next_run_at_ignores_tasks_that_can_never_run(b: Backend) {
    // claim_wait sleeps until next_run_at: a task past its deadline (not
    // yet moved to expired) must not make it wake at once, over and over.
    let env = b.open();
    env.enqueue(NewTask { expires_at: Some(T0 + 10), ..task("q") });
    env.enqueue(NewTask { run_at: Some(T0 + 100), expires_at: Some(T0 + 50), ..task("q") });
    assert_eq!(env.store.next_run_at("q").unwrap(), Some(T0));
    env.advance(10);
    assert_eq!(env.store.next_run_at("q").unwrap(), None);
    let runnable = env.enqueue(NewTask { run_at: Some(T0 + 200), expires_at: Some(T0 + 201), ..task("q") }).id;
    assert_eq!(env.store.next_run_at("q").unwrap(), Some(T0 + 200));
    env.advance(190);
    assert_eq!(env.claim_one("q", "w").id, runnable);
    assert_eq!(env.store.expire().unwrap().len(), 2);
}

fn same_key_same_queue_is_the_same_task(b: Backend) {
    let env = b.open();
    let first = env.enqueue(NewTask { payload: b"first".to_vec(), ..keyed("q", "order-1") });
    assert!(first.inserted);
    let again = env.enqueue(NewTask { payload: b"second".to_vec(), priority: 9, ..keyed("q", "order-1") });
    assert_eq!(again.id, first.id);
    assert!(!again.inserted);
    let t = env.get(first.id);
    assert_eq!((t.payload.as_slice(), t.priority), (&b"first"[..], 0), "nothing of the duplicate is stored");
    assert_eq!(env.total(), 1);
    // The same holds while it runs.
    env.claim_one("q", "w");
    assert_eq!(env.enqueue(keyed("q", "order-1")).id, first.id);
    assert_eq!(env.total(), 1);
}

fn same_key_in_another_queue_is_a_new_task(b: Backend) {
    let env = b.open();
    let a = env.enqueue(keyed("a", "k"));
    let other = env.enqueue(keyed("b", "k"));
    assert!(a.inserted && other.inserted);
    assert_ne!(a.id, other.id);
    assert_eq!(env.get(other.id).queue, "b");
    assert_eq!(
        env.store.get_by_key(&GetByKeyParams { queue: "b".into(), keys: vec!["k".into()] }).unwrap()[0]
            .as_ref()
            .unwrap()
            .id,
        other.id
    );
    assert_eq!(env.total(), 2);
}

fn duplicate_keys_inside_one_batch(b: Backend) {
    let env = b.open();
    let batch = vec![
        NewTask { payload: b"one".to_vec(), ..keyed("q", "k1") },
        keyed("q", "k2"),
        NewTask { payload: b"dup".to_vec(), ..keyed("q", "k1") },
        task("q"),
        keyed("q", "k2"),
    ];
    let out = env.store.enqueue(&batch).unwrap();
    let inserted: Vec<bool> = out.iter().map(|e| e.inserted).collect();
    assert_eq!(inserted, vec![true, true, false, true, false]);
    assert_eq!(out[0].id, out[2].id);
    assert_eq!(out[1].id, out[4].id);
    assert_ne!(out[0].id, out[1].id);
    assert_eq!(env.get(out[0].id).payload, b"one".to_vec());
    assert_eq!(env.total(), 3);
    assert_eq!(env.claim("q", "w", 10).len(), 3);
}

/// A batch big enough for multi-row inserts: keys taken by queued,
/// running and finished tasks, keys repeated inside the batch (also across
/// statements), and rows without a key in between, each answered as the
/// first task with that key.
fn big_keyed_batch_stores_each_key_once(b: Backend) {
    let env = b.open();
    let queued = env.enqueue(keyed("q", "k7"));
    let running = env.enqueue(keyed("q", "k50"));
    let finished = env.enqueue(keyed("q", "k90"));
    let other_queue = env.enqueue(keyed("other", "k3"));
    env.claim("q", "w", 3);
    env.complete(finished.id, "w", b"r").unwrap();
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.push(match i % 5 {
            4 => task("q"),
            // Every key twice: row i and row i + 100 (another statement).
            _ => NewTask { payload: format!("p{i}").into_bytes(), ..keyed("q", &format!("k{}", i % 100)) },
        });
    }
    let out = env.store.enqueue(&batch).unwrap();
    assert_eq!(out.len(), batch.len());
    let mut first: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    first.insert("k7".into(), queued.id);
    first.insert("k50".into(), running.id);
    first.insert("k90".into(), finished.id);
    let mut fresh = 0;
    for (t, e) in batch.iter().zip(&out) {
        let Some(k) = &t.key else {
            assert!(e.inserted);
            fresh += 1;
            continue;
        };
        match first.get(k) {
            Some(&id) => assert_eq!((e.id, e.inserted), (id, false), "key {k}"),
            None => {
                assert!(e.inserted, "key {k}");
                assert_eq!(env.get(e.id).payload, t.payload, "key {k}");
                first.insert(k.clone(), e.id);
                fresh += 1;
            }
        }
    }
    // 80 keys k0..k99 (rows i % 5 != 4), 3 of them taken before; 40 unkeyed rows.
    assert_eq!(fresh, 77 + 40);
    assert_eq!(env.total(), 4 + fresh);
    assert_ne!(first["k3"], other_queue.id);
    let ids: std::collections::HashSet<i64> = out.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 80 + 40, "one id per key and per unkeyed row");
}

fn key_stays_taken_until_the_task_is_purged(b: Backend) {
    let env = b.open();
    let id = env.enqueue(keyed("q", "k")).id;
    env.claim_one("q", "w");
    env.complete(id, "w", b"r").unwrap();
    let again = env.enqueue(keyed("q", "k"));
    assert_eq!((again.id, again.inserted), (id, false), "a finished task still owns its key");
    assert!(env.claim("q", "w", 1).is_empty());
    env.advance(1);
    assert_eq!(env.store.purge(&PurgeParams { finished_before: Some(env.now()) }).unwrap(), 1);
    let fresh = env.enqueue(keyed("q", "k"));
    assert!(fresh.inserted);
    assert_ne!(fresh.id, id);
    assert_eq!(env.get(fresh.id).status, Status::Queued);
}
