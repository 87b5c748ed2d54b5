//! The task record and its statuses.

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use std::fmt;

/// Where a task is in its life. A closed set; who moves tasks in and out:
///
/// | status      | entered by                                      | left by |
/// |-------------|-------------------------------------------------|---------|
/// | `Queued`    | enqueue; fail with attempts left; release; recover; retry; requeue; a serial queue's switch | claim, start, active, cancel, expire |
/// | `Running`   | claim, start, active (set a lease and count the attempt) | complete, fail, release, recover, cancel by its worker, a serial queue's switch |
/// | `Done`      | complete                                         | requeue, purge |
/// | `Failed`    | fail or recover with attempts exhausted (dead letters) | retry, requeue, purge |
/// | `Cancelled` | cancel; any end of a running task whose cancel was asked | retry, requeue, purge |
/// | `Expired`   | expire (deadline passed before it ran); an answer deadline with the `expire` policy | retry, requeue, purge |
/// | `Waiting`   | enqueue with dependencies (`enqueue_flow`) that are not all done | the finish of its last parent, or a release sweep (to `Queued`); a parent that ends otherwise, or cancel (to `Cancelled`) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    /// Waiting to run (now or at `run_at`).
    Queued = 0,
    /// Claimed by a worker under a lease.
    Running = 1,
    /// Finished with a result.
    Done = 2,
    /// Out of attempts; kept as a dead letter.
    Failed = 3,
    /// Cancelled before it finished.
    Cancelled = 4,
    /// Its deadline passed before it ran.
    Expired = 5,
    /// Waiting for the tasks it depends on to finish (see `Store::enqueue_flow`);
    /// never claimed in this status.
    Waiting = 6,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Running,
        Status::Done,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
        Status::Waiting,
    ];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Waiting => "waiting",
        }
    }

    /// The stored integer code.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The status of a stored integer code.
    pub fn from_code(code: i64) -> Result<Self> {
        Status::ALL
            .get(usize::try_from(code).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| Error::Corrupt(format!("unknown status code {code}")))
    }

    /// The status of a name.
    pub fn parse(name: &str) -> Result<Self> {
        Status::ALL
            .iter()
            .copied()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown status {name:?}")))
    }

    /// True for statuses a task never leaves on its own (done, failed,
    /// cancelled, expired).
    pub fn is_finished(self) -> bool {
        !matches!(self, Status::Queued | Status::Running | Status::Waiting)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Unique in the store; for SQLite it also names the shard.
    pub id: i64,
    /// The queue it belongs to.
    pub queue: String,
    /// The registered name of the function that runs it.
    pub name: String,
    /// Serialised arguments.
    pub payload: Vec<u8>,
    /// Higher runs first (any 64-bit integer; see [`NewTask::priority`]).
    pub priority: i64,
    /// Where it is in its life.
    pub status: Status,
    /// Not claimed before this time (ms since the epoch).
    pub run_at: i64,
    /// Claims so far (a release does not count).
    pub attempts: u32,
    /// Claims allowed before it is failed for good.
    pub max_attempts: u32,
    /// While running: the lease deadline (ms).
    pub lease_until: Option<i64>,
    /// While running: the worker holding the lease.
    pub worker: Option<String>,
    /// Optional key, unique per queue (idempotency).
    pub key: Option<String>,
    /// Optional group label.
    pub batch: Option<String>,
    /// Last reported progress (0..=1).
    pub progress: Option<f64>,
    /// Serialised result, once done.
    pub result: Option<Vec<u8>>,
    /// Error text of the last failed attempt.
    pub error: Option<String>,
    /// Enqueue time (ms).
    pub created_at: i64,
    /// Start of the latest attempt (ms).
    pub started_at: Option<i64>,
    /// When it reached a final status (ms).
    pub finished_at: Option<i64>,
    /// Deadline: it expires if not started by then (ms).
    pub expires_at: Option<i64>,
    /// Small user JSON.
    pub metadata: Option<String>,
    /// Set when a running task was asked to stop.
    pub cancel_requested: bool,
    /// Its retry policy (the store default when None).
    pub backoff: Option<Backoff>,
    /// How long it is kept after finishing (ms); the store default when None.
    pub result_ttl_ms: Option<i64>,
    /// What a worker must have to claim it: a JSON object of numbers
    /// (`{"gpu_memory_gb": 8}`), each a minimum.
    pub requires: Option<String>,
}

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Queue name (1..=200 bytes).
    pub queue: String,
    /// Function name (1..=500 bytes).
    pub name: String,
    /// Serialised arguments.
    pub payload: Vec<u8>,
    /// Higher runs first. Any 64-bit integer (a millisecond timestamp
    /// works): claims hand out the highest priority first, then the
    /// earliest `run_at`, then the lowest id.
    pub priority: i64,
    /// Earliest start (ms); None means now.
    pub run_at: Option<i64>,
    /// Claims allowed (1..=1000); retries + 1.
    pub max_attempts: u32,
    /// Optional idempotency key (unique per queue).
    pub key: Option<String>,
    /// Optional group label.
    pub batch: Option<String>,
    /// Deadline to start by (ms).
    pub expires_at: Option<i64>,
    /// Small user JSON.
    pub metadata: Option<String>,
    /// Retry policy; None uses the store default.
    pub backoff: Option<Backoff>,
    /// Retention after finishing (ms); None uses the store default.
    pub result_ttl_ms: Option<i64>,
    /// What a worker must have to claim it (see [`Task::requires`]).
    pub requires: Option<String>,
}

