//! The [`Store`] trait — the one seam between ferroq and its storage — and
//! [`open`], which picks a backend from a URL. The verbs' parameter structs
//! are in `params.rs`, function limits in `limits.rs`, and the decisions
//! every backend shares (checks, retry and recovery, guard errors) in
//! `rules.rs`.
//!
//! Every verb is one transaction per shard touched, and every verb has a
//! batch form. Transitions are guarded: a verb whose guard matches no row
//! reports a typed error for that item ([`LeaseLost`](crate::Error::LeaseLost),
//! [`AlreadyFinished`](crate::Error::AlreadyFinished), ...), never a silent no-op.

mod config;
mod limits;
mod params;
pub mod postgres;
pub(crate) mod rules;
pub mod sqlite;

pub use config::{StoreConfig, Synchronous};
pub use limits::FunctionLimit;
pub(crate) use limits::{allowances, StoredLimit};
pub use params::ShardCheck;
pub use params::{
    BackupParams, CancelParams, CapacityParams, ClaimParams, CompleteParams, Enqueued, FailParams, GetByKeyParams,
    HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams, ProgressParams,
    PurgeParams, QueueCount, RecoverParams, ReleaseParams, Retry, RetryParams, WorkerInfo,
};

use crate::clock::{Clock, SystemClock};
use crate::error::Result;
use crate::task::{NewTask, Status, Task};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task whose worker crashed (its lease expired, or its worker is gone)
/// goes back to the queue while it has had fewer than
/// `max(max_attempts, RECOVERY_MIN_ATTEMPTS)` attempts. A crash is not the
/// task's failure, so a task sent without retries still gets another go;
/// the bound stops a task that kills its worker every time from looping.
pub const RECOVERY_MIN_ATTEMPTS: u32 = 3;

/// The storage seam. Everything above it is backend-blind.
///
/// This is an internal seam between ferroq's own layers, public so that the
/// binding and the conformance suite can reach it: it may change in any
/// release, and is not meant to be implemented outside this crate. Verbs
/// that take more than one id list, key or queue name take a params struct.
pub trait Store: Send + Sync {
    /// Enqueues tasks. A task whose `key` already exists in its queue stores
    /// nothing and reports the existing id. All tasks are validated before
    /// any is stored.
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>>;
    /// Claims up to `limit` ready tasks in priority order, leasing them to
    /// the worker and counting an attempt. Returns them in claim order.
    /// A task found damaged on the way (SQLite: its payload fails its
    /// checksum) is not returned: it moves to `failed` with the damage as
    /// its error, and the rest of the batch is claimed.
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
    fn retry(&self, p: &[RetryParams]) -> Result<Vec<Result<()>>>;
    /// Moves running tasks with expired leases (or all of a given worker's)
    /// back to `queued`, or to `failed` when no attempts remain (see
    /// [`RECOVERY_MIN_ATTEMPTS`]).
    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>>;
    /// Moves queued tasks past their deadline to `expired`.
    fn expire(&self) -> Result<Vec<i64>>;
    /// Tasks by id (None where there is none).
    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>>;
    /// Tasks by key within a queue (None where there is none).
    fn get_by_key(&self, p: &GetByKeyParams) -> Result<Vec<Option<Task>>>;
    /// A page of tasks in id order.
    fn list(&self, p: &ListParams) -> Result<Vec<Task>>;
    /// Task counts per queue and status (zero counts omitted).
    fn counts(&self) -> Result<Vec<QueueCount>>;
    /// Unfinished (queued + running) tasks in one queue.
    fn unfinished(&self, queue: &str) -> Result<u64>;
    /// Deletes finished tasks past retention; returns how many.
    fn purge(&self, p: &PurgeParams) -> Result<u64>;
    /// Sets a listen key's value; returns the change's version.
    fn listen_set(&self, p: &ListenSetParams) -> Result<i64>;
    /// Listen changes after `p.since`, oldest first.
    fn listen_changes(&self, p: &ListenChangesParams) -> Result<Vec<ListenChange>>;
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
    /// Enqueue beyond it fails with [`QueueFull`](crate::Error::QueueFull) and stores nothing.
    fn set_capacity(&self, p: &CapacityParams) -> Result<()>;
    /// A queue's capacity, if it has one.
    fn capacity(&self, queue: &str) -> Result<Option<u64>>;
    /// Sets a store-wide limit on a task function (upsert by name; a limit
    /// with neither max_running nor rate removes it). Claims honour it.
    fn set_function_limit(&self, limit: &FunctionLimit) -> Result<()>;
    /// Every function limit, by name.
    fn function_limits(&self) -> Result<Vec<FunctionLimit>>;
    /// Copies the store, while it is in use, into `p.dest` (a new or empty
    /// directory; anything else is [`InvalidArgument`](crate::Error::InvalidArgument)).
    /// The copy opens as a store of the same shard count holding every
    /// task committed before the call began. SQLite and memory stores only:
    /// a PostgreSQL store is backed up with `pg_dump` (InvalidArgument).
    fn backup(&self, p: &BackupParams) -> Result<()>;
    /// Checks the store's integrity, shard by shard: the database's own
    /// structure check, that each shard belongs to this store at its place,
    /// and the checksum of every stored payload and result. Slow on a big
    /// store (it reads everything) and holds each shard while checking it:
    /// a repair tool (`ferroq doctor`), not a health probe. Problems are
    /// reported, not raised; an error means the check itself could not run.
    fn check(&self) -> Result<Vec<ShardCheck>>;
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
            let task = self.get(&[id])?.pop().flatten().ok_or_else(|| rules::task_not_found(id))?;
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
