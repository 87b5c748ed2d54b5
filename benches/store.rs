//! Store throughput: enqueue (one task per call, and 1,000 per call) and
//! claim + complete in batches of 100, on a real directory with the default
//! durability (WAL, synchronous=NORMAL), at 1 and 4 shards — beside the
//! same workloads on plain SQLite through rusqlite, the reference the
//! project measures itself against (DESIGN.md, "Where the speed comes
//! from").
//!
//! Every bench checks what it processed once it has run (STYLE.md habit
//! 15): the number of tasks stored, claimed and completed must match the
//! number of calls criterion made.
//!
//! `cargo bench` runs it all in about two minutes; `cargo bench -- raw`
//! runs only the reference.

// A bench that cannot set up or whose counts are wrong should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ferroq_core::store::{ClaimParams, CompleteParams};
use ferroq_core::{NewTask, Status, Store};
use rusqlite::{params, Connection, TransactionBehavior};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A payload the size of a small JSON argument list.
const PAYLOAD: &[u8] = b"{\"args\":[12345,\"some text\"],\"kw\":{}}";
const BATCH: usize = 1_000;
const CLAIM_BATCH: u32 = 100;

fn configure<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g
}

/// A fresh store of `shards` shards in a temp dir (kept alive by the caller).
fn fresh_store(shards: u32) -> (TempDir, Arc<dyn Store>) {
    fresh_store_with(shards, "")
}

/// A fresh store with extra URL options (`"&events=off"`).
fn fresh_store_with(shards: u32, options: &str) -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?shards={shards}{options}", dir.path().join("store").display());
    let store = ferroq_core::open(&url).expect("open store");
    (dir, store)
}

fn task() -> NewTask {
    NewTask::new("bench", "bench:job", PAYLOAD.to_vec())
}

fn count(store: &dyn Store, status: Status) -> u64 {
    store.counts().expect("counts").iter().filter(|c| c.status == status).map(|c| c.count).sum()
}

fn shards_label(shards: u32) -> String {
    if shards == 1 {
        "ferroq_1_shard".into()
    } else {
        format!("ferroq_{shards}_shards")
    }
}

fn enqueue_single(c: &mut Criterion) {
    let mut g = configure(c, "enqueue_single");
    g.throughput(Throughput::Elements(1));
    for shards in [1, 4] {
        let (_dir, store) = fresh_store(shards);
        let sent = Cell::new(0u64);
        let one = [task()];
        g.bench_function(shards_label(shards), |b| {
            b.iter(|| {
                let out = store.enqueue(black_box(&one)).expect("enqueue");
                assert!(out[0].inserted);
                sent.set(sent.get() + 1);
            })
        });
        assert_eq!(store.unfinished("bench").expect("unfinished"), sent.get(), "tasks stored");
    }
    g.finish();
}

/// Four threads sending one task per call at once: group commit lets
/// concurrent sends share a transaction.
fn enqueue_4_threads(c: &mut Criterion) {
    let mut g = configure(c, "enqueue_single_4_threads");
    const PER_THREAD: u64 = 250;
    g.throughput(Throughput::Elements(4 * PER_THREAD));
    for shards in [1, 4] {
        let (_dir, store) = fresh_store(shards);
        let sent = Cell::new(0u64);
        g.bench_function(shards_label(shards), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for _ in 0..4 {
                        let store = &store;
                        s.spawn(move || {
                            let one = [task()];
                            for _ in 0..PER_THREAD {
                                assert!(store.enqueue(black_box(&one)).expect("enqueue")[0].inserted);
                            }
                        });
                    }
                });
                sent.set(sent.get() + 4 * PER_THREAD);
            })
        });
        assert_eq!(store.unfinished("bench").expect("unfinished"), sent.get(), "tasks stored");
    }
    g.finish();
}

fn enqueue_batch(c: &mut Criterion) {
    let mut g = configure(c, "enqueue_batch_1000");
    g.throughput(Throughput::Elements(BATCH as u64));
    let batch: Vec<NewTask> = (0..BATCH).map(|_| task()).collect();
    for shards in [1, 4] {
        let (_dir, store) = fresh_store(shards);
        let sent = Cell::new(0u64);
        g.bench_function(shards_label(shards), |b| {
            b.iter(|| {
                let out = store.enqueue(black_box(&batch)).expect("enqueue");
                assert_eq!(out.len(), BATCH);
                sent.set(sent.get() + BATCH as u64);
            })
        });
        assert_eq!(store.unfinished("bench").expect("unfinished"), sent.get(), "tasks stored");
    }
    g.finish();
}

