//! The decisions every backend makes the same way, written once: argument
//! checks, the claim order, the retry and recovery decisions, how a guard
//! that matched no row becomes a typed error, and the column positions of a
//! task row. Everything here is pure (no storage, no clock), so each rule is
//! unit-tested below and the backends only run statements around it.

use super::limits::FunctionLimit;
use super::params::{ClaimParams, OnTimeout, QueueOptions, Retry};
use super::RECOVERY_MIN_ATTEMPTS;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::task::{Status, Task};
use std::cmp::Ordering;

/// What a guarded statement required of its task; when it changed no row,
/// [`explain`] names which requirement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// Needed: running under this worker.
    Held,
    /// Needed: some unfinished status.
    Unfinished,
    /// Needed: a failed, cancelled or expired task.
    Retryable,
    /// Needed: running, under any worker (a forced move).
    Running,
    /// Needed: queued (start, set_priority, set_run_at).
    Queued,
    /// Needed: any finished status (requeue).
    Finished,
}

/// The guard a move by `worker` needs: held by it, or with `force`
/// running under anyone.
pub(crate) fn held_or_forced(force: bool) -> Guard {
    if force {
        Guard::Running
    } else {
        Guard::Held
    }
}

/// The error for a task id that names no task.
pub(crate) fn task_not_found(id: i64) -> Error {
    Error::NotFound(format!("task {id}"))
}

/// The integrity checksum stored beside every payload and result: CRC-32C
/// (hardware-assisted where the CPU has it). It catches what SQLite cannot:
/// a flipped bit inside a value, which would otherwise read back as a
/// different valid payload or result.
pub(crate) fn checksum(bytes: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(bytes))
}

/// Whether `bytes` match their stored checksum. A missing checksum (a row
/// written before checksums existed) is not checked.
pub(crate) fn checksum_matches(bytes: &[u8], stored: Option<i64>) -> bool {
    match stored {
        Some(sum) => sum == checksum(bytes),
        None => true,
    }
}

/// What the reader of a damaged store file should do about it.
pub(crate) const RESTORE_HINT: &str =
    "restore this file from a backup of the store (or move the store aside to start a new one)";

/// The error for a store file that is damaged as a whole (empty, foreign,
/// misplaced, or reported malformed by the database): names the file, what
/// is wrong, and the way back.
pub(crate) fn damaged_file(file: &str, what: &str) -> Error {
    Error::Corrupt(format!("{file}: {what}; {RESTORE_HINT}"))
}

/// The error for one damaged task row: names the file and the task, so that
/// the rest of the store stays usable and the task can be found.
pub(crate) fn damaged_task(file: &str, id: i64, what: &str) -> Error {
    Error::Corrupt(format!("{file}: task {id} is damaged ({what}); run the store check, and {RESTORE_HINT}"))
}

/// Names the reason a guarded statement on task `id` changed nothing, given
/// the task's status as it is now (`found`, None when there is no such
/// task), the worker that acted and what it tried (`action`, as in "cannot
/// {action} task 7").
pub(crate) fn explain(
    found: Option<Status>,
    id: i64,
    worker: Option<&str>,
    guard: Guard,
    action: &'static str,
) -> Error {
    let Some(status) = found else { return task_not_found(id) };
    match guard {
        Guard::Retryable | Guard::Finished => Error::InvalidTransition { id, status, action },
        _ if status.is_finished() => Error::AlreadyFinished { id, status },
        Guard::Held => Error::LeaseLost { id, worker: worker.unwrap_or("").to_string(), status },
        Guard::Unfinished | Guard::Running | Guard::Queued => Error::InvalidTransition { id, status, action },
    }
}

/// The order claims hand tasks out in on a queue without aging: higher
/// priority first, then earlier `run_at`, then lower id (see
/// [`claim_order_aged`] for queues with aging).
#[cfg(test)]
pub(crate) fn claim_order(a: &Task, b: &Task) -> Ordering {
    claim_order_aged(None)(a, b)
}

/// The backoff a task retries with: its own (stored encoded), or the
/// store's default when it has none or the stored text is unreadable.
pub(crate) fn backoff_of(stored: Option<&str>, default: Backoff) -> Backoff {
    stored.and_then(|t| Backoff::decode(t).ok()).unwrap_or(default)
}

/// After failed attempt number `attempts` of `max_attempts`: how many ms
/// from now the task runs again, or None when it fails for good (no attempts
/// left, or the worker said never). `stored` is the task's encoded backoff.
pub(crate) fn retry_delay(
    retry: Retry,
    attempts: u32,
    max_attempts: u32,
    stored: Option<&str>,
    default: Backoff,
) -> Option<i64> {
    match retry {
        _ if attempts >= max_attempts => None,
        Retry::Never => None,
        Retry::After(ms) => Some(ms.max(0)),
        Retry::Backoff => Some(backoff_of(stored, default).delay_ms(attempts)),
    }
}

