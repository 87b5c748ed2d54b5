//! Backends, a fixture that opens one on a manual clock, and short helpers
//! for the verbs so the tests read as behaviour, not plumbing.

use ferroq_core::store::{
    CancelParams, ClaimParams, CompleteParams, Enqueued, FailParams, ReleaseParams, Retry, RetryParams,
};
use ferroq_core::{Error, ManualClock, NewTask, Status, Store, Task};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// Wall-clock start of every test's manual clock (Nov 2023, in ms).
pub const T0: i64 = 1_700_000_000_000;

/// A backend the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `memory://`
    Memory,
    /// `memory://?shards=4`
    Memory4,
    /// A SQLite store of 1 shard in a temp dir.
    Sqlite1,
    /// A SQLite store of 4 shards in a temp dir.
    Sqlite4,
    /// A fresh schema in the PostgreSQL database `$FERROQ_TEST_PG_URL`
    /// names (skipped when it is not set; `scripts/test` always sets it).
    Postgres,
    /// A fresh key prefix in the Redis database `$FERROQ_TEST_REDIS_URL`
    /// names (skipped when it is not set; `scripts/test` always sets it).
    Redis,
}

/// The variable naming the test Redis database (`scripts/redis url`).
pub const REDIS_URL_VAR: &str = "FERROQ_TEST_REDIS_URL";

/// The variable naming the test PostgreSQL database (`scripts/pg url`).
pub const PG_URL_VAR: &str = "FERROQ_TEST_PG_URL";

impl Backend {
    /// Shards the backend is opened with.
    pub fn shards(self) -> u32 {
        match self {
            Backend::Memory | Backend::Sqlite1 | Backend::Postgres | Backend::Redis => 1,
            Backend::Memory4 | Backend::Sqlite4 => 4,
        }
    }

    /// True for backends stored in files.
    pub fn on_disk(self) -> bool {
        matches!(self, Backend::Sqlite1 | Backend::Sqlite4)
    }

    /// Why this backend cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Backend::Postgres if std::env::var(PG_URL_VAR).map_or(true, |v| v.is_empty()) => Some(format!(
                "skipped: {PG_URL_VAR} is not set (scripts/test starts a server with scripts/pg and sets it)"
            )),
            Backend::Redis if std::env::var(REDIS_URL_VAR).map_or(true, |v| v.is_empty()) => Some(format!(
                "skipped: {REDIS_URL_VAR} is not set (scripts/test starts a server with scripts/redis and sets it)"
            )),
            _ => None,
        }
    }

    /// Opens a fresh store of this backend.
    pub fn open(self) -> Env {
        self.open_with("")
    }

    /// Opens a fresh store with extra URL options (`"max_payload=100"`).
    pub fn open_with(self, options: &str) -> Env {
        let dir = if self.on_disk() { Some(tempfile::tempdir().unwrap()) } else { None };
        let path = dir.as_ref().map(|d| d.path().join("store"));
        let clock = Arc::new(ManualClock::new(T0));
        let (url, pg_schema) = if self == Backend::Postgres {
            let schema = format!("t_{:016x}", rand_u64());
            let base = std::env::var(PG_URL_VAR).unwrap();
            let mut url = format!("{base}?schema={schema}");
            if !options.is_empty() {
                url = format!("{url}&{options}");
            }
            (url, Some(schema))
        } else if self == Backend::Redis {
            let prefix = format!("t_{:016x}", rand_u64());
            let base = std::env::var(REDIS_URL_VAR).unwrap();
            let mut url = format!("{base}?prefix={prefix}");
            if !options.is_empty() {
                url = format!("{url}&{options}");
            }
            (url, Some(format!("redis:{prefix}")))
        } else {
            (url_for(self, path.as_ref(), options), None)
        };
        let store = ferroq_core::open_with_clock(&url, clock.clone()).unwrap();
        let _drop_schema = pg_schema.clone().map(DropSchema);
        Env { store, clock, url, path, pg_schema, _drop_schema, _dir: dir }
    }
}

