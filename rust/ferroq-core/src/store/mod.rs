//! The [`Store`] trait — the one seam between ferroq and its storage — with
//! one parameter struct per verb, and [`open`], which picks a backend from a
//! URL.
//!
//! Every verb is one transaction per shard touched, and every verb has a
//! batch form. Transitions are guarded: a verb whose guard matches no row
//! reports a typed error for that item ([`Error::LeaseLost`],
//! [`Error::AlreadyFinished`], ...), never a silent no-op.

mod config;
pub mod postgres;
pub mod sqlite;

pub use config::{StoreConfig, Synchronous};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::task::{NewTask, Status, Task};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of enqueueing one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The task's id (the existing task's, when its key was taken).
    pub id: i64,
    /// False when a task with the same key already existed and nothing was stored.
    pub inserted: bool,
}

/// Claim up to `limit` ready tasks of `queue`.
#[derive(Debug, Clone)]
pub struct ClaimParams {
    /// The queue to claim from.
    pub queue: String,
    /// Who holds the lease.
    pub worker: String,
    /// At most this many tasks (1..=10,000).
    pub limit: u32,
    /// Lease length in ms (1 ms ..= 7 days).
    pub lease_ms: i64,
    /// What this worker has, as a JSON object of numbers
    /// (`{"gpu_memory_gb": 24}`). A task is claimed only if each of its
    /// requirements is at most the worker's resource of that name (missing
    /// counts as 0); tasks without requirements are always claimable.
    pub resources: Option<String>,
}

/// Extend the leases of `ids` held by `worker`.
#[derive(Debug, Clone)]
pub struct HeartbeatParams {
    /// Tasks to extend.
    pub ids: Vec<i64>,
    /// The worker holding them.
    pub worker: String,
    /// New lease length from now, in ms.
    pub lease_ms: i64,
}

/// What a heartbeat found for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// The task id.
    pub id: i64,
    /// True if the lease is still held and was extended.
    pub held: bool,
    /// True if someone asked for the task to be cancelled.
    pub cancel_requested: bool,
}

/// Record progress of a running task.
#[derive(Debug, Clone)]
pub struct ProgressParams {
    /// The task id.
    pub id: i64,
    /// The worker holding it.
    pub worker: String,
    /// Progress in 0..=1.
    pub progress: f64,
}

/// Finish a running task with a result.
#[derive(Debug, Clone)]
pub struct CompleteParams {
    /// The task id.
    pub id: i64,
    /// The worker holding it.
    pub worker: String,
    /// The serialised result.
    pub result: Vec<u8>,
}

/// What to do with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retry {
    /// Retry after the task's backoff while attempts remain.
    Backoff,
    /// Retry after this many ms while attempts remain.
    After(i64),
    /// Do not retry: the task fails for good.
    Never,
}

/// Record a failed attempt of a running task.
#[derive(Debug, Clone)]
pub struct FailParams {
    /// The task id.
    pub id: i64,
    /// The worker holding it.
    pub worker: String,
    /// Error text (type, message, traceback).
    pub error: String,
    /// Whether and when to retry.
    pub retry: Retry,
}

/// Cancel a task.
#[derive(Debug, Clone)]
pub struct CancelParams {
    /// The task id.
    pub id: i64,
    /// When set, the worker holding the running task acknowledges the
    /// cancellation, and the task moves to `cancelled` at once. When None, a
    /// queued task is cancelled at once and a running one is flagged.
    pub worker: Option<String>,
}

/// Give a claimed task back without counting the attempt.
#[derive(Debug, Clone)]
pub struct ReleaseParams {
    /// The task id.
    pub id: i64,
    /// The worker holding it.
    pub worker: String,
}

/// Recover running tasks whose lease expired (or all of one worker's).
#[derive(Debug, Clone, Default)]
pub struct RecoverParams {
    /// When set, recover every running task of this (dead) worker now,
    /// whatever its lease says.
    pub worker: Option<String>,
}

