//! The event feed on SQLite (the shared rules and formats are in
//! `store/events.rs`). Each shard records its own events, by TEMP triggers
//! on its writer connection (`sql::EVENT_TRIGGERS`), in the transaction of
//! the change; a read merges the shards. Also the consumer cursors and the
//! listen-data additions (equal values are not changes, every key's
//! latest value), kept in shard 0 like the rest of the store-wide data.

use super::tx::WriteTx;
use super::{sql, SqliteStore};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::events::{self as ev, EventRow, EventsPage, EventsParams};
use crate::store::rules;
use crate::store::{ListenChange, ListenSetParams};
use crate::task::{Status, Task};
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::Arc;

/// Prepares a shard's writer connection for the feed: creates the feed's
/// tables when missing, registers the clock function the triggers read,
/// and (unless `on` is false) creates the triggers.
pub(super) fn install(conn: &Connection, clock: Arc<dyn Clock>, on: bool) -> Result<()> {
    conn.execute_batch(sql::EVENTS_SCHEMA)?;
    // A feed made by the first build that had one has no `tasks` column;
    // adding it changes none of its rows (NULL: one event per row).
    let has_tasks = |conn: &Connection| -> Result<bool> {
        Ok(conn.prepare(sql::EVENTS_HAS_TASKS)?.query_row([], |r| r.get::<_, i64>(0))? != 0)
    };
    if !has_tasks(conn)? {
        if let Err(e) = conn.execute_batch(sql::EVENTS_ADD_TASKS) {
            // Another process opening the same store added it between our
            // look and our ALTER: that is the outcome we wanted.
            if !has_tasks(conn)? {
                return Err(e.into());
            }
        }
    }
    conn.create_scalar_function(sql::NOW_FUNCTION, 0, FunctionFlags::SQLITE_UTF8, move |_| Ok(clock.now_ms()))?;
    if on {
        conn.execute_batch(sql::EVENT_TRIGGERS)?;
    } else {
        conn.execute_batch(sql::DROP_EVENT_TRIGGERS)?;
    }
    Ok(())
}

/// Which moves [`record_moves`] records.
#[derive(Clone, Copy)]
pub(super) enum Moves {
    /// Tasks just claimed (`queued -> running`), still in `task`.
    Claimed,
    /// Tasks just moved to `task_done`.
    Finished,
}

/// One change of one task: (local id, at, queue, name, old status, new
/// status, worker, error type), as `sql::CLAIMED_EVENTS` and
/// `sql::FINISHED_EVENTS` read it.
type Change = (i64, i64, String, String, i64, i64, Option<String>, Option<String>);

