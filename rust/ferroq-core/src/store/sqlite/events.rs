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
use crate::task::Status;
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::Arc;

/// Prepares a shard's writer connection for the feed: creates the feed's
/// tables when missing, registers the clock function the triggers read,
/// and (unless `on` is false) creates the triggers.
pub(super) fn install(conn: &Connection, clock: Arc<dyn Clock>, on: bool) -> Result<()> {
    conn.execute_batch(sql::EVENTS_SCHEMA)?;
    conn.create_scalar_function(sql::NOW_FUNCTION, 0, FunctionFlags::SQLITE_UTF8, move |_| Ok(clock.now_ms()))?;
    if on {
        conn.execute_batch(sql::EVENT_TRIGGERS)?;
    } else {
        conn.execute_batch(sql::DROP_EVENT_TRIGGERS)?;
    }
    Ok(())
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
                let rows = stmt.query_map(params![after, p.queue, p.limit], event_row)?;
                let mut rows: Vec<EventRow> = rows.collect::<rusqlite::Result<_>>()?;
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
