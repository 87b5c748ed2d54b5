//! Waiting for work: `claim_wait` and `wait_finished` return as soon as
//! the thing they wait for happens, not at the end of their timeout.
//!
//! These tests use real threads and real time for the wait itself (the
//! store's clock is still manual). They assert what came back and that it
//! came back well before the timeout, never a tight latency.

use crate::harness::*;
use ferroq_core::store::{ClaimParams, ListenSetParams};
use ferroq_core::{NewTask, Status};
use std::time::{Duration, Instant};

crate::conformance!(
    claim_wait_returns_when_another_thread_enqueues,
    claim_wait_returns_at_once_when_work_is_ready,
    claim_gathering_takes_what_arrives_within_the_gather,
    claim_wait_times_out_empty,
    claim_wait_wakes_for_a_delayed_task_without_a_commit,
    wait_finished_returns_when_another_thread_completes,
    claim_wait_gives_up_when_the_store_is_woken,
    wait_listen_returns_for_listen_data_not_for_tasks,
);

/// Long enough that a test returning near it clearly failed to wake.
pub const LONG_WAIT: Duration = Duration::from_secs(20);

pub fn claim_params(queue: &str, worker: &str) -> ClaimParams {
    ClaimParams { queue: queue.into(), worker: worker.into(), limit: 10, lease_ms: 30_000, resources: None, home: None }
}

fn claim_wait_returns_when_another_thread_enqueues(b: Backend) {
    let env = b.open();
    let store = env.store.clone();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        store.enqueue(&[task("q")]).unwrap()[0].id
    });
    let started = Instant::now();
    let got = env.store.claim_wait(&claim_params("q", "w"), LONG_WAIT).unwrap();
    let took = started.elapsed();
    let id = producer.join().unwrap();
    assert_eq!(got.len(), 1, "claim_wait returned without the task");
    assert_eq!((got[0].id, got[0].status), (id, Status::Running));
    assert!(took < LONG_WAIT / 2, "claim_wait took {took:?}: it slept instead of waking");
}

fn claim_wait_returns_at_once_when_work_is_ready(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    let started = Instant::now();
    let got = env.store.claim_wait(&claim_params("q", "w"), LONG_WAIT).unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < LONG_WAIT / 2);
}

/// With a gather, a claim woken by the first send waits that long before
/// claiming: a second send meanwhile comes in the same claim. Work ready
/// before the claim is taken at once, gather or not.
fn claim_gathering_takes_what_arrives_within_the_gather(b: Backend) {
    let env = b.open();
    let store = env.store.clone();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let first = store.enqueue(&[task("q")]).unwrap()[0].id;
        std::thread::sleep(Duration::from_millis(30));
        (first, store.enqueue(&[task("q")]).unwrap()[0].id)
    });
    let gather = Duration::from_millis(600);
    let got = env.store.claim_gathering(&claim_params("q", "w"), LONG_WAIT, gather).unwrap();
    let (first, second) = producer.join().unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![first, second], "one claim for both");
    let id = env.add("q");
    let started = Instant::now();
    let got = env.store.claim_gathering(&claim_params("q", "w"), LONG_WAIT, LONG_WAIT).unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < LONG_WAIT / 2, "ready work waited for the gather");
}

fn claim_wait_times_out_empty(b: Backend) {
    let env = b.open();
    // Work on another queue does not wake this one for good.
    env.add("other");
    let wait = Duration::from_millis(150);
    let started = Instant::now();
    let got = env.store.claim_wait(&claim_params("q", "w"), wait).unwrap();
    assert!(got.is_empty());
    assert!(started.elapsed() >= wait, "returned after {:?}", started.elapsed());
    assert_eq!(env.count("other", Status::Queued), 1);
}

fn claim_wait_wakes_for_a_delayed_task_without_a_commit(b: Backend) {
    // A task whose run_at arrives needs no commit to become ready: the
    // waiter must look again by itself. Here the manual clock is moved by
    // another thread; nothing is written to the store.
    let env = b.open();
    let id = env.enqueue(NewTask { run_at: Some(T0 + 50), ..task("q") }).id;
    let clock = env.clock.clone();
    let mover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        clock.advance(Duration::from_millis(50));
    });
    let started = Instant::now();
    let got = env.store.claim_wait(&claim_params("q", "w"), LONG_WAIT).unwrap();
    mover.join().unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < LONG_WAIT / 2, "took {:?}", started.elapsed());
}

fn wait_finished_returns_when_another_thread_completes(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    env.claim_one("q", "w");
    let store = env.store.clone();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let p = ferroq_core::store::CompleteParams { id, worker: "w".into(), result: b"42".to_vec(), force: false };
        store.complete(&[p]).unwrap().pop().unwrap().unwrap();
    });
    let started = Instant::now();
    let t = env.store.wait_finished(id, LONG_WAIT).unwrap();
    finisher.join().unwrap();
    assert_eq!((t.status, t.result.as_deref()), (Status::Done, Some(&b"42"[..])));
    assert!(started.elapsed() < LONG_WAIT / 2, "took {:?}", started.elapsed());
    // A short wait on an unfinished task returns it as it is.
    let open = env.add("q");
    let t = env.store.wait_finished(open, Duration::from_millis(20)).unwrap();
    assert_eq!(t.status, Status::Queued);
    let missing = env.store.wait_finished(1_000_000_007, Duration::from_millis(20));
    assert!(matches!(missing, Err(ferroq_core::Error::NotFound(_))), "{missing:?}");
}

fn claim_wait_gives_up_when_the_store_is_woken(b: Backend) {
    let env = b.open();
    let store = env.store.clone();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        store.wake();
    });
    let started = Instant::now();
    let got = env.store.claim_wait(&claim_params("q", "w"), LONG_WAIT).unwrap();
    waker.join().unwrap();
    assert!(got.is_empty(), "a wake claims nothing");
    assert!(started.elapsed() < LONG_WAIT / 2, "a wake (a scheduler stopping) ends the wait");
    // The task sent later is still there for the next claim.
    let id = env.add("q");
    assert_eq!(env.claim("q", "w", 10).iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
}

fn wait_listen_returns_for_listen_data_not_for_tasks(b: Backend) {
    let env = b.open();
    let head = env.store.listen_head().unwrap();
    // Commits that change no listen data do not end the wait.
    env.add("q");
    let short = Duration::from_millis(150);
    assert_eq!(env.store.wait_listen(head, short).unwrap(), head, "tasks are not listen data");
    let store = env.store.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        store.enqueue(&[task("q")]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        store.listen_set(&ListenSetParams { key: "k".into(), value: b"1".to_vec() }).unwrap()
    });
    let started = Instant::now();
    let got = env.store.wait_listen(head, LONG_WAIT).unwrap();
    let version = writer.join().unwrap();
    assert_eq!(got, version, "returns the new version, not at the enqueue before it");
    assert!(started.elapsed() < LONG_WAIT / 2);
    // Already newer: at once.
    assert_eq!(env.store.wait_listen(head, LONG_WAIT).unwrap(), version);
}
