//! The event feed: every status change of every task, appended store-side
//! in the transaction that made it, and the listen-data consumer cursors.
//! This file holds what the backends share: the event types, the cursor
//! formats, the checks and the rule that names an event's kind.
//!
//! What is recorded. One row per change: a monotonically increasing
//! position, the time (store clock), the task id, queue and name, the old
//! and the new status (`None` before a send and after a purge), the worker
//! involved, and for failures and retries the error's type (the `"type"`
//! of the stored error JSON, or the core's own kind, such as `LeaseLost`).
//! Three records are not status changes: a cancel asked of a running task,
//! a callback delivered ([`Store::ack_callbacks`](super::Store::ack_callbacks))
//! and a finished task purged. The backends record status changes with
//! triggers on the task tables, so every verb that moves a task — now and
//! later — is in the feed without calling anything; on SQLite, the two
//! moves a W2 drain makes per task (claim, finish) are recorded instead by
//! the code that runs their statements, one row per batch (see
//! `sqlite/sql.rs`, `EVENT_TRIGGERS`), which a follower reads as one event
//! per task.
//!
//! Positions. A SQLite shard numbers its events by its rowid, given under
//! the shard's write lock, so a shard's events commit in position order
//! and "after position p" never skips one. A store of several shards has
//! one position per shard: its cursor is that vector (`s:12.40.7.3`). A
//! page merges the shards by time, then shard, taking each shard's events
//! in position order. PostgreSQL numbers by (transaction id, sequence) and
//! reads only events of transactions older than every running one (the
//! snapshot's `xmin`), which all have committed or aborted, so nothing can
//! later appear behind a cursor (`p:9071.4410`). Cursors are opaque to
//! callers; a follower persists the cursor of the last event it handled
//! ([`Store::event_cursor_set`](super::Store::event_cursor_set)) and
//! resumes from it, and sees every event exactly once.
//!
//! Bounds. Events older than the store's `events_retention_s` (default one
//! day) are pruned by `purge`; a shard always keeps its newest event, so
//! positions are never handed out twice. `?events=off` stops a store
//! handle from recording (reads still work).

use crate::error::{Error, Result};
use crate::task::Status;

/// How long events are kept when the store URL says nothing (one day).
pub const DEFAULT_EVENTS_RETENTION_MS: i64 = 86_400_000;

/// The most events one page returns.
pub const MAX_EVENTS_LIMIT: u32 = 10_000;

/// Longest consumer name, in bytes.
pub const MAX_CONSUMER_LEN: usize = 200;

/// Stored kind of a status change (the kind is then named from the statuses).
pub(crate) const KIND_STATUS: i64 = 0;
/// Stored kind of a cancel asked of a running task.
pub(crate) const KIND_CANCEL_REQUESTED: i64 = 1;
/// Stored kind of a delivered callback.
pub(crate) const KIND_DELIVERED: i64 = 2;
/// Stored kind of a purged task.
pub(crate) const KIND_PURGED: i64 = 3;

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Enqueued (→ queued).
    Sent,
    /// Handed to a worker (queued → running).
    Claimed,
    /// Finished with a result (running → done).
    Completed,
    /// Out of attempts, or failed without retry (→ failed).
    Failed,
    /// A failed attempt with attempts left (running → queued, with an error type).
    Retrying,
    /// Given back without counting the attempt (running → queued).
    Released,
    /// Its worker was lost (lease expired or worker gone: running → queued).
    Recovered,
    /// Cancelled (→ cancelled).
    Cancelled,
    /// A cancel was asked of the running task (status unchanged).
    CancelRequested,
    /// Its deadline passed (→ expired).
    Expired,
    /// A finished task put back in the queue (→ queued).
    Requeued,
    /// A finished task deleted by retention or purge (→ none).
    Purged,
    /// The callback given at send time ran (status unchanged).
    Delivered,
    /// Any other move (from → to says which).
    Moved,
}

impl EventKind {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sent => "sent",
            EventKind::Claimed => "claimed",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Retrying => "retrying",
            EventKind::Released => "released",
            EventKind::Recovered => "recovered",
            EventKind::Cancelled => "cancelled",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::Expired => "expired",
            EventKind::Requeued => "requeued",
            EventKind::Purged => "purged",
            EventKind::Delivered => "delivered",
            EventKind::Moved => "moved",
        }
    }
}

/// The error type recovery records: a running task whose worker was lost.
pub(crate) const LEASE_LOST_TYPE: &str = "LeaseLost";