/// Filters and paging for [`Store::list`]. Results are in id order.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this batch.
    pub batch: Option<String>,
    /// Only ids greater than this (the last id of the previous page).
    pub after_id: Option<i64>,
    /// At most this many (1..=100,000).
    pub limit: u32,
}

/// Delete finished tasks.
#[derive(Debug, Clone, Default)]
pub struct PurgeParams {
    /// Also delete finished tasks that finished before this time (ms),
    /// whatever their retention. Tasks past their retention always go.
    pub finished_before: Option<i64>,
}

/// How many tasks one queue has in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The status.
    pub status: Status,
    /// How many.
    pub count: u64,
}

/// One change of listen data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenChange {
    /// Store-wide increasing version of this change.
    pub version: i64,
    /// The key changed.
    pub key: String,
    /// Its new value.
    pub value: Vec<u8>,
    /// When (ms).
    pub at: i64,
}

/// A worker process as recorded in the store (for crash detection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Unique worker id (also the lease holder name).
    pub id: String,
    /// Host name the worker runs on.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// First registration (ms; set by the store).
    pub started_at: i64,
    /// Last registration or heartbeat (ms; set by the store).
    pub heartbeat_at: i64,
    /// Queues it serves.
    pub queues: Vec<String>,
}

/// A store-wide limit on one task function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionLimit {
    /// The task name.
    pub name: String,
    /// At most this many running at once, across every worker.
    pub max_running: Option<u32>,
    /// At most this many claims per second, across every worker.
    pub rate_per_s: Option<f64>,
    /// Burst for the rate (default: max(1, rate)).
    pub burst: Option<f64>,
}

impl FunctionLimit {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::InvalidArgument("limit needs a task name".into()));
        }
        if self.max_running == Some(0) {
            return Err(Error::InvalidArgument("max_running must be >= 1".into()));
        }
        if let Some(r) = self.rate_per_s {
            if !r.is_finite() || r <= 0.0 {
                return Err(Error::InvalidArgument(format!("rate must be > 0 per second, got {r}")));
            }
        }
        if let Some(b) = self.burst {
            if !b.is_finite() || b < 1.0 {
                return Err(Error::InvalidArgument(format!("burst must be >= 1, got {b}")));
            }
        }
        Ok(())
    }

    /// The bucket size in effect.
    pub fn effective_burst(&self) -> f64 {
        self.burst.unwrap_or_else(|| self.rate_per_s.unwrap_or(1.0).max(1.0))
    }
}

/// A function limit with its stored token bucket, as a backend reads it.
pub(crate) struct StoredLimit {
    pub(crate) limit: FunctionLimit,
    pub(crate) tokens: f64,
    pub(crate) refilled_at: i64,
}

/// The arithmetic of a limited claim, shared by every backend: how many
/// tasks of each limited name a claim at `now` may take (given `running`,
/// the tasks of each name running now), and each rate-limited bucket's level
/// after refilling up to `now`. `now` must be read under the lock that
/// serialises limited claims, or a bucket could be refilled twice.
pub(crate) fn allowances(
    limits: &[StoredLimit],
    running: &std::collections::HashMap<String, u64>,
    now: i64,
) -> (std::collections::HashMap<String, u64>, std::collections::HashMap<String, f64>) {
    let mut allowance = std::collections::HashMap::new();
    let mut levels = std::collections::HashMap::new();
    for l in limits {
        let mut allow = u64::MAX;
        if let Some(max) = l.limit.max_running {
            allow = allow.min((max as u64).saturating_sub(running.get(&l.limit.name).copied().unwrap_or(0)));
        }
        if let Some(rate) = l.limit.rate_per_s {
            let elapsed = (now - l.refilled_at).max(0) as f64 / 1000.0;
            let level = (l.tokens + elapsed * rate).min(l.limit.effective_burst());
            levels.insert(l.limit.name.clone(), level);
            allow = allow.min(level.floor().max(0.0) as u64);
        }
        allowance.insert(l.limit.name.clone(), allow);
    }
    (allowance, levels)
}

