//! Behaviour that needs files: persistence across close and reopen, the
//! shard count a store remembers, two handles on one directory (two
//! processes), and the connection settings read back from SQLite.

use crate::harness::*;
use crate::wake::{claim_params, LONG_WAIT};
use ferroq_core::store::sqlite::{shard_file, SqliteStore};
use ferroq_core::store::{CompleteParams, ListParams, ListenSetParams, PurgeParams};
use ferroq_core::{Error, ManualClock, NewTask, Status, StoreConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

crate::conformance_on_disk!(
    everything_survives_close_and_reopen,
    reopen_without_shards_uses_the_stored_count,
    reopen_with_other_shards_is_refused,
    close_leaves_no_write_ahead_log,
    second_handle_sees_commits_and_wakes,
    two_handles_enqueueing_never_collide,
    a_lagging_handle_never_reuses_purged_ids,
    pragmas_read_back_wal_and_synchronous,
    shards_with_the_old_page_size_keep_working,
);

/// The URL of `env`'s directory with options but without `?shards`.
fn url_no_shards(env: &Env, options: &str) -> String {
    let base = format!("sqlite://{}", env.path.as_ref().unwrap().display());
    if options.is_empty() {
        base
    } else {
        format!("{base}?{options}")
    }
}

fn everything_survives_close_and_reopen(b: Backend) {
    let mut env = b.open();
    let done = env.enqueue(keyed("q", "k-done")).id;
    let running = env.enqueue(attempts("q", 3)).id;
    let delayed = env.enqueue(NewTask { run_at: Some(T0 + 60_000), priority: 3, ..task("q") }).id;
    let queued: Vec<i64> = (0..9).map(|_| env.add("q")).collect();
    env.claim_one("q", "w");
    env.claim_one("q", "w");
    env.complete(done, "w", b"the result").unwrap();
    let v = env.store.listen_set(&ListenSetParams { key: "config".into(), value: b"v1".to_vec() }).unwrap();
    let before: Vec<_> = env.store.list(&ListParams { limit: 100, ..Default::default() }).unwrap();
    assert_eq!(before.len(), 12);

    // Close (drop every handle) and reopen the directory.
    let url = env.url.clone();
    let clock = env.clock.clone();
    env.store = ferroq_core::open("memory://").unwrap();
    env.store = ferroq_core::open_with_clock(&url, clock).unwrap();
    let after = env.store.list(&ListParams { limit: 100, ..Default::default() }).unwrap();
    assert_eq!(after, before, "every task comes back exactly as it was");
    let t = env.get(done);
    assert_eq!((t.status, t.result.as_deref()), (Status::Done, Some(&b"the result"[..])));
    let t = env.get(running);
    assert_eq!((t.status, t.worker.as_deref(), t.attempts), (Status::Running, Some("w"), 1));
    assert_eq!(env.store.listen_get("config").unwrap().map(|c| (c.version, c.value)), Some((v, b"v1".to_vec())));
    assert_eq!(env.store.listen_head().unwrap(), v);
    assert_eq!(env.enqueue(keyed("q", "k-done")).id, done, "keys are still taken");

    // The store carries on where it stopped: new ids are fresh, the queue
    // order holds, the running task can still be completed by its worker.
    let fresh = env.add("q");
    assert!(!before.iter().any(|t| t.id == fresh));
    env.complete(running, "w", b"").unwrap();
    let order: Vec<i64> = env.claim("q", "w", 100).iter().map(|t| t.id).collect();
    let mut want = queued.clone();
    want.push(fresh);
    assert_eq!(order, want, "queued tasks, then the new one; the delayed one waits");
    env.advance(60_000);
    assert_eq!(env.claim_one("q", "w").id, delayed);
}

fn reopen_without_shards_uses_the_stored_count(b: Backend) {
    let env = b.open();
    let ids: Vec<i64> = (0..8).map(|_| env.add("q")).collect();
    let url = url_no_shards(&env, "");
    let clock: Arc<ManualClock> = env.clock.clone();
    let reopened = SqliteStore::open(StoreConfig::parse(&url).unwrap(), clock.clone()).unwrap();
    assert_eq!(reopened.shard_count(), b.shards());
    let shards: std::collections::BTreeSet<u32> = ids.iter().map(|id| reopened.shard_of(*id).unwrap()).collect();
    assert_eq!(shards.len() as u32, b.shards(), "tasks are spread over every shard");
    drop(reopened);
    // The same store opened through the generic entry point sees them all.
    let store = ferroq_core::open_with_clock(&url, clock).unwrap();
    let got = store.get(&ids).unwrap();
    assert!(got.iter().all(Option::is_some));
    let dir = env.path.as_ref().unwrap();
    for i in 0..b.shards() {
        assert!(dir.join(shard_file(i)).is_file(), "shard {i} file");
    }
    assert!(!dir.join(shard_file(b.shards())).exists());
}

fn reopen_with_other_shards_is_refused(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    let dir = env.path.clone().unwrap();
    let existing = b.shards();
    for requested in [1u32, 2, 4, 64] {
        if requested == existing {
            continue;
        }
        let url = url_no_shards(&env, &format!("shards={requested}"));
        match ferroq_core::open_with_clock(&url, env.clock.clone()) {
            Err(Error::ShardMismatch { existing: e, requested: r, .. }) => {
                assert_eq!((e, r), (existing, requested))
            }
            Err(other) => panic!("shards={requested}: {other}"),
            Ok(_) => panic!("shards={requested} opened a {existing}-shard store"),
        }
    }
    let files = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("shard-") && name.ends_with(".db")
    });
    assert_eq!(files.count() as u32, existing, "a refused open created no shard files");
    assert_eq!(env.get(id).status, Status::Queued);
    // The same count is fine.
    let url = url_no_shards(&env, &format!("shards={existing}"));
    let again = ferroq_core::open_with_clock(&url, env.clock.clone()).unwrap();
    assert!(again.get(&[id]).unwrap()[0].is_some());
}