/// Names an event from its stored kind, statuses and error type.
pub(crate) fn kind_of(code: i64, from: Option<Status>, to: Option<Status>, error_type: Option<&str>) -> EventKind {
    use Status::*;
    match code {
        KIND_STATUS => {}
        KIND_CANCEL_REQUESTED => return EventKind::CancelRequested,
        KIND_DELIVERED => return EventKind::Delivered,
        KIND_PURGED => return EventKind::Purged,
        _ => return EventKind::Moved,
    }
    match (from, to) {
        (None, Some(Queued)) => EventKind::Sent,
        (_, None) => EventKind::Purged,
        (Some(Queued), Some(Running)) => EventKind::Claimed,
        (_, Some(Done)) => EventKind::Completed,
        (_, Some(Failed)) => EventKind::Failed,
        (_, Some(Cancelled)) => EventKind::Cancelled,
        (_, Some(Expired)) => EventKind::Expired,
        (Some(Running), Some(Queued)) => match error_type {
            None => EventKind::Released,
            Some(LEASE_LOST_TYPE) => EventKind::Recovered,
            Some(_) => EventKind::Retrying,
        },
        (Some(f), Some(Queued)) if f.is_finished() => EventKind::Requeued,
        _ => EventKind::Moved,
    }
}

/// One recorded change of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The cursor just after this event: a follower that has handled it
    /// persists this and resumes from it.
    pub cursor: String,
    /// The event's position within its shard (SQLite) or the store
    /// (PostgreSQL); with `shard`, unique.
    pub seq: i64,
    /// The shard that recorded it (0 on PostgreSQL).
    pub shard: u32,
    /// When (ms, store clock).
    pub at: i64,
    /// The task.
    pub task_id: i64,
    /// Its queue.
    pub queue: String,
    /// Its task function name.
    pub name: String,
    /// What happened.
    pub kind: EventKind,
    /// Status before (None: the task did not exist yet).
    pub from: Option<Status>,
    /// Status after (None: the task is gone).
    pub to: Option<Status>,
    /// The worker that held or took the task, when one did.
    pub worker: Option<String>,
    /// For failures and retries: the error's type.
    pub error_type: Option<String>,
}

/// Read events after a cursor.
#[derive(Debug, Clone, Default)]
pub struct EventsParams {
    /// Only events after this cursor (None: from the oldest kept).
    pub after: Option<String>,
    /// At most this many (1..=10,000).
    pub limit: u32,
    /// Only events of this queue (the cursor still moves past the others).
    pub queue: Option<String>,
}

/// A page of events and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsPage {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// The cursor after this page (also when it is empty): pass it as
    /// `after` to read on.
    pub cursor: String,
}

/// Refuses a page size outside 1..=[`MAX_EVENTS_LIMIT`].
pub(crate) fn check_events_limit(limit: u32) -> Result<()> {
    if limit == 0 || limit > MAX_EVENTS_LIMIT {
        return Err(Error::InvalidArgument(format!("events limit {limit} is outside 1..={MAX_EVENTS_LIMIT}")));
    }
    Ok(())
}

/// Refuses an empty or overlong consumer name.
pub(crate) fn check_consumer(consumer: &str) -> Result<()> {
    if consumer.is_empty() || consumer.len() > MAX_CONSUMER_LEN {
        return Err(Error::InvalidArgument(format!(
            "consumer name must be 1..={MAX_CONSUMER_LEN} bytes, got {}",
            consumer.len()
        )));
    }
    Ok(())
}

/// What the stored names of consumers' event cursors begin with.
const EVENT_CURSOR_PREFIX: &str = "event:";

/// The stored name of a consumer's event cursor.
pub(crate) fn event_cursor_key(consumer: &str) -> String {
    format!("{EVENT_CURSOR_PREFIX}{consumer}")
}

/// The consumer whose event cursor is stored under `name`, if it is one.
pub(crate) fn event_cursor_consumer(name: &str) -> Option<&str> {
    name.strip_prefix(EVENT_CURSOR_PREFIX)
}

/// The stored name of a consumer's listen version.
pub(crate) fn listen_cursor_key(consumer: &str) -> String {
    format!("listen:{consumer}")
}

/// Refuses a negative listen version.
pub(crate) fn check_listen_version(version: i64) -> Result<()> {
    if version < 0 {
        return Err(Error::InvalidArgument(format!("listen version must be >= 0, got {version}")));
    }
    Ok(())
}

