//! Bad input gets a clear, typed error at the call that caused it, and
//! nothing is stored half-way.
//!
//! The first group runs on every backend. The second is about store paths
//! and files, so it builds its own directories; it is not tied to a
//! backend fixture.

use crate::harness::*;
use ferroq_core::store::sqlite::{shard_file, SqliteStore};
use ferroq_core::store::{ClaimParams, GetByKeyParams, ListParams};
use ferroq_core::{Backoff, BackoffStrategy, Error, ManualClock, NewTask, Status, Store, StoreConfig};
use std::path::Path;
use std::sync::Arc;

crate::conformance!(payload_over_the_limit_stores_nothing, malformed_tasks_store_nothing, bad_claims_claim_nothing,);

fn payload_over_the_limit_stores_nothing(b: Backend) {
    let env = b.open_with("max_payload=100");
    let batch = vec![NewTask::new("q", "job", vec![1; 100]), keyed("q", "k"), NewTask::new("q", "job", vec![1; 101])];
    match env.store.enqueue(&batch) {
        Err(Error::PayloadTooLarge { what: "payload", size: 101, limit: 100 }) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(env.total(), 0, "no task of a refused batch is stored");
    assert!(env.store.get_by_key(&GetByKeyParams { queue: "q".into(), keys: vec!["k".into()] }).unwrap()[0].is_none());
    let big_meta = NewTask { metadata: Some("x".repeat(65_537)), ..task("q") };
    assert!(matches!(env.store.enqueue(&[big_meta]), Err(Error::PayloadTooLarge { what: "metadata", .. })));
    // At the limit is fine.
    let ok = env.store.enqueue(&batch[..2]).unwrap();
    assert!(ok.iter().all(|e| e.inserted));
    assert_eq!(env.total(), 2);
}

fn malformed_tasks_store_nothing(b: Backend) {
    let env = b.open();
    let bad_backoff =
        Backoff { strategy: BackoffStrategy::Fixed, base_ms: 10, multiplier: 1.0, max_ms: 10, jitter: 2.0 };
    let cases: Vec<(&str, NewTask)> = vec![
        ("empty queue", NewTask::new("", "job", vec![])),
        ("empty name", NewTask::new("q", "", vec![])),
        ("long queue", NewTask::new("q".repeat(201), "job", vec![])),
        ("long name", NewTask::new("q", "n".repeat(501), vec![])),
        ("no attempts", attempts("q", 0)),
        ("too many attempts", attempts("q", 1_001)),
        ("empty key", keyed("q", "")),
        ("empty batch", NewTask { batch: Some(String::new()), ..task("q") }),
        ("negative ttl", NewTask { result_ttl_ms: Some(-1), ..task("q") }),
        ("bad backoff", NewTask { backoff: Some(bad_backoff), ..task("q") }),
    ];
    for (what, bad) in cases {
        let r = env.store.enqueue(&[task("q"), keyed("q", "good"), bad]);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{what}: {r:?}");
        assert_eq!(env.total(), 0, "{what}: the valid tasks of the batch were stored");
    }
    // The edges of each range are accepted.
    // Any 64-bit priority is accepted (a millisecond timestamp works).
    let edges = vec![prio("q", i64::MAX), prio("q", i64::MIN), attempts("q", 1_000), attempts("q", 1)];
    assert_eq!(env.store.enqueue(&edges).unwrap().len(), 4);
    assert_eq!(env.total(), 4);
}

fn bad_claims_claim_nothing(b: Backend) {
    let env = b.open();
    let id = env.add("q");
    let p = |limit: u32, lease_ms: i64, worker: &str| ClaimParams {
        queue: "q".into(),
        worker: worker.into(),
        limit,
        lease_ms,
        resources: None,
        home: None,
    };
    for (what, params) in [
        ("limit 0", p(0, 1_000, "w")),
        ("limit 10001", p(10_001, 1_000, "w")),
        ("lease 0", p(1, 0, "w")),
        ("negative lease", p(1, -1, "w")),
        ("lease over a week", p(1, 7 * 24 * 3_600_000 + 1, "w")),
        ("no worker", p(1, 1_000, "")),
    ] {
        assert_invalid(env.store.claim(&params).map(|v| v.len()));
        let t = env.get(id);
        assert_eq!((t.status, t.attempts), (Status::Queued, 0), "{what} claimed the task");
    }
    assert_eq!(env.store.claim(&p(10_000, 7 * 24 * 3_600_000, "w")).unwrap().len(), 1);
}

// ---- Store paths and files (SQLite) ----------------------------------

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn open(url: &str) -> Result<Arc<dyn Store>, Error> {
    ferroq_core::open_with_clock(url, clock())
}

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Makes a valid store with some tasks at `dir` and closes it.
fn make_store(dir: &Path, shards: u32) {
    let s = open(&format!("{}?shards={shards}", url(dir))).unwrap();
    let tasks: Vec<NewTask> = (0..200).map(|i| NewTask::new("q", "job", vec![i as u8; 300])).collect();
    s.enqueue(&tasks).unwrap();
}

/// Opens the store at `dir` and uses it; the first error of either.
fn open_and_use(dir: &Path) -> Result<(), Error> {
    let s = open(&url(dir))?;
    s.counts()?;
    s.list(&ListParams { limit: 1_000, ..Default::default() })?;
    s.enqueue(&[task("q")])?;
    s.claim(&ClaimParams {
        queue: "q".into(),
        worker: "w".into(),
        limit: 1_000,
        lease_ms: 1_000,
        resources: None,
        home: None,
    })?;
    Ok(())
}

#[test]
fn shard_counts_out_of_range_are_refused_before_touching_disk() {
    let tmp = tempfile::tempdir().unwrap();
    for n in ["0", "65", "-1", "four"] {
        let dir = tmp.path().join(format!("s{n}"));
        let r = open(&format!("{}?shards={n}", url(&dir)));
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "shards={n}: {:?}", r.err());
        assert!(!dir.exists(), "shards={n} created {}", dir.display());
        assert!(matches!(open(&format!("memory://?shards={n}")), Err(Error::InvalidArgument(_))));
    }
    let dir = tmp.path().join("s64");
    assert_eq!(
        SqliteStore::open(StoreConfig::parse(&format!("{}?shards=64", url(&dir))).unwrap(), clock())
            .unwrap()
            .shard_count(),
        64
    );
}