/// Removes a shard file and its WAL companions.
fn remove_shard(dir: &std::path::Path, i: u32) {
    let path = dir.join(shard_file(i));
    std::fs::remove_file(&path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
fn missing_shard_file_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let open = |url: &str| ferroq_core::open_with_clock(url, clock.clone());
    let make = |name: &str| {
        let dir = tmp.path().join(name);
        let s = open(&format!("{}?shards=4", url_no_shards_dir(&dir))).unwrap();
        s.enqueue(&(0..8).map(|_| task("q")).collect::<Vec<_>>()).unwrap();
        dir
    };

    // A shard other than the first: with or without ?shards, refused, and
    // not recreated empty (its tasks would be silently lost).
    let dir = make("last");
    remove_shard(&dir, 3);
    for url in [url_no_shards_dir(&dir), format!("{}?shards=4", url_no_shards_dir(&dir))] {
        match open(&url) {
            Err(Error::Corrupt(msg)) => assert!(msg.contains("missing"), "{msg}"),
            Err(other) => panic!("{url}: {other}"),
            Ok(_) => panic!("{url}: a store missing a shard file opened"),
        }
        assert!(!dir.join(shard_file(3)).exists(), "{url}: the missing shard was recreated");
    }

    // The first shard (which records the count): refused too.
    let dir = make("first");
    remove_shard(&dir, 0);
    match open(&url_no_shards_dir(&dir)) {
        Err(Error::Corrupt(msg)) => assert!(msg.contains("missing"), "{msg}"),
        other => panic!("missing shard 0: {:?}", other.err()),
    }
    assert!(!dir.join(shard_file(0)).exists());

    // A creation interrupted before every shard existed (shard 0 still
    // carries its creating mark) is finished by the next open.
    let dir = make("interrupted");
    remove_shard(&dir, 3);
    let c = rusqlite::Connection::open(dir.join(shard_file(0))).unwrap();
    c.execute("INSERT INTO meta (name, value) VALUES ('creating', '1')", []).unwrap();
    drop(c);
    let s = SqliteStore::open(StoreConfig::parse(&url_no_shards_dir(&dir)).unwrap(), clock.clone()).unwrap();
    assert_eq!(s.shard_count(), 4);
    assert!(dir.join(shard_file(3)).exists());
    drop(s);
    remove_shard(&dir, 3);
    assert!(matches!(open(&url_no_shards_dir(&dir)), Err(Error::Corrupt(_))), "the mark was not cleared");
}

fn url_no_shards_dir(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.display())
}

