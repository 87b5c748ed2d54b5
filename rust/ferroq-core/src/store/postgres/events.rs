//! The event feed on PostgreSQL (the shared rules and formats are in
//! `store/events.rs`): the feed's schema step, the connection option that
//! turns recording off, reads by cursor, consumer cursors, delivered
//! callbacks, pruning, and the listen-data additions (equal values are
//! not changes, every key's latest value). The events themselves are
//! written by triggers (`sql::EVENTS_SCHEMA`).

use super::config::PgConfig;
use super::exec::statuses;
use super::pool::{Db, PgResult};
use super::{sql, PostgresStore};
use crate::error::{Error, Result};
use crate::store::events::{self as ev, EventRow, EventsPage, EventsParams};
use crate::store::rules;
use crate::store::{ListenChange, ListenSetParams};
use postgres::GenericClient;

/// Creates or updates the feed's tables, functions and triggers once per
/// store (marked in `meta`), inside the caller's migration transaction.
pub(super) fn prepare(tx: &mut postgres::Transaction<'_>) -> PgResult<()> {
    let mark: Option<String> =
        tx.query_opt(sql::META_GET, &[&sql::EVENTS_SCHEMA_MARK])?.map(|r| r.try_get(0)).transpose()?;
    if mark.as_deref() != Some(sql::EVENTS_SCHEMA_VERSION) {
        tx.batch_execute(sql::EVENTS_SCHEMA)?;
        tx.execute(sql::META_SET, &[&sql::EVENTS_SCHEMA_MARK, &sql::EVENTS_SCHEMA_VERSION])?;
    }
    Ok(())
}

/// The options every connection of the store is opened with: its schema
/// as search path, and `ferroq.events=off` when the feed is off.
pub(super) fn connection_options(cfg: &PgConfig) -> String {
    let path = sql::SEARCH_PATH_OPTION.replace("{schema}", &cfg.schema);
    if cfg.store.events {
        path
    } else {
        format!("{path} {}", sql::EVENTS_OFF_OPTION)
    }
}

/// [`Store::events`](crate::store::Store::events).
pub(super) fn events(store: &PostgresStore, p: &EventsParams) -> Result<EventsPage> {
    ev::check_events_limit(p.limit)?;
    let (xid, seq) = ev::parse_pg_cursor(p.after.as_deref())?;
    let limit = i64::from(p.limit);
    let (rows, head) = store.run(true, |db| {
        let mut rows = Vec::new();
        let mut head = None;
        for r in db.query(sql::EVENTS_AFTER, &[&xid, &seq, &p.queue, &limit])? {
            let part: i32 = r.try_get(0)?;
            let pos: (i64, i64) = (r.try_get(1)?, r.try_get(2)?);
            if part == 1 {
                head = Some(pos);
                continue;
            }
            let code: i16 = r.try_get(7)?;
            let old: Option<i16> = r.try_get(8)?;
            let new: Option<i16> = r.try_get(9)?;
            let row = EventRow {
                seq: pos.1,
                at: r.try_get(3)?,
                task_id: r.try_get(4)?,
                queue: r.try_get(5)?,
                name: r.try_get(6)?,
                code: code.into(),
                from: old.map(i64::from),
                to: new.map(i64::from),
                worker: r.try_get(10)?,
                error_type: r.try_get(11)?,
            };
            rows.push((pos.0, row));
        }
        Ok((rows, head))
    })?;
    let short = rows.len() < p.limit as usize;
    let mut at = (xid, seq);
    let mut events = Vec::with_capacity(rows.len());
    for (x, row) in rows {
        at = (x, row.seq);
        events.push(row.into_event(0, ev::pg_cursor(x, at.1))?);
    }
    if short {
        // Every event up to the head was read (the queue filter left the
        // rest out): stand on the head, so the next read starts there.
        if let Some(h) = head {
            at = at.max(h);
        }
    }
    Ok(EventsPage { events, cursor: ev::pg_cursor(at.0, at.1) })
}

/// [`Store::events_head`](crate::store::Store::events_head).
pub(super) fn events_head(store: &PostgresStore) -> Result<String> {
    let head = store.run(true, |db| {
        Ok(match db.query_opt(sql::EVENTS_HEAD, &[])? {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (0i64, 0i64),
        })
    })?;
    Ok(ev::pg_cursor(head.0, head.1))
}

