//! Claims with a home (`ClaimParams::home`): a worker's claimer is served
//! from its home shards first, and what that guarantees about priority
//! order across shards. On one shard and on PostgreSQL (one table) a home
//! changes nothing, and every check here holds all the same.

use crate::harness::*;
use ferroq_core::store::{ClaimParams, FunctionLimit};
use ferroq_core::{NewTask, Status, Task};

crate::conformance!(
    a_homed_claim_never_passes_over_higher_priority_in_another_shard,
    homed_batches_come_in_priority_rounds,
    at_equal_priority_a_claimer_takes_its_home_shard_first,
    a_shard_nobody_calls_home_waits_no_longer_than_the_slack,
    every_task_is_claimed_once_by_claimers_with_homes,
    a_home_outside_its_count_is_refused,
    homed_claims_keep_function_limits_and_priority,
);

/// Claims up to `limit` tasks of `queue` as claimer `home` = (index, count).
fn claim_home(env: &Env, queue: &str, limit: u32, home: (u32, u32)) -> Vec<Task> {
    env.store
        .claim(&ClaimParams {
            queue: queue.into(),
            worker: format!("w{}-{}", home.0, home.1),
            limit,
            lease_ms: 30_000,
            resources: None,
            home: Some(home),
        })
        .unwrap()
}

/// The priorities of the ready tasks of `queue`.
fn ready_priorities(env: &Env, ids: &[i64]) -> Vec<i64> {
    ids.iter().map(|id| env.get(*id)).filter(|t| t.status == Status::Queued).map(|t| t.priority).collect()
}

fn a_homed_claim_never_passes_over_higher_priority_in_another_shard(b: Backend) {
    let env = b.open();
    // Round robin puts task i on shard i % 4: the ten most urgent tasks all
    // sit on shard 2, so only claimers whose home it is hold any at home.
    for (i, home) in [(0, 4), (1, 4), (2, 4), (3, 4), (0, 2), (1, 2), (5, 8), (0, 1)].into_iter().enumerate() {
        let queue = format!("q{i}");
        let ids: Vec<i64> = (0..40).map(|i| env.enqueue(prio(&queue, if i % 4 == 2 { 9 } else { i % 3 })).id).collect();
        let got = claim_home(&env, &queue, 10, home);
        assert_eq!(got.len(), 10);
        assert!(
            got.iter().all(|t| t.priority == 9),
            "home {home:?} took {:?}",
            got.iter().map(|t| t.priority).collect::<Vec<_>>()
        );
        // And the next claim, the most urgent of what is left.
        let next = claim_home(&env, &queue, 4, home);
        let left_best = ready_priorities(&env, &ids).into_iter().max().unwrap();
        assert!(next.iter().all(|t| t.priority >= left_best), "home {home:?}");
        assert_eq!(next.iter().filter(|t| t.priority == 2).count(), 4, "home {home:?}");
    }
}

fn homed_batches_come_in_priority_rounds(b: Backend) {
    let env = b.open();
    // Priorities scattered over the shards; claimers with different homes
    // take turns. Each batch ranks at least as high as everything still
    // ready after it: a task never waits behind a less urgent one.
    let ids: Vec<i64> = (0..60).map(|i: i64| env.enqueue(prio("q", (i * 7 + i / 5) % 5)).id).collect();
    let homes = [(0, 4), (3, 4), (1, 2), (2, 4), (1, 4), (0, 2)];
    let mut claimed = 0;
    for round in 0.. {
        let got = claim_home(&env, "q", 1 + round % 4, homes[round as usize % homes.len()]);
        if got.is_empty() {
            break;
        }
        claimed += got.len();
        let worst = got.iter().map(|t| t.priority).min().unwrap();
        let left: Vec<i64> = ready_priorities(&env, &ids);
        assert!(left.iter().all(|&p| p <= worst), "round {round}: took down to {worst}, left {left:?}");
        // A batch is returned in claim order.
        assert!(got.windows(2).all(|w| w[0].priority >= w[1].priority));
    }
    assert_eq!(claimed, ids.len());
}

