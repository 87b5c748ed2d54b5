//! The parameters and outcomes of the [`Store`](super::Store) verbs: one
//! params struct per verb that takes more than a single id list, key or
//! queue name.

use crate::task::{NewTask, Status};
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
    /// The claimer's place among the store's claimers, `(index, count)`:
    /// claimer `index` of `count` (a worker thread of a worker process).
    /// A sharded SQLite store serves it from its home shards
    /// (`rules::home_shards`) while they
    /// hold work at least as urgent as the others'; PostgreSQL (one table),
    /// Redis (one ready set) and a single shard ignore it. None: no home,
    /// every shard alike.
    pub home: Option<(u32, u32)>,
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
    /// Act without holding the lease (an operator's override): the task
    /// must be running, under any worker. Without it, a task not held by
    /// `worker` is [`LeaseLost`](crate::Error::LeaseLost).
    pub force: bool,
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
    /// Act without holding the lease (an operator's override): the task
    /// must be running, under any worker. Without it, a task not held by
    /// `worker` is [`LeaseLost`](crate::Error::LeaseLost).
    pub force: bool,
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
    /// Act without holding the lease (an operator's override): the task
    /// must be running, under any worker. Without it, a task not held by
    /// `worker` is [`LeaseLost`](crate::Error::LeaseLost).
    pub force: bool,
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
    /// Act without holding the lease (an operator's override): the task
    /// must be running, under any worker. Without it, a task not held by
    /// `worker` is [`LeaseLost`](crate::Error::LeaseLost).
    pub force: bool,
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
    /// Act without holding the lease (an operator's override): the task
    /// must be running, under any worker. Without it, a task not held by
    /// `worker` is [`LeaseLost`](crate::Error::LeaseLost).
    pub force: bool,
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
    /// Only tasks of this function name.
    pub name: Option<String>,
    /// Only the task with this idempotency key.
    pub key: Option<String>,
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

/// What an enqueue does with a task whose key is taken in its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDuplicate {
    /// Store nothing and report the existing task (idempotent enqueue).
    #[default]
    Existing,
    /// Refuse the whole batch with [`DuplicateKey`](crate::Error::DuplicateKey):
    /// nothing of it is stored. A key named twice in the batch is refused too.
    Error,
}

/// Enqueue a batch, choosing what a taken key does.
#[derive(Debug, Clone, Copy)]
pub struct EnqueueParams<'a> {
    /// The tasks.
    pub tasks: &'a [NewTask],
    /// What a taken key does.
    pub on_duplicate: OnDuplicate,
}

/// Hand a chosen queued task to a worker (mark it running), from outside.
#[derive(Debug, Clone)]
pub struct StartParams {
    /// The task id.
    pub id: i64,
    /// Who will hold it.
    pub worker: String,
    /// Lease length in ms (1 ms ..= 7 days); a queue with an answer
    /// timeout uses that instead.
    pub lease_ms: i64,
}

/// Hand out the active task of a queue: the running one if there is one,
/// else the next ready task (claimed for `worker`).
#[derive(Debug, Clone)]
pub struct ActiveParams {
    /// The queue.
    pub queue: String,
    /// Who holds a task handed out now.
    pub worker: String,
    /// Lease length in ms for a task handed out now (as in a claim).
    pub lease_ms: i64,
}

impl ActiveParams {
    /// The one-task claim that hands out the next ready task (checked by
    /// `rules::check_claim` like any claim).
    pub fn as_claim(&self) -> ClaimParams {
        ClaimParams {
            queue: self.queue.clone(),
            worker: self.worker.clone(),
            limit: 1,
            lease_ms: self.lease_ms,
            resources: None,
            home: None,
        }
    }
}

/// Put a finished task (done, failed, cancelled or expired) back in the
/// queue with fresh attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequeueParams {
    /// The task id.
    pub id: i64,
}

/// Change the priority of a queued task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetPriorityParams {
    /// The task id.
    pub id: i64,
    /// Its new priority (any 64-bit integer).
    pub priority: i64,
}

/// Change when a queued task may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetRunAtParams {
    /// The task id.
    pub id: i64,
    /// Its new earliest start (ms since the epoch).
    pub run_at: i64,
}

/// Attach, replace or remove a task's user metadata (any status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMetadataParams {
    /// The task id.
    pub id: i64,
    /// JSON text (at most 64 KiB); None removes it.
    pub metadata: Option<String>,
}