/// A task whose worker crashed (its lease expired, or its worker is gone)
/// goes back to the queue while it has had fewer than
/// `max(max_attempts, RECOVERY_MIN_ATTEMPTS)` attempts. A crash is not the
/// task's failure, so a task sent without retries still gets another go;
/// the bound stops a task that kills its worker every time from looping.
pub const RECOVERY_MIN_ATTEMPTS: u32 = 3;

/// The storage seam. Everything above it is backend-blind.
pub trait Store: Send + Sync {
    /// Enqueues tasks. A task whose `key` already exists in its queue stores
    /// nothing and reports the existing id. All tasks are validated before
    /// any is stored.
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>>;
    /// Claims up to `limit` ready tasks in priority order, leasing them to
    /// the worker and counting an attempt. Returns them in claim order.
    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>>;
    /// Extends leases; reports which are still held and which were asked to cancel.
    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>>;
    /// Records progress of running tasks.
    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>>;
    /// Finishes running tasks as done.
    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>>;
    /// Records failed attempts; each item's new status is `queued` (retry
    /// scheduled) or `failed`.
    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>>;
    /// Cancels tasks; each item's new status is `cancelled`, or `running`
    /// when the task was only flagged for its worker to stop.
    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>>;
    /// Gives claimed tasks back to the queue without counting the attempt.
    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>>;
    /// Puts failed, cancelled or expired tasks back in the queue with fresh attempts.
    fn retry(&self, ids: &[i64]) -> Result<Vec<Result<()>>>;
    /// Moves running tasks with expired leases (or all of a given worker's)
    /// back to `queued`, or to `failed` when no attempts remain (see
    /// [`RECOVERY_MIN_ATTEMPTS`]).
    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>>;
    /// Moves queued tasks past their deadline to `expired`.
    fn expire(&self) -> Result<Vec<i64>>;
    /// Tasks by id (None where there is none).
    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>>;
    /// Tasks by key within a queue (None where there is none).
    fn get_by_key(&self, queue: &str, keys: &[String]) -> Result<Vec<Option<Task>>>;
    /// A page of tasks in id order.
    fn list(&self, p: &ListParams) -> Result<Vec<Task>>;
    /// Task counts per queue and status (zero counts omitted).
    fn counts(&self) -> Result<Vec<QueueCount>>;
    /// Unfinished (queued + running) tasks in one queue.
    fn unfinished(&self, queue: &str) -> Result<u64>;
    /// Deletes finished tasks past retention; returns how many.
    fn purge(&self, p: &PurgeParams) -> Result<u64>;
    /// Sets a listen key's value; returns the change's version.
    fn listen_set(&self, key: &str, value: &[u8]) -> Result<i64>;
    /// Listen changes after `since`, oldest first.
    fn listen_changes(&self, since: i64, limit: u32) -> Result<Vec<ListenChange>>;
    /// The latest change of one key.
    fn listen_get(&self, key: &str) -> Result<Option<ListenChange>>;
    /// The newest listen version (0 when none).
    fn listen_head(&self) -> Result<i64>;
    /// Earliest run_at among the queue's queued tasks that can still run
    /// (tasks past their deadline are left out).
    fn next_run_at(&self, queue: &str) -> Result<Option<i64>>;
    /// Records (or refreshes) a worker; the store sets `heartbeat_at` (and
    /// `started_at` on first registration) from its clock.
    fn register_worker(&self, w: &WorkerInfo) -> Result<()>;
    /// Every recorded worker, by id.
    fn workers(&self) -> Result<Vec<WorkerInfo>>;
    /// Forgets a worker; true if it was recorded.
    fn remove_worker(&self, id: &str) -> Result<bool>;
    /// Sets (or with None removes) a queue's maximum of unfinished tasks.
    /// Enqueue beyond it fails with [`Error::QueueFull`] and stores nothing.
    fn set_capacity(&self, queue: &str, capacity: Option<u64>) -> Result<()>;
    /// A queue's capacity, if it has one.
    fn capacity(&self, queue: &str) -> Result<Option<u64>>;
    /// Sets a store-wide limit on a task function (upsert by name; a limit
    /// with neither max_running nor rate removes it). Claims honour it.
    fn set_function_limit(&self, limit: &FunctionLimit) -> Result<()>;
    /// Every function limit, by name.
    fn function_limits(&self) -> Result<Vec<FunctionLimit>>;
    /// An opaque value that changes whenever any process commits to the store.
    fn change_token(&self) -> Result<u64>;
    /// Waits until the change token differs from `token` or `timeout` passes;
    /// true when something changed.
    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool>;
    /// The store's clock.
    fn clock(&self) -> &Arc<dyn Clock>;
    /// Human-readable description (no secrets).
    fn describe(&self) -> String;