#[test]
fn unknown_options_and_schemes_are_refused() {
    for bad in [
        "memory://?colour=blue",
        "ftp://host/x",
        "",
        "memory://?max_payload=0",
        "postgresql://u@h/db?colour=blue",
        "postgresql://",
    ] {
        assert!(matches!(open(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
}

#[test]
fn store_path_under_a_regular_file_cannot_be_created() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain");
    std::fs::write(&file, b"hello").unwrap();
    let r = open(&url(&file.join("store")));
    assert!(matches!(r, Err(Error::Unavailable(_))), "{:?}", r.err());
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
}

#[test]
fn unwritable_directory_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let locked = tmp.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root (and some sandboxes) can write anyway: then there is nothing to test.
    let probe = locked.join("probe");
    if std::fs::write(&probe, b"x").is_ok() {
        let _ = std::fs::remove_file(&probe);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!("skipped: this process can write to a mode-000 directory (running as root?)");
        return;
    }
    let below = open(&url(&locked.join("store")));
    let inside = open(&url(&locked));
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(below, Err(Error::PermissionDenied(_))), "store below it: {:?}", below.err());
    assert!(matches!(inside, Err(Error::PermissionDenied(_))), "store in it: {:?}", inside.err());
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0, "nothing was created");
}

#[test]
fn store_path_that_is_a_plain_file_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tasks.db");
    std::fs::write(&file, b"not a directory").unwrap();
    let r = open(&url(&file));
    assert!(matches!(r, Err(Error::NotAStore(_))), "{:?}", r.err());
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn shard_file_of_garbage_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    std::fs::create_dir(&dir).unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.join(shard_file(0)), &garbage).unwrap();
    let r = open(&url(&dir));
    assert!(matches!(r, Err(Error::NotAStore(_))), "{:?}", r.err());
    assert_eq!(std::fs::read(dir.join(shard_file(0))).unwrap(), garbage, "the file was modified");
}

#[test]
fn sqlite_database_of_another_app_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join(shard_file(0));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices (total) VALUES (9.5);",
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let r = open(&url(&dir));
    assert!(matches!(r, Err(Error::NotAStore(_))), "{:?}", r.err());
    // Refusing the file must not change it: not its journal mode either.
    assert_eq!(std::fs::read(&path).unwrap(), before, "the other app's database was modified");
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete");
    let total: f64 = c.query_row("SELECT total FROM invoices", [], |r| r.get(0)).unwrap();
    assert_eq!(total, 9.5);
    // Stamped by another application: refused too.
    c.execute_batch("PRAGMA application_id = 1234;").unwrap();
    drop(c);
    assert!(matches!(open(&url(&dir)), Err(Error::NotAStore(_))));
}

#[test]
fn store_from_a_newer_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_store(&dir, 1);
    let c = rusqlite::Connection::open(dir.join(shard_file(0))).unwrap();
    c.execute_batch("PRAGMA user_version = 99;").unwrap();
    drop(c);
    let r = open(&url(&dir));
    assert!(matches!(r, Err(Error::NotAStore(ref m)) if m.contains("newer")), "{:?}", r.err());
}

#[test]
fn corrupt_shard_is_reported_as_corrupt() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        make_store(&dir, shards);
        let path = dir.join(shard_file(0));
        // Fold any WAL into the main file so the damage below is what
        // SQLite reads, then overwrite everything after the first page.
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 3 * 4096, "the shard is too small to damage: {}", bytes.len());
        for b in bytes[4096..].iter_mut() {
            *b = 0;
        }
        std::fs::write(&path, &bytes).unwrap();
        let r = open_and_use(&dir);
        assert!(
            matches!(r, Err(Error::Corrupt(_)) | Err(Error::NotAStore(_))),
            "{shards} shard(s): a damaged store gave {r:?}"
        );
    }
}

#[test]
fn corrupt_task_rows_are_reported_not_panicked_on() {
    // A row with a status code this build does not know.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let s = open(&url(&dir)).unwrap();
    let id = s.enqueue(&[task("q")]).unwrap()[0].id;
    drop(s);
    let c = rusqlite::Connection::open(dir.join(shard_file(0))).unwrap();
    c.execute("UPDATE task SET status = 42", []).unwrap();
    drop(c);
    let s = open(&url(&dir)).unwrap();
    assert!(matches!(s.get(&[id]), Err(Error::Corrupt(_))));
    assert!(matches!(s.counts(), Err(Error::Corrupt(_))));
}
