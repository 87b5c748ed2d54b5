//! Waiting for work: `claim_wait` and `wait_finished` return as soon as
//! the thing they wait for happens, not at the end of their timeout.
//!
//! These tests use real threads and real time for the wait itself (the
//! store's clock is still manual). They assert what came back and that it
//! came back well before the timeout, never a tight latency.

use crate::harness::*;
use ferroq_core::store::ClaimParams;
use ferroq_core::{NewTask, Status};
use std::time::{Duration, Instant};

crate::conformance!(
    claim_wait_returns_when_another_thread_enqueues,
    claim_wait_returns_at_once_when_work_is_ready,
    claim_wait_times_out_empty,
    claim_wait_wakes_for_a_delayed_task_without_a_commit,
    wait_finished_returns_when_another_thread_completes,
);

/// Long enough that a test returning near it clearly failed to wake.
pub const LONG_WAIT: Duration = Duration::from_secs(20);

pub fn claim_params(queue: &str, worker: &str) -> ClaimParams {
    ClaimParams { queue: queue.into(), worker: worker.into(), limit: 10, lease_ms: 30_000, resources: None }
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