/// What recovery does with a running task whose worker is gone (lease
/// expired, or the worker was declared dead) after `attempts` attempts:
/// back to `queued` while it has had fewer than
/// `max(max_attempts, RECOVERY_MIN_ATTEMPTS)`, else `failed`; and the error
/// text recorded either way.
pub(crate) fn recovery(worker: Option<&str>, attempts: u32, max_attempts: u32) -> (Status, String) {
    let why = format!("lease lost: worker {} stopped before finishing attempt {attempts}", worker.unwrap_or("?"));
    // A crash is not the task's failure (see RECOVERY_MIN_ATTEMPTS).
    let status = if attempts < max_attempts.max(RECOVERY_MIN_ATTEMPTS) { Status::Queued } else { Status::Failed };
    (status, why)
}

/// What becomes of a running task nobody will finish: its worker is gone
/// (lease expired, or declared dead) or its answer deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abandon {
    /// Back to `queued` at its old place, the attempt counted (a crash).
    Requeue,
    /// Back to `queued` at its old place, the attempt not counted (an
    /// answer deadline with the `requeue` policy: nobody failed).
    Release,
    /// To this final status.
    Finish(Status),
}

/// Decides what recovery does with a running task: a cancel request
/// sticks (`cancelled`, whatever else holds); a lease that ran out on a
/// queue with an answer deadline (`timeout`: its policy) follows that
/// policy; otherwise the crash rule of [`recovery`]. `by_worker` is true
/// when the worker was declared dead (its tasks are recovered whatever
/// their lease says): that is a crash even on a queue with a deadline.
pub(crate) fn abandon(
    cancel_requested: bool,
    timeout: Option<OnTimeout>,
    by_worker: bool,
    worker: Option<&str>,
    attempts: u32,
    max_attempts: u32,
) -> (Abandon, String) {
    if cancel_requested {
        return (Abandon::Finish(Status::Cancelled), CANCELLED.to_string());
    }
    match timeout {
        Some(policy) if !by_worker => {
            let why = ANSWER_DEADLINE_PASSED.to_string();
            match policy {
                OnTimeout::Requeue => (Abandon::Release, why),
                OnTimeout::Expire => (Abandon::Finish(Status::Expired), why),
            }
        }
        _ => match recovery(worker, attempts, max_attempts) {
            (Status::Queued, why) => (Abandon::Requeue, why),
            (status, why) => (Abandon::Finish(status), why),
        },
    }
}

/// What becomes of a waiting task, given its parents as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settle {
    /// A parent is unfinished: keep waiting.
    Wait,
    /// Every parent is done: to `queued`.
    Release,
    /// A parent ended otherwise (or is gone): to `cancelled`, with this error.
    Cancel(String),
}

/// Decides a waiting task's fate from its parents' `(id, status)`, status
/// None for a parent no longer stored. The first parent that ended in
/// anything but `done` decides (a dependency can never be met again);
/// otherwise any unfinished parent keeps it waiting.
pub(crate) fn settle(parents: &[(i64, Option<Status>)]) -> Settle {
    for &(id, status) in parents {
        match status {
            None => return Settle::Cancel(format!("dependency {id} is gone (purged before this task was released)")),
            Some(s) if s.is_finished() && s != Status::Done => {
                return Settle::Cancel(format!("dependency {id} ended {s}"));
            }
            _ => {}
        }
    }
    if parents.iter().all(|(_, s)| *s == Some(Status::Done)) {
        Settle::Release
    } else {
        Settle::Wait
    }
}

/// Checks the dependencies of a flow batch: an earlier index must point
/// before the task naming it.
pub(crate) fn check_flow(tasks: &[super::FlowTask]) -> Result<()> {
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.after {
            if let super::Dep::Earlier(j) = *d {
                if j >= i {
                    return Err(Error::InvalidArgument(format!(
                        "task {i} of the flow depends on task {j}, which is not before it"
                    )));
                }
            }
        }
        if t.after.len() > MAX_PARENTS {
            return Err(Error::InvalidArgument(format!(
                "task {i} of the flow has {} dependencies; the limit is {MAX_PARENTS}",
                t.after.len()
            )));
        }
    }
    Ok(())
}

/// The most parents one task may have.
pub(crate) const MAX_PARENTS: usize = 100_000;

/// The error text of a handed-out task whose answer deadline passed.
pub(crate) const ANSWER_DEADLINE_PASSED: &str = "answer deadline passed";