/// The URL of a backend's store at `path` (None for memory) with options.
pub fn url_for(b: Backend, path: Option<&PathBuf>, options: &str) -> String {
    let mut opts: Vec<String> = Vec::new();
    if b.shards() > 1 {
        opts.push(format!("shards={}", b.shards()));
    }
    if !options.is_empty() {
        opts.push(options.to_string());
    }
    let base = match path {
        None => "memory://".to_string(),
        Some(p) => format!("sqlite://{}", p.display()),
    };
    if opts.is_empty() {
        base
    } else {
        format!("{base}?{}", opts.join("&"))
    }
}

/// An open store and the clock it runs on.
pub struct Env {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// Its clock; `advance` it to move time.
    pub clock: Arc<ManualClock>,
    /// The URL it was opened with.
    pub url: String,
    /// The store directory (on-disk backends).
    pub path: Option<PathBuf>,
    /// The schema of a PostgreSQL store (dropped with the Env).
    pub pg_schema: Option<String>,
    _drop_schema: Option<DropSchema>,
    _dir: Option<TempDir>,
}

/// A random number for schema names (distinct across test threads and runs).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// Drops a test's PostgreSQL schema when the test's Env goes (after its
/// store, which is declared first), leaving the shared database as it was.
pub struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        if let Some(prefix) = self.0.strip_prefix("redis:") {
            drop_redis_prefix(prefix);
            return;
        }
        let schema = &self.0;
        if let Ok(base) = std::env::var(PG_URL_VAR) {
            if let Ok(mut c) = postgres::Client::connect(&base, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

/// Deletes every key a test's Redis store wrote (its prefix), leaving the
/// shared database as it was.
fn drop_redis_prefix(prefix: &str) {
    let Ok(base) = std::env::var(REDIS_URL_VAR) else { return };
    let Ok(client) = redis::Client::open(base.as_str()) else { return };
    let Ok(mut c) = client.get_connection() else { return };
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut c).unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut c);
    }
}

