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
//!
//! Claim order: the highest priority first (any 64-bit integer), then the
//! earliest `run_at`, then the lowest id (enqueue order).
//!
//! Steering from outside (an operator, a web page, another service) uses
//! the by-id verbs: `start`, `complete`/`fail`/`progress`/`heartbeat`/
//! `release` with `force`, `cancel`, `requeue`, `set_priority`,
//! `set_run_at` and `set_metadata`. Their guards:
//!
//! | verb | needs | otherwise |
//! |------|-------|-----------|
//! | `start` | queued (any `run_at`) | NotFound, InvalidTransition (running), AlreadyFinished |
//! | `complete`, `fail`, `progress`, `heartbeat`, `release` | running under `worker` | NotFound, LeaseLost, AlreadyFinished |
//! | the same with `force` | running under anyone | NotFound, InvalidTransition (queued), AlreadyFinished |
//! | `cancel` | queued (cancelled now) or running (flagged) | NotFound, AlreadyFinished |
//! | `requeue` | done, failed, cancelled or expired | NotFound, InvalidTransition (queued, running) |
//! | `retry` | failed, cancelled or expired | NotFound, InvalidTransition |
//! | `set_priority`, `set_run_at` | queued | NotFound, InvalidTransition (running), AlreadyFinished |
//! | `set_metadata` | any status | NotFound; InvalidArgument / PayloadTooLarge for bad JSON |
//!
//! A cancel of a running task sticks: the task ends `cancelled` whichever
//! way its run ends — complete (the result is kept on the cancelled task),
//! fail, release, lease expiry or a dead worker (`recover`), an answer
//! deadline, or being switched out of a serial queue — and never runs again.
//!
//! Flows (chains, groups, chords) are task dependencies kept in the
//! store: [`Store::enqueue_flow`] stores a task with its parents; while a
//! parent is unfinished the task is `waiting` (never claimed). The
//! transaction that finishes its last parent releases it to `queued`
//! where the backend can (PostgreSQL; SQLite when the parents live on the
//! child's shard); otherwise the finishing call releases it right after
//! its commit, and `recover` sweeps waiting tasks so that a crash between
//! the two loses nothing. A parent that ends in any other way (failed,
//! cancelled, expired) cancels its dependents, transitively, naming it. A
//! finished parent is not purged while a dependent is unfinished: the
//! dependent reads its result when it runs.
//!
//! Serial queues (`QueueOptions::serial`) have at most one running task,
//! store-wide: claims, `start` and `active` of a serial queue are
//! serialised (SQLite: on shard 0's write lock, across processes;
//! PostgreSQL: on a transaction-scoped advisory lock per queue), count the
//! queue's running tasks and hand out at most one. `start` on a serial
//! queue switches: the running task goes back to `queued` (its attempt not
//! counted) and the chosen one runs.

mod config;
pub mod events;
mod limits;
mod params;
pub mod postgres;
pub mod redis;
pub(crate) mod rules;
pub mod sqlite;