/// Records the claims or finishes of tasks just moved (local ids, in the
/// order they moved), in the caller's transaction, when this handle
/// records events. The triggers leave these moves out (see
/// `sql::EVENT_TRIGGERS`), so every statement that makes one is followed
/// by this call (or [`record_claims`]) before its transaction records
/// anything else.
pub(super) fn record_moves(store: &SqliteStore, tx: &WriteTx, moves: Moves, locals: &[i64]) -> Result<()> {
    if !store.config.events || locals.is_empty() {
        return Ok(());
    }
    let read = match moves {
        Moves::Claimed => sql::CLAIMED_EVENTS,
        Moves::Finished => sql::FINISHED_EVENTS,
    };
    let ids: Vec<String> = locals.iter().map(i64::to_string).collect();
    let changes: Vec<Change> = tx
        .prepare_cached(read)?
        .query_map([format!("[{}]", ids.join(","))], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    append(tx, &changes)
}

/// [`record_moves`] for claimed tasks as the claim returned them (so
/// nothing is read again).
pub(super) fn record_claims(store: &SqliteStore, tx: &WriteTx, tasks: &[&Task]) -> Result<()> {
    if !store.config.events || tasks.is_empty() {
        return Ok(());
    }
    let n = i64::from(store.shard_count());
    let changes: Vec<Change> = tasks
        .iter()
        .map(|t| {
            let at = t.started_at.unwrap_or_default();
            (t.id / n, at, t.queue.clone(), t.name.clone(), 0, 1, t.worker.clone(), None)
        })
        .collect();
    append(tx, &changes)
}

/// Appends changes (in order): each run of tasks with the same change
/// (time, queue, name, statuses, worker, error type) is one row.
fn append(tx: &WriteTx, changes: &[Change]) -> Result<()> {
    let mut append = tx.prepare_cached(sql::EVENT_APPEND)?;
    let mut rest = changes;
    while let Some(first) = rest.first() {
        let same = |c: &Change| {
            (c.1, &c.2, &c.3, c.4, c.5, &c.6, &c.7)
                == (first.1, &first.2, &first.3, first.4, first.5, &first.6, &first.7)
        };
        let n = rest.iter().take_while(|c| same(c)).count();
        let (run, next) = rest.split_at(n);
        let packed = (n > 1).then(|| pack_ids(run.iter().map(|c| c.0)));
        let (local, at, queue, name, old, new, worker, error_type) = first;
        append.execute(params![n as i64, at, local, queue, name, old, new, worker, error_type, packed])?;
        rest = next;
    }
    Ok(())
}

/// Packs local ids for `event.tasks`: each id's difference from the one
/// before (the first's from 0), zigzag-encoded, as a LEB128 varint (ids
/// moved together are mostly consecutive: a byte or two each).
pub(super) fn pack_ids(ids: impl Iterator<Item = i64>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = 0i64;
    for id in ids {
        let d = id.wrapping_sub(prev);
        prev = id;
        let mut z = ((d << 1) ^ (d >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    out
}

/// The local ids [`pack_ids`] packed.
pub(super) fn unpack_ids(blob: &[u8]) -> Result<Vec<i64>> {
    let bad = || Error::Corrupt("an event row's packed task ids are damaged".into());
    let mut out = Vec::new();
    let mut prev = 0i64;
    let mut z = 0u64;
    let mut shift = 0u32;
    for &b in blob {
        if shift > 63 {
            return Err(bad());
        }
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 != 0 {
            shift += 7;
            continue;
        }
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        prev = prev.wrapping_add(d);
        out.push(prev);
        z = 0;
        shift = 0;
    }
    if shift != 0 || out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// A stored event row: one event, or (with packed ids) one per task.
fn event_rows(r: &Row) -> rusqlite::Result<(EventRow, Option<Vec<u8>>)> {
    Ok((event_row(r)?, r.get(10)?))
}

/// The events of stored rows (in position order) after position `after`.
fn expand(rows: Vec<(EventRow, Option<Vec<u8>>)>, after: i64) -> Result<Vec<EventRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for (row, packed) in rows {
        let Some(packed) = packed else {
            out.push(row);
            continue;
        };
        let ids = unpack_ids(&packed)?;
        let first = row.seq - (ids.len() as i64 - 1);
        for (i, id) in ids.into_iter().enumerate() {
            let seq = first + i as i64;
            if seq > after {
                out.push(EventRow { seq, task_id: id, ..row.clone() });
            }
        }
    }
    Ok(out)
}

fn event_row(r: &Row) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: r.get(0)?,
        at: r.get(1)?,
        task_id: r.get(2)?,
        queue: r.get(3)?,
        name: r.get(4)?,
        code: r.get(5)?,
        from: r.get(6)?,
        to: r.get(7)?,
        worker: r.get(8)?,
        error_type: r.get(9)?,
    })
}

/// Runs `f` in one read transaction, so that its statements see one snapshot.
fn in_snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.prepare_cached(sql::BEGIN_READ)?.execute([])?;
    let out = f(conn);
    let end = if out.is_ok() { sql::COMMIT } else { sql::ROLLBACK };
    let ended = conn.prepare_cached(end).and_then(|mut s| s.execute([]));
    let out = out?;
    ended?;
    Ok(out)
}

/// [`Store::events`](crate::store::Store::events).
pub(super) fn events(store: &SqliteStore, p: &EventsParams) -> Result<EventsPage> {
    ev::check_events_limit(p.limit)?;
    let mut cursor = ev::parse_shard_cursor(p.after.as_deref(), store.shards.len())?;
    let mut pages = Vec::with_capacity(store.shards.len());
    for (s, &after) in cursor.iter().enumerate() {
        pages.push(store.read(s, |conn| {
            in_snapshot(conn, |conn| {
                let mut stmt = conn.prepare_cached(sql::EVENTS_AFTER)?;
                let rows = stmt.query_map(params![after, p.queue, p.limit], event_rows)?;
                let mut rows = expand(rows.collect::<rusqlite::Result<_>>()?, after)?;
                // Packed rows can hold more events than the page takes; a
                // shorter list means every row was read (see `merge_shards`).
                rows.truncate(p.limit as usize);
                for r in &mut rows {
                    r.task_id = store.global(s, r.task_id);
                }
                let head: i64 = conn.prepare_cached(sql::EVENTS_HEAD)?.query_row([], |r| r.get(0))?;
                Ok((rows, head))
            })
        })?);
    }
    let events = ev::merge_shards(pages, &mut cursor, p.limit, p.limit)?;
    Ok(EventsPage { events, cursor: ev::shard_cursor(&cursor) })
}