fn claim_complete(c: &mut Criterion) {
    let mut g = configure(c, "claim_complete_100");
    g.throughput(Throughput::Elements(CLAIM_BATCH as u64));
    // The event feed on (the default) and off, in the same run: the
    // feed's cost is the difference.
    for (shards, events) in [(1, true), (1, false), (4, true), (4, false)] {
        let (_dir, store) = fresh_store_with(shards, if events { "" } else { "&events=off" });
        let label = if events { shards_label(shards) } else { format!("{}_events_off", shards_label(shards)) };
        let done = Cell::new(0u64);
        let params = ClaimParams {
            queue: "bench".into(),
            worker: "w".into(),
            limit: CLAIM_BATCH,
            lease_ms: 60_000,
            resources: None,
            home: None,
        };
        let fill: Vec<NewTask> = (0..BATCH).map(|_| task()).collect();
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                // Ready work for every iteration, enqueued outside the timing.
                let mut need = iters * CLAIM_BATCH as u64;
                while need > 0 {
                    let n = need.min(BATCH as u64) as usize;
                    store.enqueue(&fill[..n]).expect("fill");
                    need -= n as u64;
                }
                let start = Instant::now();
                for _ in 0..iters {
                    let claimed = store.claim(&params).expect("claim");
                    assert_eq!(claimed.len(), CLAIM_BATCH as usize, "a full batch was ready");
                    let results: Vec<CompleteParams> = claimed
                        .iter()
                        .map(|t| CompleteParams { id: t.id, worker: "w".into(), result: b"ok".to_vec(), force: false })
                        .collect();
                    let out = store.complete(&results).expect("complete");
                    assert!(out.iter().all(Result::is_ok));
                }
                let took = start.elapsed();
                done.set(done.get() + iters * CLAIM_BATCH as u64);
                took
            })
        });
        assert_eq!(count(&*store, Status::Done), done.get(), "tasks completed");
        assert_eq!(store.unfinished("bench").expect("unfinished"), 0, "nothing left queued or running");
        // Every task was sent, claimed and completed: three events each
        // (a shard's positions count from 1 and nothing was pruned).
        let head = store.events_head().expect("events head");
        let recorded: i64 = head.trim_start_matches("s:").split('.').map(|p| p.parse::<i64>().expect("position")).sum();
        assert_eq!(recorded as u64, if events { 3 * done.get() } else { 0 }, "events recorded");
    }
    g.finish();
}

// ---- The reference: plain SQLite through rusqlite ----------------------

/// The page size ferroq gives new shards (its `schema::PAGE_SIZE`); the
/// reference uses it too, so the two write the same bytes per commit.
const RAW_PAGE_SIZE: i64 = 1024;

/// A WAL database at synchronous=NORMAL with a minimal task table and the
/// same kind of partial ready index ferroq uses, with pages of `page_size`
/// bytes.
fn raw_db_paged(page_size: i64) -> (TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = Connection::open(dir.path().join("raw.db")).expect("open");
    conn.execute_batch(&format!("PRAGMA page_size = {page_size};")).expect("page size");
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE task (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, payload BLOB NOT NULL,
             priority INTEGER NOT NULL, status INTEGER NOT NULL, run_at INTEGER NOT NULL,
             worker TEXT, lease_until INTEGER, result BLOB);
         CREATE INDEX task_ready ON task (queue, priority DESC, run_at, id) WHERE status = 0;",
    )
    .expect("schema");
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).expect("sync");
    assert_eq!(sync, 1);
    let got: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).expect("page size");
    assert_eq!(got, page_size);
    (dir, conn)
}

fn raw_db() -> (TempDir, Connection) {
    raw_db_paged(RAW_PAGE_SIZE)
}

const RAW_INSERT: &str = "INSERT INTO task (queue, payload, priority, status, run_at) VALUES ('bench', ?1, 0, 0, ?2)";
const RAW_CLAIM: &str = "UPDATE task SET status = 1, worker = 'w', lease_until = ?2
    WHERE id IN (SELECT id FROM task WHERE queue = 'bench' AND status = 0 AND run_at <= ?1
                 ORDER BY priority DESC, run_at, id LIMIT ?3)
    RETURNING id";
const RAW_COMPLETE: &str = "UPDATE task SET status = 2, result = ?2, lease_until = NULL
    WHERE id = ?1 AND status = 1 AND worker = 'w'";

