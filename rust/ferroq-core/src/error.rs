//! The one error type of the core. Every failure a caller can act on has its
//! own variant; the Python binding maps each onto its own exception class.

use crate::task::Status;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a store call.
///
/// `Clone`, so that one failure can be reported to every caller it affects
/// (a group commit fails for all the sends it carried). Deliberately not
/// `#[non_exhaustive]`: the crate's one consumer is the Python binding,
/// whose exhaustive match then refuses to compile until a new variant has
/// its own Python class.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No task (or listen key) matches the id or key given.
    #[error("{0} not found")]
    NotFound(String),
    /// The task is no longer running under this worker: its lease expired and
    /// it was recovered, released, or taken by another worker.
    #[error("lease lost on task {id}: it is {status} and not held by worker {worker:?}")]
    LeaseLost {
        /// The task id.
        id: i64,
        /// The worker that tried to act on it.
        worker: String,
        /// The status the task has now.
        status: Status,
    },
    /// The task already reached a final status; it cannot move again.
    #[error("task {id} already finished ({status})")]
    AlreadyFinished {
        /// The task id.
        id: i64,
        /// Its final status.
        status: Status,
    },
    /// The transition is not allowed from the task's current status.
    #[error("cannot {action} task {id}: it is {status}")]
    InvalidTransition {
        /// The task id.
        id: i64,
        /// The status the task has now.
        status: Status,
        /// What was attempted.
        action: &'static str,
    },
    /// An argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A payload, result or value is larger than the store accepts.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// What was too large (payload, result, listen value).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The queue already holds its maximum number of unfinished tasks.
    #[error("queue {queue:?} is full ({limit} unfinished tasks)")]
    QueueFull {
        /// The queue name.
        queue: String,
        /// Its capacity.
        limit: u64,
    },
    /// The queue is paused ([`Store::set_paused`](crate::store::Store::set_paused)):
    /// it takes sends but hands no task out until it is resumed.
    #[error("queue {queue:?} is paused: nothing is handed out until it is resumed")]
    QueuePaused {
        /// The queue name.
        queue: String,
    },
    /// A task with this key already exists in the queue (or the batch names
    /// the key twice), and the caller asked for that to be an error
    /// ([`OnDuplicate::Error`](crate::store::OnDuplicate::Error)). Nothing
    /// of the batch was stored.
    #[error("queue {queue:?} already has a task with key {key:?}{}", id.map(|i| format!(" (task {i})")).unwrap_or_else(|| " (twice in this batch)".into()))]
    DuplicateKey {
        /// The queue name.
        queue: String,
        /// The key.
        key: String,
        /// The existing task's id; None when the batch itself names the key twice.
        id: Option<i64>,
    },
    /// The store cannot be opened, created or reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store exists but the process may not read or write it.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The path or database holds something that is not a ferroq store.
    #[error("not a ferroq store: {0}")]
    NotAStore(String),
    /// The database is damaged.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The store was created with a different number of shards.
    #[error("store at {path} has {existing} shards, but {requested} were requested")]
    ShardMismatch {
        /// The store path.
        path: String,
        /// Shards found on disk.
        existing: u32,
        /// Shards asked for.
        requested: u32,
    },
    /// The store is in use where an operation needs it idle (an offline
    /// reshard of a store with running tasks or live workers).
    #[error("store in use: {0}")]
    StoreInUse(String),
    /// Any other storage failure.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Starts the message of damage SQLite itself reported about a file (as
/// opposed to one row that does not decode), so a store can tell the two
/// apart: the first makes the whole file suspect.
pub(crate) const SQLITE_DAMAGE: &str = "SQLite reports the file damaged: ";

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                let text = msg.clone().unwrap_or_else(|| f.to_string());
                match f.code {
                    C::NotADatabase => Error::NotAStore(format!("{SQLITE_DAMAGE}not a SQLite database ({text})")),
                    C::DatabaseCorrupt => Error::Corrupt(format!("{SQLITE_DAMAGE}{text}")),
                    C::CannotOpen => Error::Unavailable(text),
                    C::PermissionDenied | C::ReadOnly => Error::PermissionDenied(text),
                    C::DatabaseBusy | C::DatabaseLocked => Error::Unavailable(format!("database is busy ({text})")),
                    C::DiskFull => Error::Unavailable(format!("disk full ({text})")),
                    C::SystemIoFailure => Error::Unavailable(format!("I/O error ({text})")),
                    _ => Error::Storage(text),
                }
            }
            _ => Error::Storage(e.to_string()),
        }
    }
}