/// [`Store::events_head`](crate::store::Store::events_head).
pub(super) fn events_head(store: &SqliteStore) -> Result<String> {
    let heads = (0..store.shards.len())
        .map(|s| store.read(s, |conn| Ok(conn.prepare_cached(sql::EVENTS_HEAD)?.query_row([], |r| r.get(0))?)))
        .collect::<Result<Vec<i64>>>()?;
    Ok(ev::shard_cursor(&heads))
}

/// Prunes a shard's events past the feed's retention (in the caller's
/// purge transaction).
pub(super) fn prune(store: &SqliteStore, tx: &WriteTx, now: i64) -> Result<()> {
    let Some(keep) = store.config.events_retention_ms else { return Ok(()) };
    let first: Option<i64> =
        tx.prepare_cached(sql::EVENTS_FIRST_KEPT)?.query_row([now.saturating_sub(keep)], |r| r.get(0)).optional()?;
    tx.prepare_cached(sql::EVENTS_PRUNE)?.execute([first.unwrap_or(i64::MAX)])?;
    Ok(())
}

fn cursor_set(store: &SqliteStore, name: &str, value: &str) -> Result<()> {
    let now = store.clock.now_ms();
    store.write(0, |tx| {
        tx.prepare_cached(sql::CURSOR_SET)?.execute(params![name, value, now])?;
        Ok(())
    })
}

fn cursor_get(store: &SqliteStore, name: &str) -> Result<Option<String>> {
    store.read(0, |conn| Ok(conn.prepare_cached(sql::CURSOR_GET)?.query_row([name], |r| r.get(0)).optional()?))
}

/// [`Store::event_cursor_set`](crate::store::Store::event_cursor_set).
pub(super) fn event_cursor_set(store: &SqliteStore, consumer: &str, cursor: &str) -> Result<()> {
    ev::check_consumer(consumer)?;
    ev::parse_shard_cursor(Some(cursor), store.shards.len())?;
    cursor_set(store, &ev::event_cursor_key(consumer), cursor)
}

/// [`Store::event_cursor_get`](crate::store::Store::event_cursor_get).
pub(super) fn event_cursor_get(store: &SqliteStore, consumer: &str) -> Result<Option<String>> {
    ev::check_consumer(consumer)?;
    cursor_get(store, &ev::event_cursor_key(consumer))
}

/// [`Store::listen_cursor_set`](crate::store::Store::listen_cursor_set).
pub(super) fn listen_cursor_set(store: &SqliteStore, consumer: &str, version: i64) -> Result<()> {
    ev::check_consumer(consumer)?;
    ev::check_listen_version(version)?;
    cursor_set(store, &ev::listen_cursor_key(consumer), &version.to_string())
}

/// [`Store::listen_cursor_get`](crate::store::Store::listen_cursor_get).
pub(super) fn listen_cursor_get(store: &SqliteStore, consumer: &str) -> Result<Option<i64>> {
    ev::check_consumer(consumer)?;
    cursor_get(store, &ev::listen_cursor_key(consumer))?.map(|v| ev::parse_listen_version(&v)).transpose()
}

/// [`Store::ack_callbacks`](crate::store::Store::ack_callbacks).
pub(super) fn ack_callbacks(store: &SqliteStore, ids: &[i64]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    store.per_item(
        ids,
        |id| *id,
        |tx, _, local, id| {
            if store.config.events && tx.prepare_cached(sql::EVENT_DELIVERED)?.execute(params![local, now])? == 1 {
                return Ok(Ok(()));
            }
            let found: Option<i64> = tx.prepare_cached(sql::STATUS_OF)?.query_row([local], |r| r.get(0)).optional()?;
            Ok(match found.map(Status::from_code).transpose()? {
                None => Err(rules::task_not_found(*id)),
                Some(s) if s.is_finished() => Ok(()),
                Some(status) => {
                    Err(Error::InvalidTransition { id: *id, status, action: "acknowledge the callback of" })
                }
            })
        },
    )
}