fn raw_count(conn: &Connection, status: i64) -> u64 {
    conn.query_row("SELECT count(*) FROM task WHERE status = ?1", [status], |r| r.get::<_, i64>(0)).expect("count")
        as u64
}

/// One-row inserts, each its own (autocommit) transaction, checked.
fn raw_single_commits(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, conn: &Connection) {
    let sent = Cell::new(0u64);
    g.bench_function(name, |b| {
        b.iter(|| {
            let n = conn.prepare_cached(RAW_INSERT).expect("prepare").execute(params![PAYLOAD, 0]).expect("insert");
            assert_eq!(n, 1);
            sent.set(sent.get() + 1);
        })
    });
    assert_eq!(raw_count(conn, 0), sent.get(), "rows stored");
}

fn raw_sqlite(c: &mut Criterion) {
    let mut g = configure(c, "raw_sqlite");

    g.throughput(Throughput::Elements(1));
    let (_d1, conn) = raw_db();
    raw_single_commits(&mut g, "single_row_commit", &conn);
    // The same loop at SQLite's default page size, for comparison.
    let (_d4, conn) = raw_db_paged(4096);
    raw_single_commits(&mut g, "single_row_commit_4096_pages", &conn);

    // Four rows per transaction: the most a group commit of four
    // one-task senders can share, so the ceiling for four producer threads.
    g.throughput(Throughput::Elements(4));
    let (_d5, mut conn) = raw_db();
    let sent = Cell::new(0u64);
    g.bench_function("insert_4_per_tx", |b| {
        b.iter(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
            {
                let mut stmt = tx.prepare_cached(RAW_INSERT).expect("prepare");
                for _ in 0..4 {
                    stmt.execute(params![PAYLOAD, 0]).expect("insert");
                }
            }
            tx.commit().expect("commit");
            sent.set(sent.get() + 4);
        })
    });
    assert_eq!(raw_count(&conn, 0), sent.get(), "rows stored");

    g.throughput(Throughput::Elements(BATCH as u64));
    let (_d2, mut conn) = raw_db();
    let sent = Cell::new(0u64);
    g.bench_function("insert_1000_per_tx", |b| {
        b.iter(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
            {
                let mut stmt = tx.prepare_cached(RAW_INSERT).expect("prepare");
                for _ in 0..BATCH {
                    stmt.execute(params![PAYLOAD, 0]).expect("insert");
                }
            }
            tx.commit().expect("commit");
            sent.set(sent.get() + BATCH as u64);
        })
    });
    assert_eq!(raw_count(&conn, 0), sent.get(), "rows stored");

    g.throughput(Throughput::Elements(CLAIM_BATCH as u64));
    let (_d3, mut conn) = raw_db();
    let done = Cell::new(0u64);
    g.bench_function("claim_complete_100", |b| {
        b.iter_custom(|iters| {
            let tx = conn.transaction().expect("begin");
            {
                let mut stmt = tx.prepare_cached(RAW_INSERT).expect("prepare");
                for _ in 0..iters * CLAIM_BATCH as u64 {
                    stmt.execute(params![PAYLOAD, 0]).expect("fill");
                }
            }
            tx.commit().expect("commit");
            let start = Instant::now();
            for _ in 0..iters {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
                let ids: Vec<i64> = tx
                    .prepare_cached(RAW_CLAIM)
                    .expect("prepare")
                    .query_map(params![1, 60_000, CLAIM_BATCH], |r| r.get(0))
                    .expect("claim")
                    .collect::<rusqlite::Result<_>>()
                    .expect("rows");
                tx.commit().expect("commit");
                assert_eq!(ids.len(), CLAIM_BATCH as usize);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
                {
                    let mut stmt = tx.prepare_cached(RAW_COMPLETE).expect("prepare");
                    for id in &ids {
                        assert_eq!(stmt.execute(params![id, &b"ok"[..]]).expect("complete"), 1);
                    }
                }
                tx.commit().expect("commit");
            }
            let took = start.elapsed();
            done.set(done.get() + iters * CLAIM_BATCH as u64);
            took
        })
    });
    assert_eq!(raw_count(&conn, 2), done.get(), "rows completed");
    assert_eq!(raw_count(&conn, 0) + raw_count(&conn, 1), 0, "nothing left queued or running");
    g.finish();
}

criterion_group!(benches, enqueue_single, enqueue_4_threads, enqueue_batch, claim_complete, raw_sqlite);
criterion_main!(benches);
