//! Redis-only behaviour: how a refused or unreachable server is reported,
//! and a restart of the server in the middle of a run (append-only file
//! on, as `scripts/redis` runs it) losing nothing that was acknowledged.

use crate::harness::{task, Backend};
use ferroq_core::store::{ClaimParams, CompleteParams};
use ferroq_core::{Error, ManualClock, Status};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn skip() -> bool {
    if let Some(why) = Backend::Redis.unavailable() {
        eprintln!("{why}");
        return true;
    }
    false
}

fn open(url: &str) -> Result<Arc<dyn ferroq_core::Store>, Error> {
    ferroq_core::open_with_clock(url, Arc::new(ManualClock::new(crate::harness::T0)))
}

#[test]
fn refusals_are_unavailable_and_never_show_the_password() {
    if skip() {
        return;
    }
    let base = std::env::var(crate::harness::REDIS_URL_VAR).unwrap();
    let host_port = base.trim_start_matches("redis://").split('/').next().unwrap().to_string();
    for url in [
        // The test server has no password: AUTH with one is refused.
        format!("redis://:hunter2-secret@{host_port}/0?connect_timeout_s=2"),
        format!("redis://bob:hunter2-secret@{host_port}/0?connect_timeout_s=2"),
        // Nothing listens on port 1.
        "redis://:hunter2-secret@127.0.0.1:1/0?connect_timeout_s=2".to_string(),
        // The server has 16 databases.
        format!("redis://{host_port}/999?connect_timeout_s=2"),
    ] {
        let err = match open(&url) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e,
        };
        assert!(matches!(err, Error::Unavailable(_)), "{url}: {err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{url}: {text}");
    }
}

/// A second, private server (so the restart disturbs no other test).
struct Server {
    port: u16,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis")
}

impl Server {
    fn run(&self, verb: &str) -> String {
        let out = Command::new(script())
            .arg(verb)
            .env("FERROQ_REDIS_PORT", self.port.to_string())
            .env("FERROQ_REDIS_DIR", self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/redis {verb}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .env("FERROQ_REDIS_PORT", self.port.to_string())
            .env("FERROQ_REDIS_DIR", self.dir.path())
            .output();
    }
}

#[test]
fn a_restart_mid_run_loses_nothing_acknowledged() {
    if skip() {
        return;
    }
    let port = 63_800 + (std::process::id() % 150) as u16;
    let server = Server { port, dir: tempfile::tempdir().unwrap() };
    let url = server.run("start");
    let store = open(&format!("{url}?prefix=restart&reconnect_s=20")).unwrap();
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let done: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut failures = 0;
            while !stop.load(Ordering::SeqCst) {
                match store.enqueue(&[task("q")]) {
                    Ok(e) => acked.lock().unwrap().push(e[0].id),
                    Err(Error::Unavailable(_)) => failures += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            failures
        })
    };
    let worker = {
        let (store, done, stop) = (store.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            let p = ClaimParams {
                queue: "q".into(),
                worker: "w".into(),
                limit: 10,
                lease_ms: 600_000,
                resources: None,
                home: None,
            };
            while !stop.load(Ordering::SeqCst) {
                let Ok(tasks) = store.claim(&p) else { continue };
                let items: Vec<CompleteParams> = tasks
                    .iter()
                    .map(|t| CompleteParams { id: t.id, worker: "w".into(), result: b"r".to_vec(), force: false })
                    .collect();
                if let Ok(out) = store.complete(&items) {
                    for (t, r) in tasks.iter().zip(out) {
                        if r.is_ok() {
                            done.lock().unwrap().push(t.id);
                        }
                    }
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.run("restart");
    let before = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < before + 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    worker.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let done = done.lock().unwrap().clone();
    let got = store.get(&acked).unwrap();
    for (id, t) in acked.iter().zip(&got) {
        assert!(t.is_some(), "acknowledged task {id} was lost in the restart");
    }
    for t in store.get(&done).unwrap() {
        assert_eq!(t.unwrap().status, Status::Done, "an acknowledged completion was lost");
    }
    assert!(!done.is_empty());
}

/// A commit by another handle made while a waiter is between reading the
/// change token and going to sleep still wakes it (the wake-up is not lost
/// to the race). The poll is set to a minute, so a lost wake-up would hold
/// the wait for its whole timeout; 500 rounds put the commit at different
/// moments of the waiter's round trip.
#[test]
fn a_commit_while_the_waiter_reads_the_token_still_wakes_it() {
    if skip() {
        return;
    }
    let base = std::env::var(crate::harness::REDIS_URL_VAR).unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let url = format!("{base}?prefix=t_race_{}_{nanos}&poll_ms=60000", std::process::id());
    let waiter = open(&url).unwrap();
    let writer = open(&url).unwrap();
    for round in 0..500_u64 {
        let token = waiter.change_token().unwrap();
        let w = writer.clone();
        let delay = Duration::from_micros(round * 7 % 300);
        let commit = std::thread::spawn(move || {
            std::thread::sleep(delay);
            w.enqueue(&[task("q")]).unwrap();
        });
        let started = std::time::Instant::now();
        assert!(waiter.wait_for_change(token, Duration::from_secs(5)).unwrap());
        let took = started.elapsed();
        commit.join().unwrap();
        assert!(took < Duration::from_secs(2), "round {round}: woken only after {took:?}");
    }
}