/// Priorities a task may have: every 64-bit integer.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = i64::MIN..=i64::MAX;
/// Attempts a task may be given.
pub const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000;

impl NewTask {
    /// A task with default options: priority 0, now, 1 attempt.
    pub fn new(queue: impl Into<String>, name: impl Into<String>, payload: Vec<u8>) -> Self {
        NewTask {
            queue: queue.into(),
            name: name.into(),
            payload,
            priority: 0,
            run_at: None,
            max_attempts: 1,
            key: None,
            batch: None,
            expires_at: None,
            metadata: None,
            backoff: None,
            result_ttl_ms: None,
            requires: None,
        }
    }

    /// Checks every field is in range; `max_payload` is the store's limit.
    pub fn validate(&self, max_payload: usize) -> Result<()> {
        check_name("queue", &self.queue, 200)?;
        check_name("task name", &self.name, 500)?;
        if self.payload.len() > max_payload {
            return Err(Error::PayloadTooLarge { what: "payload", size: self.payload.len(), limit: max_payload });
        }
        if !MAX_ATTEMPTS_RANGE.contains(&self.max_attempts) {
            return Err(Error::InvalidArgument(format!(
                "max_attempts {} is outside {}..={}",
                self.max_attempts,
                MAX_ATTEMPTS_RANGE.start(),
                MAX_ATTEMPTS_RANGE.end()
            )));
        }
        if let Some(k) = &self.key {
            check_name("key", k, 1_000)?;
        }
        if let Some(b) = &self.batch {
            check_name("batch", b, 1_000)?;
        }
        if let Some(m) = &self.metadata {
            check_metadata_size(m)?;
        }
        if let Some(ttl) = self.result_ttl_ms {
            if ttl < 0 {
                return Err(Error::InvalidArgument(format!("result_ttl must be >= 0, got {ttl} ms")));
            }
        }
        if let Some(b) = &self.backoff {
            b.validate()?;
        }
        if let Some(r) = &self.requires {
            check_resources("requires", r)?;
        }
        Ok(())
    }
}

/// The largest metadata a task may carry, in bytes.
pub const MAX_METADATA: usize = 65_536;

/// Checks metadata's size (at most [`MAX_METADATA`] bytes).
pub fn check_metadata_size(metadata: &str) -> Result<()> {
    if metadata.len() > MAX_METADATA {
        return Err(Error::PayloadTooLarge { what: "metadata", size: metadata.len(), limit: MAX_METADATA });
    }
    Ok(())
}

/// Checks metadata set on an existing task: its size, and that it is JSON
/// (what every ferroq layer writes there).
pub fn check_metadata(metadata: &str) -> Result<()> {
    check_metadata_size(metadata)?;
    serde_json::from_str::<serde_json::Value>(metadata)
        .map_err(|e| Error::InvalidArgument(format!("metadata must be JSON text: {e}")))?;
    Ok(())
}

/// Checks a resource map: a JSON object whose values are numbers >= 0.
pub fn check_resources(what: &str, json: &str) -> Result<()> {
    let bad = |why: &str| Error::InvalidArgument(format!("{what} must be a JSON object of numbers >= 0: {why}"));
    if json.len() > 65_536 {
        return Err(bad("longer than 64 KiB"));
    }
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let map = value.as_object().ok_or_else(|| bad("not an object"))?;
    for (k, v) in map {
        match v.as_f64() {
            Some(n) if n >= 0.0 && n.is_finite() => {}
            _ => return Err(bad(&format!("{k:?} is {v}"))),
        }
    }
    Ok(())
}

fn check_name(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::InvalidArgument(format!("{what} is {} bytes long; the limit is {max}", value.len())));
    }
    Ok(())
}
