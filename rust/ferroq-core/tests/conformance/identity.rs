//! A shard is known by its store: every shard file records the store's id
//! (random, made at creation), its own index and the shard count. A shard
//! file that is empty (truncated to zero bytes, or a database without the
//! schema), belongs to another store, or sits at another shard's place is
//! refused as corrupt at open, with a message naming the file and how to
//! recover, and is left as it was. Stores written by the previous schema
//! version are given an identity on first open and keep their tasks.

use crate::harness::*;
use ferroq_core::store::sqlite::shard_file;
use ferroq_core::store::CompleteParams;
use ferroq_core::{Error, ManualClock, Status, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn open(dir: &Path) -> Result<Arc<dyn Store>, Error> {
    ferroq_core::open_with_clock(&format!("sqlite://{}", dir.display()), Arc::new(ManualClock::new(T0)))
}

/// A closed store of `shards` shards at `dir` holding `n` queued tasks;
/// returns their ids. Every shard's WAL is folded into its file.
pub fn make_store(dir: &Path, shards: u32, n: usize) -> Vec<i64> {
    let url = format!("sqlite://{}?shards={shards}", dir.display());
    let s = ferroq_core::open_with_clock(&url, Arc::new(ManualClock::new(T0))).unwrap();
    let ids = (0..n).map(|_| s.enqueue(&[task("q")]).unwrap()[0].id).collect();
    drop(s);
    checkpoint(dir, shards);
    ids
}

/// Folds every shard's WAL into its file (so the bytes on disk are the data).
pub fn checkpoint(dir: &Path, shards: u32) {
    for i in 0..shards {
        let c = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
}

/// Removes a shard's WAL companions (what a copy or truncation leaves behind).
fn drop_wal(path: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Opening `dir` is refused as corrupt, naming `file` and the way back.
fn assert_refused(dir: &Path, file: &Path, what: &str) {
    match open(dir) {
        Err(Error::Corrupt(msg)) => {
            assert!(msg.contains(&file.display().to_string()), "{what}: the message does not name the file: {msg}");
            assert!(msg.contains("backup"), "{what}: the message does not say how to recover: {msg}");
        }
        Err(other) => panic!("{what}: expected Corrupt, got {other:?}"),
        Ok(_) => panic!("{what}: the store opened"),
    }
}

#[test]
fn truncated_shard_is_refused_not_recreated() {
    for shards in [1u32, 4] {
        for victim in [0, shards - 1] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("store");
            make_store(&dir, shards, 12);
            let path = dir.join(shard_file(victim));
            std::fs::write(&path, b"").unwrap();
            drop_wal(&path);
            let what = format!("shard {victim} of {shards} truncated");
            assert_refused(&dir, &path, &what);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "{what}: the file was rewritten");
        }
    }
}

#[test]
fn shard_without_the_schema_is_refused() {
    // A valid SQLite file with nothing in it (a header, no tables).
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        make_store(&dir, shards, 4);
        let path = dir.join(shard_file(shards - 1));
        std::fs::remove_file(&path).unwrap();
        drop_wal(&path);
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE x (a); DROP TABLE x;").unwrap();
        drop(c);
        assert_refused(&dir, &path, &format!("schema-less shard of {shards}"));
    }
}

#[test]
fn shard_of_another_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    make_store(&a, 4, 8);
    make_store(&b, 4, 8);
    let path = a.join(shard_file(2));
    std::fs::copy(b.join(shard_file(2)), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert_refused(&a, &path, "a shard copied from another store");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the foreign shard was modified");
}

#[test]
fn swapped_shards_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_store(&dir, 4, 8);
    let (one, two) = (dir.join(shard_file(1)), dir.join(shard_file(2)));
    let aside = dir.join("aside");
    std::fs::rename(&one, &aside).unwrap();
    std::fs::rename(&two, &one).unwrap();
    std::fs::rename(&aside, &two).unwrap();
    assert_refused(&dir, &one, "shards 1 and 2 swapped");
}