/// Checks a queue's options.
pub(crate) fn check_queue_options(o: &QueueOptions) -> Result<()> {
    if o.queue.is_empty() {
        return Err(Error::InvalidArgument("queue name must not be empty".into()));
    }
    if let Some(t) = o.answer_timeout_ms {
        check_lease(t)
            .map_err(|_| Error::InvalidArgument(format!("answer_timeout of {t} ms is outside 1 ms ..= 7 days")))?;
    }
    if let Some(r) = o.retention_ms {
        if r < 0 {
            return Err(Error::InvalidArgument(format!("retention must be >= 0, got {r} ms")));
        }
    }
    if let Some(r) = o.dead_retention_ms {
        if r < 0 {
            return Err(Error::InvalidArgument(format!("dead_retention must be >= 0, got {r} ms")));
        }
    }
    if let Some(a) = o.aging_ms {
        if !(1..=MAX_AGING_MS).contains(&a) {
            return Err(Error::InvalidArgument(format!(
                "aging of {a} ms per priority level is outside 1 ms ..= 1 year"
            )));
        }
    }
    match o.dead_letter.as_deref() {
        Some("") => return Err(Error::InvalidArgument("dead_letter queue name must not be empty".into())),
        Some(d) if d == o.queue => {
            return Err(Error::InvalidArgument(format!("queue {d:?} cannot be its own dead-letter queue")))
        }
        _ => {}
    }
    Ok(())
}

/// The longest aging step: one priority level a year.
pub(crate) const MAX_AGING_MS: i64 = 365 * 24 * 3_600_000;

/// The bound of the values [`claim_rank`] combines: clamping priority and
/// `run_at` to it keeps `priority - run_at / aging_ms` inside i64 whatever
/// the task says (a real `run_at` is about 2^41).
const RANK_CLAMP: i64 = 1 << 61;

/// The claim rank of a queued task: the first key of the claim order
/// (highest first; then the earliest `run_at`, then the lowest id). On a
/// queue without aging it is the priority. With `aging_ms`, a task gains
/// one level for every `aging_ms` it has been ready: at any moment `now`
/// its effective priority is `priority + (now - run_at) / aging_ms`, and
/// since `now` is the same for every task, ordering by
/// `priority - run_at / aging_ms` is the same order, computed once when
/// the task is written and kept in the ready index (no scan, no periodic
/// rewrite). Division truncates toward zero, as in SQLite and PostgreSQL,
/// whose statements compute the same value (`claim_rank!` in each
/// backend's `sql.rs`).
///
/// The bound it gives: a task of priority `p` made ready at `t` ranks
/// above every task of priority `q` made ready after `t + (q - p + 1) *
/// aging_ms`, so newer work of higher priority holds it back for at most
/// `(q - p + 1) * aging_ms`.
pub fn claim_rank(priority: i64, run_at: i64, aging_ms: Option<i64>) -> i64 {
    match aging_ms {
        Some(a) if a > 0 => priority.clamp(-RANK_CLAMP, RANK_CLAMP) - run_at.clamp(-RANK_CLAMP, RANK_CLAMP) / a,
        _ => priority,
    }
}

/// The order claims hand tasks out in, on a queue with the given aging
/// step: claim rank (highest first; the priority without aging), then
/// earlier `run_at`, then lower id. The ready indexes of both backends have
/// these columns in this order (`task.claim_rank` holds the rank).
pub(crate) fn claim_order_aged(aging_ms: Option<i64>) -> impl Fn(&Task, &Task) -> Ordering {
    move |a, b| {
        claim_rank(b.priority, b.run_at, aging_ms)
            .cmp(&claim_rank(a.priority, a.run_at, aging_ms))
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    }
}

/// The lease a task handed out now gets: the queue's answer timeout when
/// it has one, else what the caller asked for.
pub(crate) fn lease_for(lease_ms: i64, answer_timeout_ms: Option<i64>) -> i64 {
    answer_timeout_ms.unwrap_or(lease_ms)
}

/// Checks a start's worker and lease.
pub(crate) fn check_start(worker: &str, lease_ms: i64) -> Result<()> {
    check_lease(lease_ms)?;
    if worker.is_empty() {
        return Err(Error::InvalidArgument("worker id must not be empty".into()));
    }
    Ok(())
}

/// The error for a batch that names a taken key (see
/// [`OnDuplicate::Error`](super::OnDuplicate::Error)).
pub(crate) fn duplicate_key(queue: &str, key: &str, id: Option<i64>) -> Error {
    Error::DuplicateKey { queue: queue.to_string(), key: key.to_string(), id }
}

/// The first key a batch names twice within one queue, if any.
pub(crate) fn repeated_key(tasks: &[crate::task::NewTask]) -> Option<(&str, &str)> {
    let mut seen = std::collections::HashSet::new();
    tasks.iter().filter_map(|t| t.key.as_deref().map(|k| (t.queue.as_str(), k))).find(|qk| !seen.insert(*qk))
}

/// The error text of a task that expired before it started.
pub(crate) const DEADLINE_PASSED: &str = "deadline passed before the task started";

/// The error text of a cancelled task.
pub(crate) const CANCELLED: &str = "cancelled";

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
    if let Some((index, count)) = p.home {
        if index >= count {
            return Err(Error::InvalidArgument(format!(
                "claim home ({index}, {count}) must be (index, count) with index < count"
            )));
        }
    }
    Ok(())
}