/// [`Store::listen_set`](crate::store::Store::listen_set): a value equal
/// to the key's latest is not a change (its version is returned and
/// nothing is recorded); the bool says whether a change was recorded.
pub(super) fn listen_set(store: &SqliteStore, p: &ListenSetParams) -> Result<(i64, bool)> {
    rules::check_listen_set(&p.key, &p.value, store.config.max_payload)?;
    let now = store.clock.now_ms();
    store.write(0, |tx| {
        let latest: Option<(i64, Vec<u8>)> =
            tx.prepare_cached(sql::LISTEN_GET)?.query_row([&p.key], |r| Ok((r.get(0)?, r.get(2)?))).optional()?;
        if let Some((version, value)) = latest {
            if value == p.value {
                return Ok((version, false));
            }
        }
        let v = tx.prepare_cached(sql::LISTEN_SET)?.query_row(params![p.key, p.value, now], |r| r.get(0))?;
        Ok((v, true))
    })
}

/// [`Store::listen_keys`](crate::store::Store::listen_keys).
pub(super) fn listen_keys(store: &SqliteStore) -> Result<Vec<ListenChange>> {
    store.read(0, |conn| {
        let mut stmt = conn.prepare_cached(sql::LISTEN_KEYS)?;
        let rows = stmt.query_map([], |r| {
            Ok(ListenChange { version: r.get(0)?, key: r.get(1)?, value: r.get(2)?, at: r.get(3)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn packed_ids_round_trip_and_refuse_damage() {
        for ids in [vec![1], vec![5, 6, 7, 8], vec![900, 3, i64::MAX, 0, i64::MIN, 70_000]] {
            assert_eq!(unpack_ids(&pack_ids(ids.iter().copied())).unwrap(), ids);
        }
        assert_eq!(pack_ids(1000..1100).len(), 101, "consecutive ids: a byte each");
        for bad in [&[][..], &[0x80][..], &[0xff; 11][..]] {
            assert!(matches!(unpack_ids(bad), Err(Error::Corrupt(_))), "{bad:?}");
        }
    }

    fn row(seq: i64, task_id: i64) -> EventRow {
        EventRow {
            seq,
            at: 1,
            task_id,
            queue: "q".into(),
            name: "n".into(),
            code: ev::KIND_STATUS,
            from: Some(0),
            to: Some(1),
            worker: None,
            error_type: None,
        }
    }

    #[test]
    fn a_packed_row_is_one_event_per_task_from_the_cursor_on() {
        // Positions 3..=5 packed, then 6 alone; read after position 3.
        let rows = vec![(row(5, 10), Some(pack_ids([10, 11, 12].into_iter()))), (row(6, 13), None)];
        let got: Vec<(i64, i64)> = expand(rows, 3).unwrap().iter().map(|r| (r.seq, r.task_id)).collect();
        assert_eq!(got, vec![(4, 11), (5, 12), (6, 13)]);
    }

    #[test]
    fn a_feed_made_before_packed_rows_gains_the_column_and_keeps_its_events() {
        // The `event` table as the first build with a feed (0e3c9a7) made it
        // (installed without triggers: this schema has no task tables).
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE event (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, task INTEGER NOT NULL,
                queue TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL, old INTEGER, new INTEGER,
                worker TEXT, error_type TEXT);
             INSERT INTO event VALUES (1, 7, 3, 'q', 'n', 0, NULL, 0, NULL, NULL);",
        )
        .unwrap();
        for _ in 0..2 {
            install(&conn, Arc::new(ManualClock::new(0)), false).unwrap();
        }
        let has: i64 = conn.query_row(sql::EVENTS_HAS_TASKS, [], |r| r.get(0)).unwrap();
        assert_eq!(has, 1);
        let mut stmt = conn.prepare(sql::EVENTS_AFTER).unwrap();
        let rows: Vec<_> = stmt
            .query_map(params![0, None::<String>, 10], event_rows)
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let events = expand(rows, 0).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].seq, events[0].task_id, events[0].to), (1, 3, Some(0)));
    }
}
