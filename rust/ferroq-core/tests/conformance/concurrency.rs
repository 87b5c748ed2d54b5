//! Many threads sending at once (group commit shares their transactions):
//! every send is stored once, ids are unique, keys still dedupe.

use crate::harness::*;
use ferroq_core::store::ClaimParams;
use std::collections::HashSet;
use std::sync::Arc;

crate::conformance!(
    concurrent_sends_are_all_stored_once,
    concurrent_keyed_sends_dedupe,
    concurrent_claimers_each_get_a_task_while_tasks_remain
);

fn concurrent_sends_are_all_stored_once(b: Backend) {
    let env = b.open();
    let store = env.store.clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || (0..200).map(|_| store.enqueue(&[task("q")]).unwrap()[0].id).collect::<Vec<_>>())
        })
        .collect();
    let ids: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(ids.len(), 1_600);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1_600, "ids are unique");
    assert_eq!(env.total(), 1_600);
    for id in ids.iter().step_by(97) {
        assert_eq!(env.get(*id).queue, "q");
    }
}

fn concurrent_keyed_sends_dedupe(b: Backend) {
    let env = b.open();
    let store = env.store.clone();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        // Every thread sends keys k0..k49 twice over, and some of its own.
                        let key = if i % 2 == 0 { format!("k{}", i / 2) } else { format!("own-{t}-{i}") };
                        store.enqueue(&[keyed("q", &key)]).unwrap()[0]
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(all.iter().filter(|e| e.inserted).count(), 50 + 8 * 50);
    assert_eq!(env.total(), 450);
}

fn concurrent_claimers_each_get_a_task_while_tasks_remain(b: Backend) {
    // As many one-task claims at once as there are tasks, spread over the
    // shards: a claimer that loses the task it peeked to another must take
    // one from elsewhere, never come back empty while tasks are ready.
    for round in 0..20 {
        let env = b.open();
        let n = 8;
        for _ in 0..n {
            env.add("q");
        }
        let store = env.store.clone();
        let start = Arc::new(std::sync::Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let store = Arc::clone(&store);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let p = ClaimParams {
                        queue: "q".into(),
                        worker: format!("w{i}"),
                        limit: 1,
                        lease_ms: 30_000,
                        resources: None,
                        home: None,
                    };
                    store.claim(&p).unwrap().len()
                })
            })
            .collect();
        let got: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got, vec![1; n], "round {round}: every claimer got one task");
    }
}