/// The home shards of claimer `index` of `count` in a store of `shards`
/// shards, as a range. Shards are dealt out in blocks so that the threads
/// of one worker process (numbered together) share their shards with no
/// other process: with fewer claimers than shards each gets a block of
/// shards, with more each shard is home to a block of claimers.
pub fn home_shards(index: u32, count: u32, shards: u32) -> std::ops::Range<u32> {
    let (i, n, s) = (u64::from(index), u64::from(count.max(1)), u64::from(shards.max(1)));
    if n >= s {
        let home = (i * s / n) as u32;
        home..home + 1
    } else {
        // The shards `h` with h * n / s == i: from ceil(i * s / n) up to ceil((i + 1) * s / n).
        let first = (i * s).div_ceil(n) as u32;
        let end = ((i + 1) * s).div_ceil(n) as u32;
        first..end
    }
}

/// Checks a lease length.
pub(crate) fn check_lease(lease_ms: i64) -> Result<()> {
    const WEEK_MS: i64 = 7 * 24 * 3_600_000;
    if !(1..=WEEK_MS).contains(&lease_ms) {
        return Err(Error::InvalidArgument(format!("lease of {lease_ms} ms is outside 1 ms ..= 7 days")));
    }
    Ok(())
}

/// Checks a progress report (a fraction in 0..=1; NaN is refused).
pub(crate) fn check_progress(progress: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&progress) {
        return Err(Error::InvalidArgument(format!("progress must be within 0..=1, got {progress}")));
    }
    Ok(())
}

/// Checks a result's size against the store's `max_payload`.
pub(crate) fn check_result_size(result: &[u8], max_payload: usize) -> Result<()> {
    if result.len() > max_payload {
        return Err(Error::PayloadTooLarge { what: "result", size: result.len(), limit: max_payload });
    }
    Ok(())
}

/// Checks a list page size.
pub(crate) fn check_list_limit(limit: u32) -> Result<()> {
    if !(1..=100_000).contains(&limit) {
        return Err(Error::InvalidArgument(format!("list limit {limit} is outside 1..=100000")));
    }
    Ok(())
}

/// Which task tables a list with this status filter reads:
/// (`task`, the unfinished one; `task_done`, the finished one).
pub(crate) fn list_tables(status: Option<Status>) -> (bool, bool) {
    match status {
        None => (true, true),
        Some(s) => (!s.is_finished(), s.is_finished()),
    }
}

/// Checks a listen key and value.
pub(crate) fn check_listen_set(key: &str, value: &[u8], max_payload: usize) -> Result<()> {
    if key.is_empty() || key.len() > 1_000 {
        return Err(Error::InvalidArgument("listen key must be 1..=1000 bytes".into()));
    }
    if value.len() > max_payload {
        return Err(Error::PayloadTooLarge { what: "listen value", size: value.len(), limit: max_payload });
    }
    Ok(())
}

/// Checks a capacity's queue name and gives the capacity as stored (an
/// SQL integer: anything beyond `i64::MAX` is as good as no limit).
pub(crate) fn capacity_to_store(queue: &str, capacity: Option<u64>) -> Result<Option<i64>> {
    if queue.is_empty() {
        return Err(Error::InvalidArgument("queue name must not be empty".into()));
    }
    Ok(capacity.map(|c| i64::try_from(c).unwrap_or(i64::MAX)))
}

/// A capacity as read back (a negative number, which ferroq never writes,
/// counts as 0).
pub(crate) fn capacity_from_store(stored: i64) -> u64 {
    stored.max(0) as u64
}

/// What setting a function limit writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitWrite {
    /// Neither a maximum nor a rate: the limit is removed.
    Delete,
    /// Insert or replace the limit (with a full bucket).
    Upsert,
}

/// Validates a function limit and says whether it is stored or removed.
pub(crate) fn limit_write(limit: &FunctionLimit) -> Result<LimitWrite> {
    limit.validate()?;
    if limit.max_running.is_none() && limit.rate_per_s.is_none() {
        Ok(LimitWrite::Delete)
    } else {
        Ok(LimitWrite::Upsert)
    }
}

