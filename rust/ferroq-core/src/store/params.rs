//! The parameters and outcomes of the [`Store`](super::Store) verbs: one
//! params struct per verb that takes more than a single id list, key or
//! queue name.

use crate::task::Status;
use std::path::PathBuf;

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

/// Put a failed, cancelled or expired task back in the queue, with fresh
/// attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryParams {
    /// The task id.
    pub id: i64,
}

/// Look tasks up by key within one queue.
#[derive(Debug, Clone, Default)]
pub struct GetByKeyParams {
    /// The queue the keys belong to.
    pub queue: String,
    /// The keys; the answer has one entry per key, in this order.
    pub keys: Vec<String>,
}

/// Set a listen key's value.
#[derive(Debug, Clone, Default)]
pub struct ListenSetParams {
    /// The key (1..=1,000 bytes).
    pub key: String,
    /// Its new value (at most the store's `max_payload` bytes).
    pub value: Vec<u8>,
}

/// Read listen changes, oldest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenChangesParams {
    /// Only changes with a version greater than this.
    pub since: i64,
    /// At most this many (0 counts as 1).
    pub limit: u32,
}

/// Set or remove a queue's capacity.
#[derive(Debug, Clone, Default)]
pub struct CapacityParams {
    /// The queue (not empty).
    pub queue: String,
    /// Its maximum of unfinished tasks; None removes the capacity.
    pub capacity: Option<u64>,
}

/// Filters and paging for [`Store::list`](super::Store::list). Results are in id order.
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

/// Copy a live store into a new directory.
#[derive(Debug, Clone, Default)]
pub struct BackupParams {
    /// Where the copy goes: a directory that does not exist yet or is empty.
    pub dest: PathBuf,
}

/// What [`Store::check`](super::Store::check) found in one shard (the one
/// database of a PostgreSQL store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCheck {
    /// The shard file (`memory://` for an in-memory shard, the database for
    /// PostgreSQL).
    pub path: String,
    /// True when nothing is wrong.
    pub ok: bool,
    /// One line per problem found (empty when `ok`).
    pub messages: Vec<String>,
}
