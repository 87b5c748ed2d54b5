//! Completions and failures replayed after a broken connection.
//!
//! A call whose connection broke between its commit and the reply is run
//! again on a fresh connection (see `exec.rs`). Its guard (`status =
//! running AND worker = me`) then matches nothing, because the first run
//! already moved the task. Reporting that as "already finished" (or "lease
//! lost") would tell the worker that its result was not stored when it was.
//! So a replayed move whose guard missed reads the task, and counts as done
//! when the row is exactly what this move leaves: same status, same worker
//! (for a requeue, which clears the worker, none), same result and error.
//! Anything else — another worker, another outcome — is reported as before.

use crate::task::Status;

/// A task's row as [`sql::REPLAY_ROWS`](super::sql::REPLAY_ROWS) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskRow {
    /// Its status now.
    pub status: Status,
    /// The worker recorded on it.
    pub worker: Option<String>,
    /// Its stored result.
    pub result: Option<Vec<u8>>,
    /// Its stored error.
    pub error: Option<String>,
}

/// The move a call asked for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Move<'a> {
    /// The status the move leaves the task in.
    pub status: Status,
    /// The worker that asked.
    pub worker: &'a str,
    /// The result it stores (None for a failure).
    pub result: Option<&'a [u8]>,
    /// The error it stores (None: the move keeps the old error).
    pub error: Option<&'a str>,
}

/// True when `row` is what `m` leaves behind, so that a replay of `m`
/// whose guard matched nothing found its own first run committed.
pub(super) fn left_by(row: &TaskRow, m: &Move<'_>) -> bool {
    if row.status != m.status || row.result.as_deref() != m.result {
        return false;
    }
    if m.error.is_some() && row.error.as_deref() != m.error {
        return false;
    }
    match m.status {
        // REQUEUE clears the worker, so a requeued row cannot name it; its
        // error (this attempt's) is what identifies it.
        Status::Queued => row.worker.is_none() && m.error.is_some(),
        _ => row.worker.as_deref() == Some(m.worker),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, worker: Option<&str>, result: Option<&[u8]>, error: Option<&str>) -> TaskRow {
        TaskRow {
            status,
            worker: worker.map(String::from),
            result: result.map(<[u8]>::to_vec),
            error: error.map(String::from),
        }
    }

    fn complete<'a>(worker: &'a str, result: &'a [u8]) -> Move<'a> {
        Move { status: Status::Done, worker, result: Some(result), error: None }
    }

    #[test]
    fn a_completion_is_its_own_when_worker_and_result_match() {
        let done = row(Status::Done, Some("w"), Some(b"r"), Some("an old attempt's error"));
        assert!(left_by(&done, &complete("w", b"r")));
        assert!(!left_by(&done, &complete("w2", b"r")), "another worker finished it");
        assert!(!left_by(&done, &complete("w", b"other")), "it finished with another result");
        let failed = row(Status::Failed, Some("w"), None, Some("boom"));
        assert!(!left_by(&failed, &complete("w", b"r")), "it finished differently");
        let queued = row(Status::Queued, None, None, None);
        assert!(!left_by(&queued, &complete("w", b"r")), "it went back to the queue");
        let running = row(Status::Running, Some("w2"), None, None);
        assert!(!left_by(&running, &complete("w", b"r")), "someone else runs it");
    }

    #[test]
    fn a_failure_is_its_own_when_worker_and_error_match() {
        let fail = Move { status: Status::Failed, worker: "w", result: None, error: Some("boom") };
        assert!(left_by(&row(Status::Failed, Some("w"), None, Some("boom")), &fail));
        assert!(!left_by(&row(Status::Failed, Some("w"), None, Some("other")), &fail));
        assert!(!left_by(&row(Status::Failed, Some("w2"), None, Some("boom")), &fail));
        assert!(!left_by(&row(Status::Cancelled, Some("w"), None, Some("boom")), &fail));
    }

    #[test]
    fn a_requeue_is_its_own_when_the_row_carries_its_error_and_no_worker() {
        let requeue = Move { status: Status::Queued, worker: "w", result: None, error: Some("boom") };
        assert!(left_by(&row(Status::Queued, None, None, Some("boom")), &requeue));
        assert!(!left_by(&row(Status::Queued, None, None, Some("worker w is gone")), &requeue), "recovered");
        assert!(!left_by(&row(Status::Running, Some("w2"), None, Some("boom")), &requeue), "claimed again");
        let no_error = Move { error: None, ..requeue };
        assert!(!left_by(&row(Status::Queued, None, None, None), &no_error));
    }
}