/// Turns a store back into one written by schema version 1: no store id,
/// no checksum columns, no queue options, user_version 1.
fn make_old_format(dir: &Path, shards: u32) {
    make_v2_format(dir, shards);
    for i in 0..shards {
        let c = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
        c.execute_batch(
            "DELETE FROM meta WHERE name = 'store_id';
             ALTER TABLE task DROP COLUMN payload_sum; ALTER TABLE task DROP COLUMN result_sum;
             ALTER TABLE task_done DROP COLUMN payload_sum; ALTER TABLE task_done DROP COLUMN result_sum;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
}

/// Turns a store back into one written by schema version 4: no pause,
/// aging or dead letters (the ready index on the priority), user_version 4.
fn make_v4_format(dir: &Path, shards: u32) {
    for i in 0..shards {
        let c = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
        c.execute_batch(
            "DROP INDEX task_ready; ALTER TABLE task DROP COLUMN claim_rank;
             CREATE INDEX task_ready ON task (queue, priority DESC, run_at, id) WHERE status = 0;
             DROP INDEX task_done_key; ALTER TABLE task_done DROP COLUMN origin;
             CREATE UNIQUE INDEX task_done_key ON task_done (queue, key) WHERE key IS NOT NULL;
             ALTER TABLE queue_setting DROP COLUMN paused; ALTER TABLE queue_setting DROP COLUMN aging_ms;
             ALTER TABLE queue_setting DROP COLUMN dead_letter; ALTER TABLE queue_setting DROP COLUMN dead_retention_ms;
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }
}

/// Turns a store back into one written by schema version 3: no
/// dependency table, user_version 3.
fn make_v3_format(dir: &Path, shards: u32) {
    make_v4_format(dir, shards);
    for i in 0..shards {
        let c = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
        c.execute_batch("DROP TABLE task_dep; PRAGMA user_version = 3;").unwrap();
    }
}

/// Turns a store back into one written by schema version 2: no queue
/// options columns, user_version 2.
fn make_v2_format(dir: &Path, shards: u32) {
    make_v3_format(dir, shards);
    for i in 0..shards {
        let c = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
        c.execute_batch(
            "ALTER TABLE queue_setting DROP COLUMN serial; ALTER TABLE queue_setting DROP COLUMN answer_timeout_ms;
             ALTER TABLE queue_setting DROP COLUMN on_timeout; ALTER TABLE queue_setting DROP COLUMN retention_ms;
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
}

#[test]
fn store_of_schema_2_gains_queue_options_and_keeps_capacities() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().join("store");
        let ids = make_store(&dir, shards, 5);
        {
            let s = open(&dir).unwrap();
            s.set_capacity(&ferroq_core::store::CapacityParams { queue: "q".into(), capacity: Some(100) }).unwrap();
        }
        checkpoint(&dir, shards);
        make_v2_format(&dir, shards);
        let s = open(&dir).unwrap();
        assert!(s.get(&ids).unwrap().iter().all(Option::is_some));
        assert_eq!(s.capacity("q").unwrap(), Some(100));
        assert_eq!(
            s.queue_options("q").unwrap(),
            ferroq_core::store::QueueOptions { queue: "q".into(), ..Default::default() }
        );
        let o = ferroq_core::store::QueueOptions { queue: "q".into(), serial: true, ..Default::default() };
        s.set_queue_options(&o).unwrap();
        assert_eq!(s.queue_options("q").unwrap(), o);
        assert_eq!(s.capacity("q").unwrap(), Some(100), "options keep the capacity");
        drop(s);
        assert!(store_ids(&dir, shards).iter().all(|(v, _)| *v == 5));
    }
}

#[test]
fn store_of_schema_3_gains_flows_and_keeps_its_tasks() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().join("store");
        let ids = make_store(&dir, shards, 5);
        checkpoint(&dir, shards);
        make_v3_format(&dir, shards);
        let s = open(&dir).unwrap();
        assert!(s.get(&ids).unwrap().iter().all(Option::is_some));
        use ferroq_core::store::{Dep, FlowTask};
        let step = |after| FlowTask { task: task("q"), after };
        let got = s.enqueue_flow(&[step(vec![Dep::Task(ids[0])]), step(vec![Dep::Earlier(0)])]).unwrap();
        assert_eq!(s.get(&[got[1].id]).unwrap()[0].as_ref().unwrap().status, Status::Waiting);
        assert_eq!(s.dependencies(&[got[1].id]).unwrap(), vec![vec![got[0].id]]);
        drop(s);
        assert!(store_ids(&dir, shards).iter().all(|(v, _)| *v == 5));
    }
}

#[test]
fn store_of_schema_4_gains_pause_aging_and_dead_letters() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().join("store");
        let ids = make_store(&dir, shards, 6);
        let o = ferroq_core::store::QueueOptions { queue: "q".into(), retention_ms: Some(9_000), ..Default::default() };
        open(&dir).unwrap().set_queue_options(&o).unwrap();
        checkpoint(&dir, shards);
        make_v4_format(&dir, shards);
        let s = open(&dir).unwrap();
        assert_eq!(s.queue_options("q").unwrap(), o, "the options stay");
        // The old tasks keep their order (rank = priority), then aging,
        // pause and routing work on them.
        let claim = |n| ferroq_core::store::ClaimParams {
            queue: "q".into(),
            worker: "w".into(),
            limit: n,
            lease_ms: 60_000,
            resources: None,
            home: None,
        };
        let mut want = s.get(&ids).unwrap().into_iter().map(Option::unwrap).collect::<Vec<_>>();
        want.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)).then(a.id.cmp(&b.id)));
        s.set_paused(&ferroq_core::store::PauseParams { queue: "q".into(), paused: true }).unwrap();
        assert!(s.claim(&claim(10)).unwrap().is_empty());
        s.set_paused(&ferroq_core::store::PauseParams { queue: "q".into(), paused: false }).unwrap();
        let o4 =
            ferroq_core::store::QueueOptions { aging_ms: Some(1_000), dead_letter: Some("dead".into()), ..o.clone() };
        s.set_queue_options(&o4).unwrap();
        let got = s.claim(&claim(10)).unwrap();
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), want.iter().map(|t| t.id).collect::<Vec<_>>());
        let f = ferroq_core::store::FailParams {
            id: got[0].id,
            worker: "w".into(),
            error: "x".into(),
            retry: ferroq_core::store::Retry::Never,
            force: false,
        };
        s.fail(&[f]).unwrap().pop().unwrap().unwrap();
        assert_eq!(s.get(&[got[0].id]).unwrap()[0].as_ref().unwrap().queue, "dead");
        drop(s);
        assert!(store_ids(&dir, shards).iter().all(|(v, _)| *v == 5));
    }
}