fn close_leaves_no_write_ahead_log(b: Backend) {
    // A closed store is self-contained in its shard files: copying the
    // directory's .db files (a backup) copies every task.
    let env = b.open();
    for _ in 0..20 {
        env.add("q");
    }
    let dir = env.path.clone().unwrap();
    drop(env.store);
    for i in 0..b.shards() {
        let wal = dir.join(format!("{}-wal", shard_file(i)));
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, 0, "{} holds {len} bytes after close", wal.display());
    }
}

fn second_handle_sees_commits_and_wakes(b: Backend) {
    // Two handles on one directory behave like two processes: no shared
    // memory, only the files.
    let env = b.open();
    let other = ferroq_core::open_with_clock(&url_no_shards(&env, ""), env.clock.clone()).unwrap();
    let id = env.add("q");
    assert_eq!(other.get(&[id]).unwrap()[0].as_ref().map(|t| t.status), Some(Status::Queued));
    let claimed = other.claim(&claim_params("q", "w2")).unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(env.claim("q", "w1", 10).is_empty(), "the other handle's claim holds");

    let producer_store = env.store.clone();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        producer_store.enqueue(&[task("q")]).unwrap()[0].id
    });
    let started = Instant::now();
    let got = other.claim_wait(&claim_params("q", "w2"), LONG_WAIT).unwrap();
    let took = started.elapsed();
    let new_id = producer.join().unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![new_id]);
    assert!(took < LONG_WAIT / 2, "cross-handle claim_wait took {took:?}");

    // And the other way round: wait_finished sees a completion made
    // through the other handle.
    let finisher_store = other.clone();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let p = CompleteParams { id: new_id, worker: "w2".into(), result: b"r".to_vec(), force: false };
        finisher_store.complete(&[p]).unwrap().pop().unwrap().unwrap();
    });
    let started = Instant::now();
    let t = env.store.wait_finished(new_id, LONG_WAIT).unwrap();
    finisher.join().unwrap();
    assert_eq!(t.status, Status::Done);
    assert!(started.elapsed() < LONG_WAIT / 2);
}

fn pragmas_read_back_wal_and_synchronous(b: Backend) {
    let env = b.open();
    let dir = env.path.clone().unwrap();
    drop(env.store);
    let url = url_no_shards_dir(&dir);
    let open = |url: &str| SqliteStore::open(StoreConfig::parse(url).unwrap(), env.clock.clone()).unwrap();
    let store = open(&url);
    let pragmas = store.pragmas().unwrap();
    assert_eq!(pragmas.len() as u32, b.shards());
    for p in &pragmas {
        assert_eq!(p.journal_mode, "wal");
        assert_eq!(p.synchronous, 1, "NORMAL by default");
        assert_eq!(p.busy_timeout, 10_000);
        assert_eq!(p.page_size, 1024, "new shards use small pages (schema::PAGE_SIZE)");
    }
    drop(store);
    let store = open(&format!("{url}?synchronous=full&busy_timeout_ms=2500"));
    for p in store.pragmas().unwrap() {
        assert_eq!((p.journal_mode.as_str(), p.synchronous, p.busy_timeout), ("wal", 2, 2_500));
    }
    // In memory there is no WAL, but durability settings still take.
    let mem = SqliteStore::open(StoreConfig::parse("memory://?shards=2&synchronous=full").unwrap(), env.clock.clone())
        .unwrap();
    for p in mem.pragmas().unwrap() {
        assert_eq!((p.journal_mode.as_str(), p.synchronous), ("memory", 2));
    }
}