/// What happens to a handed-out task whose answer deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// Back to `queued`, in its old place, the attempt not counted.
    #[default]
    Requeue,
    /// To `expired`, for good.
    Expire,
}

impl OnTimeout {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Requeue => "requeue",
            OnTimeout::Expire => "expire",
        }
    }

    /// The policy of a name.
    pub fn parse(name: &str) -> crate::Result<Self> {
        match name {
            "requeue" => Ok(OnTimeout::Requeue),
            "expire" => Ok(OnTimeout::Expire),
            _ => Err(crate::Error::InvalidArgument(format!("on_timeout must be 'requeue' or 'expire', got {name:?}"))),
        }
    }

    /// The stored integer code.
    pub fn code(self) -> i64 {
        match self {
            OnTimeout::Requeue => 0,
            OnTimeout::Expire => 1,
        }
    }

    /// The policy of a stored code (anything unknown reads as requeue).
    pub fn from_code(code: i64) -> Self {
        if code == 1 {
            OnTimeout::Expire
        } else {
            OnTimeout::Requeue
        }
    }
}

/// Per-queue settings (besides its capacity).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueOptions {
    /// The queue (not empty).
    pub queue: String,
    /// At most one task of the queue running at a time, store-wide.
    pub serial: bool,
    /// A task handed out (claimed, started, made active) must be answered
    /// within this many ms: its lease is this long instead of the
    /// claimer's, and a heartbeat extends it. None: no answer deadline.
    pub answer_timeout_ms: Option<i64>,
    /// What happens when the answer deadline passes (applied by `recover`).
    pub on_timeout: OnTimeout,
    /// Finished tasks of the queue are kept this long (ms) and then purged,
    /// instead of the store's default retention; a task's own result TTL
    /// still comes first. Applies to tasks finishing after it is set.
    pub retention_ms: Option<i64>,
    /// Whether the queue is paused: it takes sends but hands nothing out
    /// (claims find nothing, `start` is refused, `active` reports only a
    /// task already running). Set by [`Store::set_paused`](super::Store::set_paused)
    /// alone: [`Store::set_queue_options`](super::Store::set_queue_options)
    /// ignores this field and keeps the queue's state.
    pub paused: bool,
    /// Priority aging: a queued task gains one priority level for every
    /// `aging_ms` it has been ready (since its `run_at`), so newer work of
    /// higher priority cannot hold it back forever. The claim order becomes
    /// `priority - run_at / aging_ms` (highest first; see
    /// [`claim_rank`](crate::store::claim_rank)), kept in the ready index.
    /// None: plain priority order.
    pub aging_ms: Option<i64>,
    /// Dead-letter routing: a task of this queue that fails for good
    /// (attempts exhausted, or failed without retry) is filed in this queue
    /// instead, still `failed`; its home queue is kept (its key stays
    /// reserved there, and `retry`/`requeue` send it back there). None:
    /// failed tasks stay in the queue.
    pub dead_letter: Option<String>,
    /// How long this queue's failed tasks (its dead letters, routed or not)
    /// are kept, in ms, instead of `retention_ms`; None: like its other
    /// finished tasks. Applies to tasks failing after it is set.
    pub dead_retention_ms: Option<i64>,
}

/// Pause or resume a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PauseParams {
    /// The queue (not empty).
    pub queue: String,
    /// True pauses it, false resumes it.
    pub paused: bool,
}

/// A task one step of a flow depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dep {
    /// A task already in the store, by id.
    Task(i64),
    /// An earlier task of the same [`enqueue_flow`](super::Store::enqueue_flow)
    /// batch, by its index there.
    Earlier(usize),
}

/// A task to enqueue with the tasks it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowTask {
    /// The task.
    pub task: NewTask,
    /// Its parents, in order (the order [`dependencies`](super::Store::dependencies)
    /// reports them in). Empty: an ordinary task.
    pub after: Vec<Dep>,
}

impl FlowTask {
    /// Its parents' ids, in order, given the answers for the tasks of the
    /// batch before it (`earlier[j]` for [`Dep::Earlier`]`(j)`, which the
    /// batch's checks keep below this task's index).
    pub fn parent_ids(&self, earlier: &[Enqueued]) -> Vec<i64> {
        self.after
            .iter()
            .map(|d| match *d {
                Dep::Task(id) => id,
                Dep::Earlier(j) => earlier[j].id,
            })
            .collect()
    }
}
