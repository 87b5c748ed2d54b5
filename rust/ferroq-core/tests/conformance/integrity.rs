//! Damage inside a shard file is reported, never passed on as data: every
//! stored payload and result carries a checksum that reads verify, text
//! that is not UTF-8 is damage too, and every such error names the shard
//! file and the task. A claim that meets a damaged task moves it to
//! `failed` (with the damage as its error) and goes on with the rest of the
//! batch. A shard in which SQLite itself found damage is marked unhealthy:
//! later sends into it fail with the same error instead of piling more
//! work into a broken file. `check()` reports every shard.

use crate::harness::*;
use crate::identity::checkpoint;
use ferroq_core::store::sqlite::shard_file;
use ferroq_core::store::{ClaimParams, CompleteParams, ListParams};
use ferroq_core::{Error, ManualClock, NewTask, Status, Store};
use std::path::Path;
use std::sync::Arc;

crate::conformance!(check_reports_every_shard_healthy);

fn check_reports_every_shard_healthy(b: Backend) {
    let env = b.open();
    env.add("q");
    let report = env.store.check().unwrap();
    assert_eq!(report.len(), b.shards() as usize, "{report:?}");
    for shard in &report {
        assert!(shard.ok, "{shard:?}");
        assert!(!shard.path.is_empty());
    }
    if let Some(dir) = &env.path {
        assert!(report[0].path.contains(&dir.join(shard_file(0)).display().to_string()), "{report:?}");
    }
}

fn open(dir: &Path, shards: u32) -> Arc<dyn Store> {
    let url = format!("sqlite://{}?shards={shards}", dir.display());
    ferroq_core::open_with_clock(&url, Arc::new(ManualClock::new(T0))).unwrap()
}

fn claim_all(s: &dyn Store) -> Result<Vec<ferroq_core::Task>, Error> {
    s.claim(&ClaimParams {
        queue: "q".into(),
        worker: "w".into(),
        limit: 1_000,
        lease_ms: 60_000,
        resources: None,
        home: None,
    })
}

/// Flips the lowest bit of the last byte of every copy of `marker` in the
/// shard files of `dir` (stale copies in free pages included); returns the
/// file that held a copy.
fn flip(dir: &Path, shards: u32, marker: &[u8]) -> std::path::PathBuf {
    let mut hit = None;
    for i in 0..shards {
        let path = dir.join(shard_file(i));
        let mut bytes = std::fs::read(&path).unwrap();
        let mut found = false;
        let mut at = 0;
        while let Some(pos) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
            let end = at + pos + marker.len() - 1;
            bytes[end] ^= 1;
            found = true;
            at = end + 1;
        }
        if found {
            std::fs::write(&path, &bytes).unwrap();
            hit = Some(path);
        }
    }
    hit.unwrap_or_else(|| panic!("{} is in no shard file", String::from_utf8_lossy(marker)))
}

/// Asserts `r` is a corruption error naming `file` and task `id`.
fn assert_damaged<T: std::fmt::Debug>(r: Result<T, Error>, file: &Path, id: i64) {
    match r {
        Err(Error::Corrupt(msg)) => {
            assert!(msg.contains(&file.display().to_string()), "the message does not name the file: {msg}");
            assert!(msg.contains(&format!("task {id}")), "the message does not name task {id}: {msg}");
        }
        other => panic!("expected Corrupt for task {id}, got {other:?}"),
    }
}

