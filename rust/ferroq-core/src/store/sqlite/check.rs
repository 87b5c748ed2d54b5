//! The store check ([`Store::check`](crate::store::Store::check)), shard
//! by shard: SQLite's structure check, the shard's identity (store id,
//! index, count, schema version), the checksum of every stored payload and
//! result, and whether the handle has seen the shard damaged.

use super::{schema, sql, SqliteStore};
use crate::error::Result;
use crate::store::rules;
use crate::store::ShardCheck;
use rusqlite::Connection;

/// At most this many problems are listed per shard (the count is still given).
const MAX_MESSAGES: usize = 100;

/// [`Store::check`](crate::store::Store::check).
pub(super) fn check(store: &SqliteStore) -> Result<Vec<ShardCheck>> {
    let store_id = schema::store_id(&store.shards[0].conn.lock()).ok().flatten();
    let n = store.shard_count();
    Ok(store
        .shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let mut messages = Vec::new();
            // A file is checked on a read-only connection of its own, so a
            // long check never holds the writer (sends, claims and lease
            // renewals go on); an in-memory shard has only its writer.
            let found = match store.config.path.as_ref().map(|_| reader(&shard.label)) {
                Some(Ok(conn)) => check_shard(store, &conn, i, n, store_id.as_deref()),
                Some(Err(e)) => Err(e),
                None => check_shard(store, &shard.conn.lock(), i, n, store_id.as_deref()),
            };
            match found {
                Ok(found) if found.is_empty() => {
                    // Sound now (repaired, or the damage was passing): sends
                    // into it are accepted again.
                    shard.unhealthy.lock().take();
                }
                Ok(found) => {
                    if let Some(e) = shard.unhealthy() {
                        messages.push(format!("this handle found the shard damaged: {e}"));
                    }
                    messages.extend(found)
                }
                Err(e) => messages.push(format!("the check could not finish: {e}")),
            }
            ShardCheck { path: shard.label.clone(), ok: messages.is_empty(), messages }
        })
        .collect())
}

/// A read-only connection to a shard file.
fn reader(path: &str) -> Result<Connection> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// The problems found in one shard.
fn check_shard(
    store: &SqliteStore,
    conn: &Connection,
    i: usize,
    n: u32,
    store_id: Option<&str>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare(sql::INTEGRITY_CHECK)?;
    for line in stmt.query_map([], |r| r.get::<_, String>(0))? {
        let line = line?;
        if line != "ok" {
            out.push(format!("integrity: {line}"));
        }
    }
    match store_id {
        Some(id) => out.extend(schema::identity_problems(conn, i as u32, n, id)?),
        None => out.push("shard 0 records no store id".into()),
    }
    let mut stmt = conn.prepare(sql::CHECKSUMS)?;
    let mut rows = stmt.query([])?;
    let mut damaged = 0usize;
    while let Some(r) = rows.next()? {
        let id = store.global(i, r.get(0)?);
        let payload: Vec<u8> = r.get(1)?;
        let result: Option<Vec<u8>> = r.get(3)?;
        let mut bad = Vec::new();
        if !rules::checksum_matches(&payload, r.get(2)?) {
            bad.push("payload");
        }
        let result_ok = match &result {
            Some(v) => rules::checksum_matches(v, r.get(4)?),
            None => true,
        };
        if !result_ok {
            bad.push("result");
        }
        if !bad.is_empty() {
            damaged += 1;
            if damaged <= MAX_MESSAGES {
                out.push(format!("task {id}: its {} does not match its checksum", bad.join(" and ")));
            }
        }
    }
    if damaged > MAX_MESSAGES {
        out.push(format!("{damaged} damaged tasks in all"));
    }
    Ok(out)
}