impl Env {
    /// Moves the store's clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.clock.advance(Duration::from_millis(ms as u64));
    }

    /// The clock's wall time.
    pub fn now(&self) -> i64 {
        use ferroq_core::Clock;
        self.clock.now_ms()
    }

    /// Enqueues one task; panics on error.
    pub fn enqueue(&self, t: NewTask) -> Enqueued {
        let out = self.store.enqueue(&[t]).unwrap();
        assert_eq!(out.len(), 1);
        out[0]
    }

    /// Enqueues a default task on `queue` and returns its id.
    pub fn add(&self, queue: &str) -> i64 {
        self.enqueue(task(queue)).id
    }

    /// Claims up to `limit` tasks of `queue` for `worker` with a 30 s lease.
    pub fn claim(&self, queue: &str, worker: &str, limit: u32) -> Vec<Task> {
        self.claim_lease(queue, worker, limit, 30_000)
    }

    /// Claims with a given lease.
    pub fn claim_lease(&self, queue: &str, worker: &str, limit: u32, lease_ms: i64) -> Vec<Task> {
        self.store
            .claim(&ClaimParams {
                queue: queue.into(),
                worker: worker.into(),
                limit,
                lease_ms,
                resources: None,
                home: None,
            })
            .unwrap()
    }

    /// Claims exactly one task and returns it.
    pub fn claim_one(&self, queue: &str, worker: &str) -> Task {
        let mut got = self.claim(queue, worker, 1);
        assert_eq!(got.len(), 1, "expected one task to claim in {queue:?}");
        got.pop().unwrap()
    }

    /// The task with `id`; panics when absent.
    pub fn get(&self, id: i64) -> Task {
        self.store.get(&[id]).unwrap().pop().flatten().unwrap_or_else(|| panic!("task {id} is gone"))
    }

    /// Whether a task with `id` exists.
    pub fn exists(&self, id: i64) -> bool {
        self.store.get(&[id]).unwrap()[0].is_some()
    }

    /// Completes one task; returns the per-item outcome.
    pub fn complete(&self, id: i64, worker: &str, result: &[u8]) -> Result<(), Error> {
        self.store
            .complete(&[CompleteParams { id, worker: worker.into(), result: result.to_vec(), force: false }])
            .unwrap()
            .pop()
            .unwrap()
    }

    /// Fails one attempt; returns the per-item outcome.
    pub fn fail(&self, id: i64, worker: &str, error: &str, retry: Retry) -> Result<Status, Error> {
        self.store
            .fail(&[FailParams { id, worker: worker.into(), error: error.into(), retry, force: false }])
            .unwrap()
            .pop()
            .unwrap()
    }

    /// Cancels one task (acknowledged by `worker` when given).
    pub fn cancel(&self, id: i64, worker: Option<&str>) -> Result<Status, Error> {
        self.store.cancel(&[CancelParams { id, worker: worker.map(String::from) }]).unwrap().pop().unwrap()
    }

    /// Releases one task.
    pub fn release(&self, id: i64, worker: &str) -> Result<(), Error> {
        self.store.release(&[ReleaseParams { id, worker: worker.into(), force: false }]).unwrap().pop().unwrap()
    }

    /// Retries one task.
    pub fn retry(&self, id: i64) -> Result<(), Error> {
        self.store.retry(&[RetryParams { id }]).unwrap().pop().unwrap()
    }

    /// Count of tasks in `queue` with `status` (0 when absent).
    pub fn count(&self, queue: &str, status: Status) -> u64 {
        self.store
            .counts()
            .unwrap()
            .into_iter()
            .find(|c| c.queue == queue && c.status == status)
            .map(|c| c.count)
            .unwrap_or(0)
    }

    /// Total tasks stored, any queue, any status.
    pub fn total(&self) -> u64 {
        self.store.counts().unwrap().iter().map(|c| c.count).sum()
    }
}

/// A default task (`job`, payload `b"p"`) on `queue`.
pub fn task(queue: &str) -> NewTask {
    NewTask::new(queue, "job", b"p".to_vec())
}

/// A task with a priority.
pub fn prio(queue: &str, priority: i64) -> NewTask {
    NewTask { priority, ..task(queue) }
}

/// A task with an idempotency key.
pub fn keyed(queue: &str, key: &str) -> NewTask {
    NewTask { key: Some(key.into()), ..task(queue) }
}

/// A task allowed `n` attempts.
pub fn attempts(queue: &str, n: u32) -> NewTask {
    NewTask { max_attempts: n, ..task(queue) }
}

/// Asserts an error is `LeaseLost` with the given current status.
#[track_caller]
pub fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, Error>, id: i64, now: Status) {
    match r {
        Err(Error::LeaseLost { id: got, status, .. }) => {
            assert_eq!(got, id);
            assert_eq!(status, now);
        }
        other => panic!("expected LeaseLost on {id} ({now}), got {other:?}"),
    }
}

/// Asserts an error is `AlreadyFinished` with the given final status.
#[track_caller]
pub fn assert_finished<T: std::fmt::Debug>(r: Result<T, Error>, id: i64, now: Status) {
    match r {
        Err(Error::AlreadyFinished { id: got, status }) => {
            assert_eq!(got, id);
            assert_eq!(status, now);
        }
        other => panic!("expected AlreadyFinished on {id} ({now}), got {other:?}"),
    }
}

/// Asserts an error is `NotFound`.
#[track_caller]
pub fn assert_not_found<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::NotFound(_))), "expected NotFound, got {r:?}");
}

/// Asserts an error is `InvalidArgument`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "expected InvalidArgument, got {r:?}");
}