#[test]
fn flipped_bit_in_a_payload_or_result_is_reported_not_returned() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let s = open(&dir, shards);
        let payload = |i: usize| format!("{{\"args\":[\"PAYLOAD-MARK-{i:04}\"]}}").into_bytes();
        let ids: Vec<i64> = (0..8).map(|i| s.enqueue(&[NewTask::new("q", "job", payload(i))]).unwrap()[0].id).collect();
        // Task 0 is done with a result; the others stay queued.
        let first = s.claim(&ClaimParams { limit: 1, ..claim_params() }).unwrap().pop().unwrap();
        assert_eq!(first.id, ids[0]);
        let result = b"{\"answer\":\"RESULT-MARK-1\"}".to_vec();
        s.complete(&[CompleteParams { id: first.id, worker: "w".into(), result, force: false }]).unwrap();
        drop(s);
        checkpoint(&dir, shards);
        // One bit in task 0's result, one in task 3's payload: each still a
        // valid value ("...-1" becomes "...-0", "...-0003" becomes "...-0002").
        let result_file = flip(&dir, shards, b"RESULT-MARK-1");
        let payload_file = flip(&dir, shards, b"PAYLOAD-MARK-0003");

        let s = open(&dir, shards);
        assert_damaged(s.get(&[ids[0]]), &result_file, ids[0]);
        assert_damaged(s.get(&[ids[3]]), &payload_file, ids[3]);
        for (i, id) in ids.iter().enumerate().filter(|(i, _)| ![0, 3].contains(i)) {
            assert_eq!(s.get(&[*id]).unwrap()[0].as_ref().unwrap().payload, payload(i), "{shards} shard(s)");
        }
        // A claim meeting the damaged task hands out the rest, and moves
        // the damaged one to failed with the damage as its error.
        let claimed = claim_all(&*s).unwrap();
        let mut got: Vec<i64> = claimed.iter().map(|t| t.id).collect();
        got.sort();
        let want: Vec<i64> = ids.iter().copied().filter(|id| *id != ids[0] && *id != ids[3]).collect();
        assert_eq!(got, want, "{shards} shard(s)");
        assert!(claim_all(&*s).unwrap().is_empty(), "the damaged task is not claimed again");
        let failed = s.list(&ListParams { status: Some(Status::Failed), limit: 10, ..Default::default() });
        assert_damaged(failed, &payload_file, ids[3]);
        assert_damaged(s.get(&[ids[3]]), &payload_file, ids[3]);
        let counts = s.counts().unwrap();
        assert!(counts.iter().any(|c| c.status == Status::Failed && c.count == 1), "{counts:?}");
        // check() finds both.
        let report = s.check().unwrap();
        let bad: Vec<_> = report.iter().filter(|r| !r.ok).collect();
        assert!(!bad.is_empty(), "{report:?}");
        let all = format!("{report:?}");
        assert!(all.contains(&format!("task {}", ids[0])) && all.contains(&format!("task {}", ids[3])), "{all}");
        // The damage is in rows, not in the file's structure: sends go on.
        assert!(s.enqueue(&[task("q")]).is_ok());
    }
}

fn claim_params() -> ClaimParams {
    ClaimParams { queue: "q".into(), worker: "w".into(), limit: 1_000, lease_ms: 60_000, resources: None, home: None }
}

#[test]
fn text_that_is_not_utf8_is_corrupt_naming_file_and_task() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let s = open(&dir, 1);
    let id = s.enqueue(&[task("q")]).unwrap()[0].id;
    let fine = s.enqueue(&[task("q")]).unwrap()[0].id;
    drop(s);
    let path = dir.join(shard_file(0));
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("UPDATE task SET name = CAST(X'C328' AS TEXT) WHERE id = ?1", [id]).unwrap();
    drop(c);
    let s = open(&dir, 1);
    assert_damaged(s.get(&[id]), &path, id);
    assert!(s.get(&[fine]).unwrap()[0].is_some());
}

#[test]
fn a_shard_sqlite_finds_damaged_names_its_file_and_refuses_sends() {
    for shards in [1u32, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let s = open(&dir, shards);
        // Enough rows for the task table to span many pages.
        let tasks: Vec<NewTask> =
            (0..400).map(|i| NewTask::new("q", "job", format!("ROW-{i:05}-{}", "x".repeat(80)).into_bytes())).collect();
        s.enqueue(&tasks).unwrap();
        drop(s);
        checkpoint(&dir, shards);
        // Zero the page holding a row in the middle of shard 0's table.
        let path = dir.join(shard_file(0));
        let mut bytes = std::fs::read(&path).unwrap();
        let page: usize = 1024;
        let pos = (150..250)
            .find_map(|i| {
                let marker = format!("ROW-{i:05}-");
                bytes.windows(marker.len()).position(|w| w == marker.as_bytes())
            })
            .unwrap();
        let start = pos / page * page;
        bytes[start..start + page].fill(0);
        std::fs::write(&path, &bytes).unwrap();

        let s = open(&dir, shards);
        let listed = s.list(&ListParams { limit: 10_000, ..Default::default() });
        match &listed {
            Err(Error::Corrupt(msg)) => assert!(msg.contains(&path.display().to_string()), "{msg}"),
            other => panic!("{shards} shard(s): expected Corrupt, got {:?}", other.as_ref().map(Vec::len)),
        }
        // Sends routed into the damaged shard now fail the same way;
        // sends to the other shards go on.
        let outcomes: Vec<Result<_, Error>> = (0..2 * shards).map(|_| s.enqueue(&[task("q")])).collect();
        let refused: Vec<&String> =
            outcomes.iter().filter_map(|r| if let Err(Error::Corrupt(m)) = r { Some(m) } else { None }).collect();
        assert_eq!(refused.len(), 2, "{shards} shard(s): {outcomes:?}");
        assert!(refused.iter().all(|m| m.contains(&path.display().to_string()) && m.contains("check")), "{refused:?}");
        assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count() as u32, 2 * shards - 2);
        let report = s.check().unwrap();
        assert!(!report[0].ok && !report[0].messages.is_empty(), "{report:?}");
        assert!(report[1..].iter().all(|r| r.ok), "{report:?}");
    }
}