pub use config::{StoreConfig, Synchronous};
pub use events::{Event, EventKind, EventsPage, EventsParams};
pub use limits::FunctionLimit;
pub(crate) use limits::{allowances, StoredLimit};
pub use params::ShardCheck;
pub use params::{
    ActiveParams, Dep, EnqueueParams, FlowTask, OnDuplicate, OnTimeout, PauseParams, QueueOptions, RequeueParams,
    SetMetadataParams, SetPriorityParams, SetRunAtParams, StartParams,
};
pub use params::{
    BackupParams, CancelParams, CapacityParams, ClaimParams, CompleteParams, Enqueued, FailParams, GetByKeyParams,
    HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams, ProgressParams,
    PurgeParams, QueueCount, RecoverParams, ReleaseParams, Retry, RetryParams, WorkerInfo,
};
pub use rules::claim_rank;

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
    /// Enqueues tasks, choosing what a taken key does: with
    /// [`OnDuplicate::Error`], a key that exists in its queue (or that the
    /// batch names twice) refuses the whole batch with
    /// [`DuplicateKey`](crate::Error::DuplicateKey), storing nothing.
    fn enqueue_with(&self, p: &EnqueueParams<'_>) -> Result<Vec<Enqueued>>;
    /// Claims up to `limit` ready tasks in priority order, leasing them to
    /// the worker and counting an attempt. Returns them in claim order.
    /// On a serial queue, at most one task runs at a time: a claim hands
    /// out one task when none is running, else nothing. On a queue with an
    /// answer timeout, the lease is that timeout.
    /// A task found damaged on the way (SQLite: its payload fails its
    /// checksum) is not returned: it moves to `failed` with the damage as
    /// its error, and the rest of the batch is claimed.
    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>>;
    /// Enqueues the steps of a flow: each task with the tasks it waits
    /// for (ids already stored, or earlier tasks of this batch). A task
    /// with parents starts `waiting`, or `queued` when they are all done
    /// already, or is `cancelled` at once when one of them ended otherwise.
    /// A parent id that names no task is [`NotFound`](crate::Error::NotFound)
    /// and stores nothing; a task whose key is taken reports the existing
    /// task and adds no dependency. Keys dedupe as in [`Store::enqueue`].
    fn enqueue_flow(&self, tasks: &[FlowTask]) -> Result<Vec<Enqueued>>;
    /// The parents of each task (empty for a task without), in the order
    /// they were given to [`Store::enqueue_flow`]; a task that does not
    /// exist has none.
    fn dependencies(&self, ids: &[i64]) -> Result<Vec<Vec<i64>>>;
    /// Hands chosen queued tasks to a worker (marks them running, counting
    /// an attempt), whatever their `run_at`; returns each task as started.
    /// On a serial queue, the task running there goes back to `queued`
    /// (attempt not counted; `cancelled` if its cancel was asked) first.
    fn start(&self, p: &[StartParams]) -> Result<Vec<Result<Task>>>;
    /// The active task of a queue: the one running there (the earliest
    /// started) if any, else the next ready one, claimed for `p.worker`,
    /// else None. Concurrent calls never hand out two tasks: the call is
    /// serialised like a serial queue's claim, whether or not the queue is
    /// declared serial.
    fn active(&self, p: &ActiveParams) -> Result<Option<Task>>;
    /// Puts finished tasks (done, failed, cancelled or expired) back in the
    /// queue with fresh attempts, now; a done task's result is dropped.
    fn requeue(&self, p: &[RequeueParams]) -> Result<Vec<Result<()>>>;
    /// Changes the priority of queued tasks.
    fn set_priority(&self, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>>;
    /// Changes when queued tasks may run.
    fn set_run_at(&self, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>>;
    /// Attaches, replaces or removes user metadata (JSON) on tasks of any status.
    fn set_metadata(&self, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>>;
    /// Sets a queue's options (replacing the previous ones; its capacity is
    /// kept).
    fn set_queue_options(&self, o: &QueueOptions) -> Result<()>;
    /// Pauses or resumes a queue, store-wide and durably. A paused queue
    /// takes sends but hands nothing out: claims (and `claim_wait`) find
    /// nothing, `start` is [`QueuePaused`](crate::Error::QueuePaused), and
    /// `active` reports a task already running but starts none. Running
    /// tasks finish as usual. Its other options are kept.
    fn set_paused(&self, p: &PauseParams) -> Result<()>;
    /// A queue's options (the defaults when none were set).
    fn queue_options(&self, queue: &str) -> Result<QueueOptions>;
    /// The options of every queue that has some, by queue name.
    fn all_queue_options(&self) -> Result<Vec<QueueOptions>>;
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
    /// Deletes finished tasks (done, failed, cancelled or expired) now,
    /// whatever their retention, freeing their keys. An unfinished task
    /// is `InvalidTransition` (cancel it first); an unknown id `NotFound`.
    fn delete(&self, ids: &[i64]) -> Result<Vec<Result<()>>>;
    /// Moves running tasks with expired leases (or all of a given worker's)
    /// back to `queued`, or to `failed` when no attempts remain (see
    /// [`RECOVERY_MIN_ATTEMPTS`]). A task whose cancel was asked ends
    /// `cancelled`; one whose answer deadline passed (its queue has an
    /// answer timeout) follows the queue's `on_timeout`.
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
    /// Sets a listen key's value; returns the change's version. A value
    /// equal to the key's current one is not a change: nothing is
    /// recorded and the current version is returned.
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
    /// Events after `p.after`, oldest first, and the cursor after them
    /// (see [`events`] for positions and cursors).
    fn events(&self, p: &EventsParams) -> Result<EventsPage>;
    /// The cursor after the newest event: a follower that starts from it
    /// sees only what happens next.
    fn events_head(&self) -> Result<String>;
    /// Stores a consumer's event cursor (any process can resume from it).
    fn event_cursor_set(&self, consumer: &str, cursor: &str) -> Result<()>;
    /// A consumer's stored event cursor, if it stored one.
    fn event_cursor_get(&self, consumer: &str) -> Result<Option<String>>;
    /// Records that the callbacks of finished tasks ran (a `delivered`
    /// event each); a task that is not finished is
    /// [`InvalidTransition`](crate::Error::InvalidTransition).
    fn ack_callbacks(&self, ids: &[i64]) -> Result<Vec<Result<()>>>;
    /// Every listen key with its latest value and version, by key.
    fn listen_keys(&self) -> Result<Vec<ListenChange>>;
    /// Stores the last listen version a consumer handled.
    fn listen_cursor_set(&self, consumer: &str, version: i64) -> Result<()>;
    /// The last listen version a consumer stored, if it stored one.
    fn listen_cursor_get(&self, consumer: &str) -> Result<Option<i64>>;
    /// An opaque value that changes whenever any process commits to the store.
    fn change_token(&self) -> Result<u64>;
    /// Wakes every thread of this process waiting on this store (in
    /// `wait_for_change`, `claim_wait`, `wait_finished`) as a commit would,
    /// writing nothing: a loop told to stop sees it at once.
    fn wake(&self);
    /// How many times [`Store::wake`] was called on this handle: a wait
    /// that sees it change gives up early (a scheduler stopping).
    /// `claim_wait` returns empty when woken so.
    fn wake_count(&self) -> u64 {
        0
    }
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
        self.claim_gathering(p, wait, Duration::ZERO)
    }

    /// [`Store::claim_wait`] that, once it has waited and sees a change,
    /// waits `gather` more before claiming (even past `wait`): work sent a
    /// task at a time then arrives in batches, one claim and one wake-up
    /// for several tasks, for up to `gather` more latency. A claim that
    /// finds work without waiting takes it at once.
    fn claim_gathering(&self, p: &ClaimParams, wait: Duration, gather: Duration) -> Result<Vec<Task>> {
        let deadline = Instant::now() + wait;
        let woken = self.wake_count();
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
            let changed = self.wait_for_change(token, slice)?;
            if self.wake_count() != woken {
                return Ok(Vec::new());
            }
            if changed && !gather.is_zero() {
                // The whole `gather`, even past `wait` (a caller waiting in
                // slices would otherwise cut it short), in steps short
                // enough that a wake (a scheduler stopping) ends it soon.
                let until = Instant::now() + gather;
                while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                    if self.wake_count() != woken {
                        return Ok(Vec::new());
                    }
                }
                return self.claim(p);
            }
        }
    }

    /// Waits until the listen data holds a version newer than `after`,
    /// `timeout` passes or [`Store::wake`] is called; returns the newest
    /// version. The waiting happens here, so commits that change no listen
    /// data (every task's claim and completion) cost the caller nothing.
    fn wait_listen(&self, after: i64, timeout: Duration) -> Result<i64> {
        let deadline = Instant::now() + timeout;
        let woken = self.wake_count();
        loop {
            let token = self.change_token()?;
            let head = self.listen_head()?;
            let now = Instant::now();
            if head > after || now >= deadline || self.wake_count() != woken {
                return Ok(head);
            }
            self.wait_for_change(token, deadline - now)?;
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
///   [`postgres::PgConfig::parse`] for the options);
/// * `redis://[user][:password@]host:port/db?prefix=ferroq` — a Redis
///   database shared by many hosts (see [`redis::RedisConfig::parse`]).
pub fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with_clock(url, Arc::new(SystemClock::new()))
}

/// Opens the store a URL names, on the given clock.
pub fn open_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>> {
    if redis::RedisConfig::is_redis_url(url) {
        let config = redis::RedisConfig::parse(url)?;
        return Ok(Arc::new(redis::RedisStore::open(config, clock)?));
    }
    if postgres::PgConfig::is_postgres_url(url) {
        let config = postgres::PgConfig::parse(url)?;
        return Ok(Arc::new(postgres::PostgresStore::open(config, clock)?));
    }
    let config = StoreConfig::parse(url)?;
    Ok(Arc::new(sqlite::SqliteStore::open(config, clock)?))
}