    /// Claims, waiting up to `wait` for work to become ready. Returns as
    /// soon as at least one task is claimed.
    fn claim_wait(&self, p: &ClaimParams, wait: Duration) -> Result<Vec<Task>> {
        let deadline = Instant::now() + wait;
        loop {
            let token = self.change_token()?;
            let tasks = self.claim(p)?;
            let now = Instant::now();
            if !tasks.is_empty() || now >= deadline {
                return Ok(tasks);
            }
            let mut slice = deadline - now;
            // A delayed task becomes ready without any commit: wake for it.
            if let Some(at) = self.next_run_at(&p.queue)? {
                let until = (at - self.clock().now_ms()).max(1) as u64;
                slice = slice.min(Duration::from_millis(until));
            }
            self.wait_for_change(token, slice)?;
        }
    }

    /// Waits until task `id` is finished or `wait` passes; returns it as last seen.
    fn wait_finished(&self, id: i64, wait: Duration) -> Result<Task> {
        let deadline = Instant::now() + wait;
        loop {
            let token = self.change_token()?;
            let task = self
                .get(&[id])?
                .pop()
                .flatten()
                .ok_or_else(|| Error::NotFound(format!("task {id}")))?;
            let now = Instant::now();
            if task.status.is_finished() || now >= deadline {
                return Ok(task);
            }
            self.wait_for_change(token, deadline - now)?;
        }
    }
}

/// Opens the store a URL names, on the system clock.
///
/// * `memory://` — an in-memory store (for tests; gone when closed);
/// * `sqlite:///abs/path?shards=4&synchronous=full`, `sqlite://rel/path`, or
///   a plain path — a directory of SQLite shard files;
/// * `postgresql://user:password@host:port/db?schema=ferroq&pool=10` (or
///   `postgres://`) — a PostgreSQL database shared by many hosts (see
///   [`postgres::PgConfig::parse`] for the options).
pub fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with_clock(url, Arc::new(SystemClock::new()))
}

/// Opens the store a URL names, on the given clock.
pub fn open_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>> {
    if postgres::PgConfig::is_postgres_url(url) {
        let config = postgres::PgConfig::parse(url)?;
        return Ok(Arc::new(postgres::PostgresStore::open(config, clock)?));
    }
    let config = StoreConfig::parse(url)?;
    Ok(Arc::new(sqlite::SqliteStore::open(config, clock)?))
}

/// Checks a claim's numbers.
pub(crate) fn check_claim(p: &ClaimParams) -> Result<()> {
    if let Some(r) = &p.resources {
        crate::task::check_resources("resources", r)?;
    }
    if !(1..=10_000).contains(&p.limit) {
        return Err(Error::InvalidArgument(format!("claim limit {} is outside 1..=10000", p.limit)));
    }
    check_lease(p.lease_ms)?;
    if p.worker.is_empty() {
        return Err(Error::InvalidArgument("worker id must not be empty".into()));
    }
    Ok(())
}

/// Checks a lease length.
pub(crate) fn check_lease(lease_ms: i64) -> Result<()> {
    const WEEK_MS: i64 = 7 * 24 * 3_600_000;
    if !(1..=WEEK_MS).contains(&lease_ms) {
        return Err(Error::InvalidArgument(format!(
            "lease of {lease_ms} ms is outside 1 ms ..= 7 days"
        )));
    }
    Ok(())
}