/// Prunes events past the feed's retention (in the caller's purge transaction).
pub(super) fn prune<C: GenericClient>(store: &PostgresStore, db: &mut Db<'_, C>, now: i64) -> PgResult<()> {
    if let Some(keep) = store.cfg.store.events_retention_ms {
        db.execute(sql::EVENTS_PRUNE, &[&now.saturating_sub(keep)])?;
    }
    Ok(())
}

fn cursor_set(store: &PostgresStore, name: &str, value: &str) -> Result<()> {
    let now = store.clock.now_ms();
    store.run(true, |db| {
        db.execute(sql::CURSOR_SET, &[&name, &value, &now])?;
        Ok(())
    })
}

fn cursor_get(store: &PostgresStore, name: &str) -> Result<Option<String>> {
    store.run(true, |db| Ok(db.query_opt(sql::CURSOR_GET, &[&name])?.map(|r| r.try_get(0)).transpose()?))
}

/// [`Store::event_cursor_set`](crate::store::Store::event_cursor_set).
pub(super) fn event_cursor_set(store: &PostgresStore, consumer: &str, cursor: &str) -> Result<()> {
    ev::check_consumer(consumer)?;
    ev::parse_pg_cursor(Some(cursor))?;
    cursor_set(store, &ev::event_cursor_key(consumer), cursor)
}

/// [`Store::event_cursor_get`](crate::store::Store::event_cursor_get).
pub(super) fn event_cursor_get(store: &PostgresStore, consumer: &str) -> Result<Option<String>> {
    ev::check_consumer(consumer)?;
    cursor_get(store, &ev::event_cursor_key(consumer))
}

/// [`Store::listen_cursor_set`](crate::store::Store::listen_cursor_set).
pub(super) fn listen_cursor_set(store: &PostgresStore, consumer: &str, version: i64) -> Result<()> {
    ev::check_consumer(consumer)?;
    ev::check_listen_version(version)?;
    cursor_set(store, &ev::listen_cursor_key(consumer), &version.to_string())
}

/// [`Store::listen_cursor_get`](crate::store::Store::listen_cursor_get).
pub(super) fn listen_cursor_get(store: &PostgresStore, consumer: &str) -> Result<Option<i64>> {
    ev::check_consumer(consumer)?;
    cursor_get(store, &ev::listen_cursor_key(consumer))?.map(|v| ev::parse_listen_version(&v)).transpose()
}

/// [`Store::ack_callbacks`](crate::store::Store::ack_callbacks).
pub(super) fn ack_callbacks(store: &PostgresStore, ids: &[i64]) -> Result<Vec<Result<()>>> {
    let now = store.clock.now_ms();
    let on = store.cfg.store.events;
    store.per_item(ids, false, |db, id, _| {
        if on && !db.query(sql::EVENT_DELIVERED, &[id, &now])?.is_empty() {
            return Ok(Ok(()));
        }
        Ok(match statuses(db, &[*id])?.get(id).copied() {
            None => Err(rules::task_not_found(*id)),
            Some(s) if s.is_finished() => Ok(()),
            Some(status) => Err(Error::InvalidTransition { id: *id, status, action: "acknowledge the callback of" }),
        })
    })
}

/// [`Store::listen_set`](crate::store::Store::listen_set): a value equal
/// to the key's latest is not a change; the bool says whether one was
/// recorded.
pub(super) fn listen_set(store: &PostgresStore, p: &ListenSetParams) -> Result<(i64, bool)> {
    rules::check_listen_set(&p.key, &p.value, store.cfg.store.max_payload)?;
    let now = store.clock.now_ms();
    store.tx(false, |db| {
        db.execute(sql::LISTEN_LOCK, &[])?;
        if let Some(r) = db.query_opt(sql::LISTEN_GET, &[&p.key])? {
            let value: Vec<u8> = r.try_get(2)?;
            if value == p.value {
                return Ok((r.try_get(0)?, false));
            }
        }
        let row = db.query(sql::LISTEN_SET, &[&p.key, &p.value, &now])?;
        Ok((row.first().map(|r| r.try_get::<_, i64>(0)).transpose()?.unwrap_or(0), true))
    })
}

/// [`Store::listen_keys`](crate::store::Store::listen_keys).
pub(super) fn listen_keys(store: &PostgresStore) -> Result<Vec<ListenChange>> {
    store.run(true, |db| {
        db.query(sql::LISTEN_KEYS, &[])?
            .iter()
            .map(|r| {
                Ok(ListenChange { version: r.try_get(0)?, key: r.try_get(1)?, value: r.try_get(2)?, at: r.try_get(3)? })
            })
            .collect()
    })
}