fn store_ids(dir: &Path, shards: u32) -> Vec<(i64, Option<String>)> {
    (0..shards)
        .map(|i| {
            let c = rusqlite::Connection::open(dir.join(shard_file(i))).unwrap();
            let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            let id = c.query_row("SELECT value FROM meta WHERE name = 'store_id'", [], |r| r.get(0)).ok();
            (version, id)
        })
        .collect()
}

#[test]
fn store_of_the_previous_schema_opens_and_keeps_its_tasks() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().join("store");
        let ids = make_store(&dir, shards, 10);
        // One of them done with a result, before the downgrade.
        {
            let s = open(&dir).unwrap();
            let env_claim = ferroq_core::store::ClaimParams {
                queue: "q".into(),
                worker: "w".into(),
                limit: 1,
                lease_ms: 60_000,
                resources: None,
                home: None,
            };
            let t = s.claim(&env_claim).unwrap().pop().unwrap();
            s.complete(&[CompleteParams {
                id: t.id,
                worker: "w".into(),
                result: b"old result".to_vec(),
                force: false,
            }])
            .unwrap();
        }
        checkpoint(&dir, shards);
        make_old_format(&dir, shards);
        let s = open(&dir).unwrap();
        let got = s.get(&ids).unwrap();
        assert!(got.iter().all(Option::is_some), "{shards} shard(s): every task is still there");
        let done: Vec<_> = got.iter().flatten().filter(|t| t.status == Status::Done).collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].result.as_deref(), Some(&b"old result"[..]));
        // New work goes on as before.
        let new = s.enqueue(&[task("q")]).unwrap()[0].id;
        assert!(ids.iter().all(|id| *id != new));
        drop(s);
        let stamped = store_ids(&dir, shards);
        assert!(stamped.iter().all(|(v, id)| *v == 5 && id.is_some()), "{stamped:?}");
        assert!(stamped.iter().all(|(_, id)| *id == stamped[0].1), "one store id in every shard: {stamped:?}");
        // And it opens again as a store of the new version.
        assert!(open(&dir).unwrap().get(&[new]).unwrap()[0].is_some());
    }
}

#[test]
fn brand_new_store_gets_one_id_in_every_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_store(&dir, 4, 0);
    let stamped = store_ids(&dir, 4);
    assert!(stamped[0].1.as_ref().is_some_and(|id| id.len() >= 16), "{stamped:?}");
    assert!(stamped.iter().all(|s| *s == stamped[0]), "{stamped:?}");
    let other = tmp.path().join("other");
    make_store(&other, 4, 0);
    assert_ne!(store_ids(&other, 4)[0], stamped[0], "two stores, two ids");
    // Only the shard files are left in the directory (no creation leftovers).
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    names.sort();
    assert_eq!(names, (0..4).map(shard_file).collect::<Vec<_>>());
}