fn at_equal_priority_a_claimer_takes_its_home_shard_first(b: Backend) {
    let env = b.open();
    // Enqueued one by one: round robin, two per shard on 4 shards.
    let ids: Vec<i64> = (0..8).map(|_| env.add("q")).collect();
    let shards = i64::from(b.shards());
    let got = claim_home(&env, "q", 2, (2, 4));
    assert_eq!(got.len(), 2);
    if shards == 4 {
        // One write transaction on shard 2, and nothing from the others.
        assert!(got.iter().all(|t| t.id % 4 == 2), "{:?}", got.iter().map(|t| t.id).collect::<Vec<_>>());
    } else {
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), ids[..2].to_vec(), "FIFO on one shard");
    }
    // With its home empty it takes from the others, oldest first.
    let rest: Vec<i64> = (0..6).flat_map(|_| claim_home(&env, "q", 1, (2, 4))).map(|t| t.id).collect();
    let mut want: Vec<i64> = ids.iter().copied().filter(|id| !got.iter().any(|t| t.id == *id)).collect();
    want.sort();
    assert_eq!(rest, want);
}

fn a_shard_nobody_calls_home_waits_no_longer_than_the_slack(b: Backend) {
    let env = b.open();
    // Only claimer 0 of 4 runs (the others are down): its home shard keeps
    // getting newer work, but tasks ready elsewhere for longer than the
    // slack come first.
    let old: Vec<i64> = (0..8).map(|_| env.add("q")).collect();
    env.advance(1_000);
    let new: Vec<i64> = (0..8).map(|_| env.add("q")).collect();
    let order: Vec<i64> = (0..16).flat_map(|_| claim_home(&env, "q", 1, (0, 4))).map(|t| t.id).collect();
    assert_eq!(order.len(), 16);
    let mut first: Vec<i64> = order[..8].to_vec();
    first.sort();
    assert_eq!(first, old, "every task ready a second earlier came first");
    if b.shards() == 4 {
        assert!(order[..2].iter().all(|id| id % 4 == 0), "home first within the slack: {order:?}");
    }
    let mut last: Vec<i64> = order[8..].to_vec();
    last.sort();
    assert_eq!(last, new);
}

fn every_task_is_claimed_once_by_claimers_with_homes(b: Backend) {
    let env = b.open();
    let n = 400;
    let tasks: Vec<NewTask> = (0..n).map(|i| prio("q", i % 3)).collect();
    let ids: Vec<i64> = env.store.enqueue(&tasks).unwrap().into_iter().map(|e| e.id).collect();
    // Eight claimers of two "processes" at once, in threads.
    let got: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u32)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let got = claim_home(env, "q", 7, (i, 8));
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got.iter().map(|t| t.id));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<i64> = got.into_iter().flatten().collect();
    all.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want, "each task claimed exactly once");
    assert_eq!(env.count("q", Status::Running), n as u64);
}

fn a_home_outside_its_count_is_refused(b: Backend) {
    let env = b.open();
    env.add("q");
    for home in [(4, 4), (0, 0), (7, 3)] {
        let err = env
            .store
            .claim(&ClaimParams {
                queue: "q".into(),
                worker: "w".into(),
                limit: 1,
                lease_ms: 30_000,
                resources: None,
                home: Some(home),
            })
            .unwrap_err();
        assert!(matches!(err, ferroq_core::Error::InvalidArgument(_)), "{home:?}: {err:?}");
    }
    assert_eq!(env.count("q", Status::Queued), 1, "nothing claimed");
}

fn homed_claims_keep_function_limits_and_priority(b: Backend) {
    let env = b.open();
    env.store
        .set_function_limit(&FunctionLimit { name: "job".into(), max_running: Some(3), rate_per_s: None, burst: None })
        .unwrap();
    let ids: Vec<i64> = (0..12).map(|i| env.enqueue(prio("q", if i == 9 { 5 } else { 0 })).id).collect();
    let first = claim_home(&env, "q", 10, (0, 4));
    assert_eq!(first.len(), 3, "max_running 3 holds for claims with a home");
    assert_eq!(first[0].id, ids[9], "the most urgent first, whatever its shard");
    assert!(claim_home(&env, "q", 10, (1, 4)).is_empty(), "three are running");
    env.complete(first[0].id, &first[0].worker.clone().unwrap(), b"r").unwrap();
    let next = claim_home(&env, "q", 10, (2, 4));
    assert_eq!(next.len(), 1);
    assert_eq!(env.count("q", Status::Running), 3);
    assert_eq!(env.count("q", Status::Queued), 8, "nothing given back was lost");
}