fn two_handles_enqueueing_never_collide(b: Backend) {
    // Each handle numbers tasks from its own counter; the shard's own
    // sequence must keep them apart.
    let env = b.open();
    let other = ferroq_core::open_with_clock(&url_no_shards(&env, ""), env.clock.clone()).unwrap();
    let mut ids = Vec::new();
    for round in 0..6 {
        let (first, second) = if round % 2 == 0 { (&env.store, &other) } else { (&other, &env.store) };
        let batch: Vec<NewTask> =
            (0..7).map(|i| if i % 3 == 0 { keyed("q", &format!("r{round}-{i}")) } else { task("q") }).collect();
        ids.extend(first.enqueue(&batch).unwrap().iter().map(|e| e.id));
        ids.push(second.enqueue(&[task("q")]).unwrap()[0].id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "two handles handed out the same id");
    assert_eq!(env.total(), 48);
    let mut claimed: Vec<i64> = other.claim(&claim_params_n("q", 100)).unwrap().iter().map(|t| t.id).collect();
    claimed.sort();
    assert_eq!(claimed, unique);
}

fn claim_params_n(queue: &str, limit: u32) -> ferroq_core::store::ClaimParams {
    ferroq_core::store::ClaimParams { limit, ..claim_params(queue, "w") }
}

fn shards_with_the_old_page_size_keep_working(b: Backend) {
    // Shards made before 1 KiB pages (or by hand at SQLite's 4 KiB default)
    // keep their page size and every task: opening never rewrites a file.
    let mut env = b.open();
    let ids: Vec<i64> = (0..40).map(|_| env.add("q")).collect();
    let dir = env.path.clone().unwrap();
    let url = env.url.clone();
    let clock = env.clock.clone();
    env.store = ferroq_core::open("memory://").unwrap();
    for i in 0..b.shards() {
        let conn = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
        conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA page_size = 4096; VACUUM; PRAGMA journal_mode = WAL;")
            .unwrap();
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(size, 4096);
    }
    let store = SqliteStore::open(StoreConfig::parse(&url_no_shards_dir(&dir)).unwrap(), clock.clone()).unwrap();
    for p in store.pragmas().unwrap() {
        assert_eq!(p.page_size, 4096, "an existing shard keeps its page size");
    }
    drop(store);
    env.store = ferroq_core::open_with_clock(&url, clock).unwrap();
    for id in &ids {
        assert_eq!(env.get(*id).status, Status::Queued);
    }
    let more = env.add("q");
    let claimed = env.claim_one("q", "w");
    assert_eq!(claimed.id, ids[0], "the oldest task first");
    env.complete(claimed.id, "w", b"ok").unwrap();
    assert_eq!(env.get(more).status, Status::Queued);
    assert_eq!(env.count("q", Status::Queued), 40);
}

fn a_lagging_handle_never_reuses_purged_ids(b: Backend) {
    // Handle `other` opened before `env` sent anything, so its own counter
    // is behind; the newest tasks are then finished and purged, leaving
    // only each shard's high-water mark. A single send through `other`
    // must still get an id above every purged one of its shard (ids are
    // `local * shards + shard`; across shards only one handle's own sends
    // are ordered).
    let env = b.open();
    let other = ferroq_core::open_with_clock(&url_no_shards(&env, ""), env.clock.clone()).unwrap();
    let old: Vec<i64> = (0..12).map(|_| env.add("q")).collect();
    for t in env.claim("q", "w", 12) {
        env.complete(t.id, "w", b"").unwrap();
    }
    env.advance(1);
    assert_eq!(env.store.purge(&PurgeParams { finished_before: Some(env.now()) }).unwrap(), 12);
    for _ in 0..b.shards() {
        let newer = other.enqueue(&[task("q")]).unwrap()[0].id;
        let n = i64::from(b.shards());
        let same_shard = old.iter().filter(|id| *id % n == newer % n);
        assert!(same_shard.clone().all(|id| newer > *id), "{newer} reuses an id up to {old:?}");
        assert!(same_shard.count() > 0, "every shard had purged tasks");
    }
}