/// A stored listen version.
pub(crate) fn parse_listen_version(stored: &str) -> Result<i64> {
    stored.parse().map_err(|_| Error::Corrupt(format!("a stored listen version is not a number: {stored:?}")))
}

/// The prefix of a SQLite store's cursor.
const SHARD_CURSOR: &str = "s:";
/// The prefix of a PostgreSQL store's cursor.
const PG_CURSOR: &str = "p:";

fn bad_cursor(c: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("event cursor {c:?} {why}"))
}

/// The cursor of a SQLite store: each shard's last position.
pub(crate) fn shard_cursor(seqs: &[i64]) -> String {
    let parts: Vec<String> = seqs.iter().map(i64::to_string).collect();
    format!("{SHARD_CURSOR}{}", parts.join("."))
}

/// The per-shard positions of a SQLite store's cursor (zeros for None).
pub(crate) fn parse_shard_cursor(c: Option<&str>, shards: usize) -> Result<Vec<i64>> {
    let Some(c) = c else { return Ok(vec![0; shards]) };
    let body = c.strip_prefix(SHARD_CURSOR).ok_or_else(|| bad_cursor(c, "is not a cursor of a SQLite store"))?;
    let seqs: Vec<i64> = body
        .split('.')
        .map(|p| p.parse::<i64>().ok().filter(|v| *v >= 0))
        .collect::<Option<_>>()
        .ok_or_else(|| bad_cursor(c, "is damaged"))?;
    if seqs.len() != shards {
        return Err(bad_cursor(c, &format!("is for a store of {} shard(s); this one has {shards}", seqs.len())));
    }
    Ok(seqs)
}

/// The cursor of a PostgreSQL store: (transaction id, sequence).
pub(crate) fn pg_cursor(xid: i64, seq: i64) -> String {
    format!("{PG_CURSOR}{xid}.{seq}")
}

/// The (transaction id, sequence) of a PostgreSQL store's cursor ((0, 0) for None).
pub(crate) fn parse_pg_cursor(c: Option<&str>) -> Result<(i64, i64)> {
    let Some(c) = c else { return Ok((0, 0)) };
    let body = c.strip_prefix(PG_CURSOR).ok_or_else(|| bad_cursor(c, "is not a cursor of a PostgreSQL store"))?;
    let (x, s) = body.split_once('.').ok_or_else(|| bad_cursor(c, "is damaged"))?;
    match (x.parse::<i64>(), s.parse::<i64>()) {
        (Ok(x), Ok(s)) if x >= 0 && s >= 0 => Ok((x, s)),
        _ => Err(bad_cursor(c, "is damaged")),
    }
}

/// One stored event row before the backend gives it a cursor.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub seq: i64,
    pub at: i64,
    pub task_id: i64,
    pub queue: String,
    pub name: String,
    pub code: i64,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub worker: Option<String>,
    pub error_type: Option<String>,
}

impl EventRow {
    /// The event, with the cursor just after it.
    pub(crate) fn into_event(self, shard: u32, cursor: String) -> Result<Event> {
        let from = self.from.map(Status::from_code).transpose()?;
        let to = self.to.map(Status::from_code).transpose()?;
        Ok(Event {
            kind: kind_of(self.code, from, to, self.error_type.as_deref()),
            cursor,
            seq: self.seq,
            shard,
            at: self.at,
            task_id: self.task_id,
            queue: self.queue,
            name: self.name,
            from,
            to,
            worker: self.worker,
            error_type: self.error_type,
        })
    }
}