/// A worker's queues as stored (a JSON array of strings).
pub(crate) fn queues_to_json(queues: &[String]) -> Result<String> {
    serde_json::to_string(queues).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// A worker's queues as read back; text that is not a JSON array of
/// strings is damage.
pub(crate) fn queues_from_json(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Checks the store-wide payload limit when a store opens.
pub(crate) fn check_max_payload(max_payload: usize) -> Result<()> {
    if max_payload == 0 {
        return Err(Error::InvalidArgument("max_payload must be > 0".into()));
    }
    Ok(())
}

/// The columns of both backends' task tables, by position: each backend's
/// `sql.rs` lists them in this order (`TASK_COLUMNS`, checked by a test
/// below) and reads a task row by these positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Every position is listed, including those no reader uses (purge_at).
pub(crate) enum TaskCol {
    Id,
    Queue,
    Name,
    Payload,
    Priority,
    Status,
    RunAt,
    Attempts,
    MaxAttempts,
    LeaseUntil,
    Worker,
    Key,
    Batch,
    Progress,
    Result,
    Error,
    CreatedAt,
    StartedAt,
    FinishedAt,
    ExpiresAt,
    Metadata,
    CancelRequested,
    Backoff,
    ResultTtl,
    PurgeAt,
    Requires,
}

impl TaskCol {
    /// The column names in table order.
    #[cfg(test)]
    const NAMES: [&'static str; 26] = [
        "id",
        "queue",
        "name",
        "payload",
        "priority",
        "status",
        "run_at",
        "attempts",
        "max_attempts",
        "lease_until",
        "worker",
        "key",
        "batch",
        "progress",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "expires_at",
        "metadata",
        "cancel_requested",
        "backoff",
        "result_ttl",
        "purge_at",
        "requires",
    ];

    /// The column's position in a row that starts with the task columns at
    /// `offset` (0 unless a statement returns something before them).
    pub(crate) const fn at(self, offset: usize) -> usize {
        offset + self as usize
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backoff::BackoffStrategy;

    fn task(id: i64, priority: i64, run_at: i64) -> Task {
        Task {
            id,
            queue: "q".into(),
            name: "t".into(),
            payload: Vec::new(),
            priority,
            status: Status::Queued,
            run_at,
            attempts: 0,
            max_attempts: 1,
            lease_until: None,
            worker: None,
            key: None,
            batch: None,
            progress: None,
            result: None,
            error: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            expires_at: None,
            metadata: None,
            cancel_requested: false,
            backoff: None,
            result_ttl_ms: None,
            requires: None,
        }
    }

    #[test]
    fn home_shards_cover_every_shard_and_every_claimer() {
        for shards in 1..=8u32 {
            for count in 1..=12u32 {
                let mut homes_of_shard = vec![0u32; shards as usize];
                for index in 0..count {
                    let home = home_shards(index, count, shards);
                    assert!(!home.is_empty() && home.end <= shards, "{index}/{count} over {shards}: {home:?}");
                    for s in home {
                        homes_of_shard[s as usize] += 1;
                    }
                }
                assert!(homes_of_shard.iter().all(|&k| k > 0), "{count} claimers over {shards}: {homes_of_shard:?}");
                if count <= shards {
                    // Blocks: each shard is home to exactly one claimer.
                    assert!(homes_of_shard.iter().all(|&k| k == 1));
                }
            }
        }
        // Two processes of four threads on two shards: each process keeps to its own.
        assert_eq!((0..4).map(|i| home_shards(i, 8, 2).start).collect::<Vec<_>>(), [0, 0, 0, 0]);
        assert_eq!((4..8).map(|i| home_shards(i, 8, 2).start).collect::<Vec<_>>(), [1, 1, 1, 1]);
        assert_eq!(home_shards(1, 2, 4), 2..4);
    }

    fn claim(limit: u32, lease_ms: i64, worker: &str, resources: Option<&str>) -> ClaimParams {
        ClaimParams {
            queue: "q".into(),
            worker: worker.into(),
            limit,
            lease_ms,
            resources: resources.map(str::to_string),
            home: None,
        }
    }

    #[test]
    fn explain_names_the_failed_requirement() {
        assert!(matches!(explain(None, 7, Some("w"), Guard::Held, "complete"), Error::NotFound(m) if m == "task 7"));
        assert!(matches!(
            explain(Some(Status::Done), 7, Some("w"), Guard::Held, "complete"),
            Error::AlreadyFinished { id: 7, status: Status::Done }
        ));
        assert!(matches!(
            explain(Some(Status::Queued), 7, Some("w"), Guard::Held, "complete"),
            Error::LeaseLost { id: 7, ref worker, status: Status::Queued } if worker == "w"
        ));
        assert!(matches!(
            explain(Some(Status::Running), 7, None, Guard::Held, "complete"),
            Error::LeaseLost { ref worker, .. } if worker.is_empty()
        ));
        assert!(matches!(
            explain(Some(Status::Cancelled), 7, None, Guard::Unfinished, "cancel"),
            Error::AlreadyFinished { status: Status::Cancelled, .. }
        ));
        assert!(matches!(
            explain(Some(Status::Running), 7, None, Guard::Unfinished, "cancel"),
            Error::InvalidTransition { action: "cancel", status: Status::Running, .. }
        ));
        // Retrying a finished task is the point, so a finished status is not
        // "already finished" there.
        for s in [Status::Done, Status::Queued, Status::Running] {
            assert!(matches!(
                explain(Some(s), 7, None, Guard::Retryable, "retry"),
                Error::InvalidTransition { id: 7, action: "retry", status } if status == s
            ));
        }
    }

    #[test]
    fn forced_and_new_guards_explain_themselves() {
        assert_eq!(held_or_forced(false), Guard::Held);
        assert_eq!(held_or_forced(true), Guard::Running);
        assert!(matches!(
            explain(Some(Status::Queued), 7, Some("op"), Guard::Running, "complete"),
            Error::InvalidTransition { action: "complete", status: Status::Queued, .. }
        ));
        assert!(matches!(
            explain(Some(Status::Done), 7, Some("op"), Guard::Running, "complete"),
            Error::AlreadyFinished { status: Status::Done, .. }
        ));
        assert!(matches!(
            explain(Some(Status::Running), 7, None, Guard::Queued, "start"),
            Error::InvalidTransition { action: "start", status: Status::Running, .. }
        ));
        assert!(matches!(
            explain(Some(Status::Failed), 7, None, Guard::Queued, "set the priority of"),
            Error::AlreadyFinished { status: Status::Failed, .. }
        ));
        assert!(matches!(explain(None, 7, None, Guard::Queued, "start"), Error::NotFound(_)));
        for s in [Status::Queued, Status::Running] {
            assert!(matches!(
                explain(Some(s), 7, None, Guard::Finished, "requeue"),
                Error::InvalidTransition { action: "requeue", status, .. } if status == s
            ));
        }
    }

    #[test]
    fn abandoned_tasks_honour_cancels_then_deadlines_then_crashes() {
        let cancelled = abandon(true, Some(OnTimeout::Requeue), false, Some("w"), 1, 1);
        assert_eq!(cancelled.0, Abandon::Finish(Status::Cancelled), "a cancel request sticks");
        assert_eq!(abandon(true, None, true, Some("w"), 9, 1).0, Abandon::Finish(Status::Cancelled));
        let (a, why) = abandon(false, Some(OnTimeout::Requeue), false, Some("w"), 5, 1);
        assert_eq!((a, why.as_str()), (Abandon::Release, ANSWER_DEADLINE_PASSED));
        assert_eq!(abandon(false, Some(OnTimeout::Expire), false, None, 1, 1).0, Abandon::Finish(Status::Expired));
        // A worker declared dead is a crash, deadline or not.
        assert_eq!(abandon(false, Some(OnTimeout::Expire), true, Some("w"), 1, 1).0, Abandon::Requeue);
        assert_eq!(abandon(false, None, false, Some("w"), 1, 1).0, Abandon::Requeue);
        assert_eq!(abandon(false, None, false, Some("w"), 3, 1).0, Abandon::Finish(Status::Failed));
    }

    #[test]
    fn queue_options_are_checked() {
        let ok = QueueOptions { queue: "q".into(), ..QueueOptions::default() };
        assert!(check_queue_options(&ok).is_ok());
        let bad = [
            QueueOptions { queue: String::new(), ..ok.clone() },
            QueueOptions { answer_timeout_ms: Some(0), ..ok.clone() },
            QueueOptions { answer_timeout_ms: Some(8 * 24 * 3_600_000), ..ok.clone() },
            QueueOptions { retention_ms: Some(-1), ..ok.clone() },
            QueueOptions { dead_retention_ms: Some(-1), ..ok.clone() },
            QueueOptions { aging_ms: Some(0), ..ok.clone() },
            QueueOptions { aging_ms: Some(MAX_AGING_MS + 1), ..ok.clone() },
            QueueOptions { dead_letter: Some(String::new()), ..ok.clone() },
            QueueOptions { dead_letter: Some("q".into()), ..ok.clone() },
        ];
        for o in bad {
            assert!(matches!(check_queue_options(&o), Err(Error::InvalidArgument(_))), "{o:?}");
        }
        assert_eq!(lease_for(30_000, None), 30_000);
        assert_eq!(lease_for(30_000, Some(5_000)), 5_000);
        assert!(check_start("w", 1).is_ok());
        assert!(matches!(check_start("", 1), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_start("w", 0), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn repeated_keys_in_a_batch_are_found() {
        use crate::task::NewTask;
        let k = |q: &str, k: &str| NewTask { key: Some(k.into()), ..NewTask::new(q, "t", Vec::new()) };
        assert_eq!(repeated_key(&[k("a", "1"), k("b", "1"), NewTask::new("a", "t", Vec::new())]), None);
        assert_eq!(repeated_key(&[k("a", "1"), k("a", "2"), k("a", "1")]), Some(("a", "1")));
        let e = duplicate_key("a", "1", Some(9));
        assert!(matches!(&e, Error::DuplicateKey { id: Some(9), .. }));
        assert!(e.to_string().contains("task 9"), "{e}");
        assert!(duplicate_key("a", "1", None).to_string().contains("twice"));
    }

    #[test]
    fn waiting_tasks_settle_on_their_parents() {
        use Status::*;
        assert_eq!(settle(&[(1, Some(Done)), (2, Some(Done))]), Settle::Release);
        assert_eq!(settle(&[(1, Some(Done)), (2, Some(Running))]), Settle::Wait);
        assert_eq!(settle(&[(1, Some(Queued)), (2, Some(Failed))]), Settle::Cancel("dependency 2 ended failed".into()));
        assert!(matches!(settle(&[(3, None)]), Settle::Cancel(m) if m.contains("gone")));
        assert_eq!(settle(&[]), Settle::Release);
    }

    #[test]
    fn claim_order_holds_for_extreme_priorities() {
        let big = 1_i64 << 62;
        let mut tasks = [task(1, -big, 0), task(2, big, 0), task(3, 0, 0), task(4, i64::MAX, 9), task(5, i64::MIN, 0)];
        tasks.sort_by(claim_order);
        assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [4, 2, 3, 1, 5]);
    }

    #[test]
    fn aging_ranks_old_low_priority_work_above_newer_high_priority_work() {
        assert_eq!(claim_rank(5, 1_000, None), 5);
        // One level per second: a task of priority 0 ready at t=0 ranks with
        // one of priority 3 ready at t=3s, and above one ready later.
        let old = claim_rank(0, 0, Some(1_000));
        assert_eq!(old, claim_rank(3, 3_000, Some(1_000)));
        assert!(old > claim_rank(3, 4_000, Some(1_000)));
        assert!(old < claim_rank(3, 2_000, Some(1_000)));
        // The documented bound: q - p + 1 steps later, the newer task ranks lower.
        let (p, q, t, a) = (-7_i64, 40_i64, 1_764_000_000_000_i64, 250_i64);
        assert!(claim_rank(p, t, Some(a)) > claim_rank(q, t + (q - p + 1) * a, Some(a)));
        // Extremes do not overflow.
        for (pr, r) in [(i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (i64::MIN, i64::MIN), (i64::MAX, i64::MAX)] {
            let _ = claim_rank(pr, r, Some(1));
        }
        let mut tasks = [task(1, 0, 0), task(2, 3, 4_000), task(3, 3, 2_000)];
        tasks.sort_by(claim_order_aged(Some(1_000)));
        assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [3, 1, 2]);
    }

    #[test]
    fn claim_order_is_priority_then_run_at_then_id() {
        let mut tasks = [task(4, 0, 10), task(3, 0, 5), task(2, 5, 100), task(1, 0, 5)];
        tasks.sort_by(claim_order);
        assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [2, 1, 3, 4]);
    }

    #[test]
    fn backoff_of_falls_back_to_the_default() {
        let default = Backoff::default();
        let own = Backoff { strategy: BackoffStrategy::Fixed, base_ms: 123, jitter: 0.0, ..Backoff::default() };
        assert_eq!(backoff_of(Some(&own.encode()), default), own);
        assert_eq!(backoff_of(None, default), default);
        assert_eq!(backoff_of(Some("not a backoff"), default), default);
    }

    #[test]
    fn retry_delay_decides_requeue_or_fail() {
        let default = Backoff { strategy: BackoffStrategy::Fixed, base_ms: 500, jitter: 0.0, ..Backoff::default() };
        assert_eq!(retry_delay(Retry::Backoff, 1, 3, None, default), Some(default.delay_ms(1)));
        assert_eq!(retry_delay(Retry::After(250), 1, 3, None, default), Some(250));
        assert_eq!(retry_delay(Retry::After(-5), 1, 3, None, default), Some(0));
        assert_eq!(retry_delay(Retry::Never, 1, 3, None, default), None);
        // No attempts left: fails whatever the worker asked.
        assert_eq!(retry_delay(Retry::After(250), 3, 3, None, default), None);
        assert_eq!(retry_delay(Retry::Backoff, 4, 3, None, default), None);
        let own = Backoff { strategy: BackoffStrategy::Fixed, base_ms: 42, jitter: 0.0, ..Backoff::default() };
        assert_eq!(retry_delay(Retry::Backoff, 1, 3, Some(&own.encode()), default), Some(own.delay_ms(1)));
    }

    #[test]
    fn recovery_requeues_until_the_crash_allowance_is_used() {
        let (status, why) = recovery(Some("w1"), 1, 1);
        assert_eq!(status, Status::Queued);
        assert_eq!(why, "lease lost: worker w1 stopped before finishing attempt 1");
        assert_eq!(recovery(Some("w"), RECOVERY_MIN_ATTEMPTS - 1, 1).0, Status::Queued);
        assert_eq!(recovery(Some("w"), RECOVERY_MIN_ATTEMPTS, 1).0, Status::Failed);
        assert_eq!(recovery(Some("w"), 5, 6).0, Status::Queued);
        assert_eq!(recovery(Some("w"), 6, 6).0, Status::Failed);
        assert!(recovery(None, 1, 1).1.contains("worker ? stopped"));
    }

    #[test]
    fn claim_and_lease_checks() {
        assert!(check_claim(&claim(1, 1, "w", None)).is_ok());
        assert!(check_claim(&claim(10_000, 7 * 24 * 3_600_000, "w", Some(r#"{"gpu": 1}"#))).is_ok());
        for bad in [
            claim(0, 1000, "w", None),
            claim(10_001, 1000, "w", None),
            claim(1, 0, "w", None),
            claim(1, 1000, "", None),
            claim(1, 1000, "w", Some("not json")),
        ] {
            assert!(matches!(check_claim(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
        assert!(check_lease(1).is_ok());
        assert!(matches!(check_lease(7 * 24 * 3_600_000 + 1), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_lease(-1), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn progress_must_be_a_fraction() {
        assert!(check_progress(0.0).is_ok());
        assert!(check_progress(1.0).is_ok());
        for bad in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(check_progress(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn result_size_is_bounded_by_max_payload() {
        assert!(check_result_size(&[0; 100], 100).is_ok());
        assert!(matches!(
            check_result_size(&[0; 101], 100),
            Err(Error::PayloadTooLarge { what: "result", size: 101, limit: 100 })
        ));
    }

    #[test]
    fn list_limit_and_tables() {
        assert!(check_list_limit(1).is_ok());
        assert!(check_list_limit(100_000).is_ok());
        assert!(matches!(check_list_limit(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_list_limit(100_001), Err(Error::InvalidArgument(_))));
        assert_eq!(list_tables(None), (true, true));
        assert_eq!(list_tables(Some(Status::Queued)), (true, false));
        assert_eq!(list_tables(Some(Status::Running)), (true, false));
        assert_eq!(list_tables(Some(Status::Failed)), (false, true));
    }

    #[test]
    fn listen_set_checks_key_and_value() {
        assert!(check_listen_set("k", b"v", 10).is_ok());
        assert!(check_listen_set(&"k".repeat(1000), b"", 10).is_ok());
        assert!(matches!(check_listen_set("", b"v", 10), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_listen_set(&"k".repeat(1001), b"v", 10), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            check_listen_set("k", &[0; 11], 10),
            Err(Error::PayloadTooLarge { what: "listen value", size: 11, limit: 10 })
        ));
    }

    #[test]
    fn capacity_needs_a_queue_and_clamps() {
        assert_eq!(capacity_to_store("q", Some(5)).unwrap(), Some(5));
        assert_eq!(capacity_to_store("q", None).unwrap(), None);
        assert_eq!(capacity_to_store("q", Some(u64::MAX)).unwrap(), Some(i64::MAX));
        assert!(matches!(capacity_to_store("", Some(5)), Err(Error::InvalidArgument(_))));
        assert_eq!(capacity_from_store(7), 7);
        assert_eq!(capacity_from_store(-3), 0);
    }

    #[test]
    fn function_limit_is_deleted_or_upserted() {
        let limit = |max_running, rate_per_s| FunctionLimit { name: "f".into(), max_running, rate_per_s, burst: None };
        assert_eq!(limit_write(&limit(None, None)).unwrap(), LimitWrite::Delete);
        assert_eq!(limit_write(&limit(Some(2), None)).unwrap(), LimitWrite::Upsert);
        assert_eq!(limit_write(&limit(None, Some(1.5))).unwrap(), LimitWrite::Upsert);
        assert!(matches!(limit_write(&limit(Some(0), None)), Err(Error::InvalidArgument(_))));
        let nameless = FunctionLimit { name: String::new(), ..limit(None, None) };
        assert!(matches!(limit_write(&nameless), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn worker_queues_round_trip_as_json() {
        let queues = vec!["a".to_string(), "b \"c\"".to_string()];
        let text = queues_to_json(&queues).unwrap();
        assert_eq!(text, r#"["a","b \"c\""]"#);
        assert_eq!(queues_from_json(&text).unwrap(), queues);
        assert!(matches!(queues_from_json("{"), Err(Error::Corrupt(_))));
    }

    #[test]
    fn max_payload_must_be_positive() {
        assert!(check_max_payload(1).is_ok());
        assert!(matches!(check_max_payload(0), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn checksums_catch_one_flipped_bit_and_skip_old_rows() {
        let payload = b"{\"args\":[12345]}".to_vec();
        let sum = checksum(&payload);
        assert_eq!(checksum(b"123456789"), 0xE306_9283, "CRC-32C's check value");
        assert!(checksum_matches(&payload, Some(sum)));
        for bit in 0..payload.len() * 8 {
            let mut flipped = payload.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!checksum_matches(&flipped, Some(sum)), "bit {bit}");
        }
        assert!(checksum_matches(b"anything", None), "rows without a checksum are not checked");
        let e = damaged_task("/s/shard-000.db", 7, "payload checksum mismatch");
        assert!(
            matches!(&e, Error::Corrupt(m) if m.contains("/s/shard-000.db") && m.contains("task 7") && m.contains("backup"))
        );
    }

    #[test]
    fn deadline_message_is_fixed() {
        assert_eq!(DEADLINE_PASSED, "deadline passed before the task started");
    }

    #[test]
    fn task_columns_match_both_backends() {
        let ours = TaskCol::NAMES.join(", ");
        let normalise = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(normalise(super::super::sqlite::sql::TASK_COLUMNS), ours);
        assert_eq!(normalise(super::super::postgres::sql::TASK_COLUMNS), ours);
        assert_eq!(TaskCol::Id.at(0), 0);
        assert_eq!(TaskCol::Requires.at(0), 25);
        assert_eq!(TaskCol::Backoff.at(1), 23);
        assert_eq!(TaskCol::NAMES[TaskCol::ResultTtl.at(0)], "result_ttl");
    }
}