/// Merges the pages of several shards (each in position order, read after
/// `cursor`) into at most `limit` events: each step takes the shard head
/// that is earliest (time, then shard), so each shard's events are taken
/// as a prefix and a cursor covers exactly what was returned. A shard
/// whose page was short and wholly taken moves to its `head` (the newest
/// position it had when read), past events a queue filter left out.
pub(crate) fn merge_shards(
    pages: Vec<(Vec<EventRow>, i64)>,
    cursor: &mut [i64],
    limit: u32,
    full: u32,
) -> Result<Vec<Event>> {
    let mut taken = vec![0usize; pages.len()];
    let mut out = Vec::new();
    while out.len() < limit as usize {
        let next =
            (0..pages.len()).filter(|&s| taken[s] < pages[s].0.len()).min_by_key(|&s| (pages[s].0[taken[s]].at, s));
        let Some(s) = next else { break };
        let row = pages[s].0[taken[s]].clone();
        taken[s] += 1;
        cursor[s] = row.seq;
        out.push(row.into_event(s as u32, shard_cursor(cursor))?);
    }
    for (s, (rows, head)) in pages.iter().enumerate() {
        if taken[s] == rows.len() && rows.len() < full as usize {
            cursor[s] = cursor[s].max(*head);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, at: i64) -> EventRow {
        EventRow {
            seq,
            at,
            task_id: seq,
            queue: "q".into(),
            name: "n".into(),
            code: KIND_STATUS,
            from: None,
            to: Some(0),
            worker: None,
            error_type: None,
        }
    }

    #[test]
    fn kinds() {
        use Status::*;
        let k = |from, to, e| kind_of(KIND_STATUS, from, to, e);
        assert_eq!(k(None, Some(Queued), None), EventKind::Sent);
        assert_eq!(k(Some(Queued), Some(Running), None), EventKind::Claimed);
        assert_eq!(k(Some(Running), Some(Done), None), EventKind::Completed);
        assert_eq!(k(Some(Running), Some(Failed), Some("ValueError")), EventKind::Failed);
        assert_eq!(k(Some(Running), Some(Queued), Some("ValueError")), EventKind::Retrying);
        assert_eq!(k(Some(Running), Some(Queued), None), EventKind::Released);
        assert_eq!(k(Some(Running), Some(Queued), Some(LEASE_LOST_TYPE)), EventKind::Recovered);
        assert_eq!(k(Some(Queued), Some(Cancelled), None), EventKind::Cancelled);
        assert_eq!(k(Some(Queued), Some(Expired), None), EventKind::Expired);
        assert_eq!(k(Some(Failed), Some(Queued), None), EventKind::Requeued);
        assert_eq!(k(Some(Done), None, None), EventKind::Purged);
        assert_eq!(kind_of(KIND_CANCEL_REQUESTED, Some(Running), Some(Running), None), EventKind::CancelRequested);
        assert_eq!(kind_of(KIND_DELIVERED, Some(Done), Some(Done), None), EventKind::Delivered);
        assert_eq!(kind_of(KIND_PURGED, Some(Done), None, None), EventKind::Purged);
    }

    #[test]
    fn cursors_round_trip_and_refuse_others() {
        assert_eq!(parse_shard_cursor(None, 3).unwrap(), vec![0, 0, 0]);
        let c = shard_cursor(&[5, 0, 12]);
        assert_eq!(c, "s:5.0.12");
        assert_eq!(parse_shard_cursor(Some(&c), 3).unwrap(), vec![5, 0, 12]);
        for bad in ["s:5.0", "s:a.b.c", "p:1.2", "", "s:1.-2.3"] {
            assert!(matches!(parse_shard_cursor(Some(bad), 3), Err(Error::InvalidArgument(_))), "{bad}");
        }
        assert_eq!(parse_pg_cursor(Some(&pg_cursor(900, 4))).unwrap(), (900, 4));
        assert_eq!(parse_pg_cursor(None).unwrap(), (0, 0));
        for bad in ["s:1", "p:1", "p:x.2", "p:-1.2"] {
            assert!(matches!(parse_pg_cursor(Some(bad)), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn merge_takes_prefixes_by_time_then_shard() {
        // Shard 1's clock went back: its seq 2 is older than seq 1, yet
        // seq 1 must come first (a cursor cannot skip within a shard).
        let pages = vec![(vec![row(1, 10), row(2, 30)], 2), (vec![row(1, 20), row(2, 5)], 9)];
        let mut cursor = vec![0, 0];
        let got = merge_shards(pages, &mut cursor, 3, 100).unwrap();
        let order: Vec<(u32, i64)> = got.iter().map(|e| (e.shard, e.seq)).collect();
        assert_eq!(order, vec![(0, 1), (1, 1), (1, 2)]);
        // Shard 1 was wholly taken from a short page: it moves to its head.
        assert_eq!(cursor, vec![1, 9]);
        assert_eq!(got[2].cursor, "s:1.2");
    }

    #[test]
    fn checks() {
        assert!(check_events_limit(0).is_err());
        assert!(check_events_limit(MAX_EVENTS_LIMIT + 1).is_err());
        assert!(check_events_limit(1).is_ok());
        assert!(check_consumer("").is_err());
        assert!(check_consumer(&"x".repeat(MAX_CONSUMER_LEN + 1)).is_err());
        assert!(check_consumer("scheduler").is_ok());
    }
}
