//! Connection setup and schema creation, in one place, with every pragma
//! read back: SQLite silently ignores a misspelt pragma, so a setting that
//! did not take is reported as an error rather than trusted.

use super::sql;
use crate::error::{Error, Result};
use crate::store::config::{StoreConfig, Synchronous};
use crate::store::rules;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The settings a connection ended up with, as SQLite reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pragmas {
    /// `wal` on disk, `memory` in memory.
    pub journal_mode: String,
    /// 1 = NORMAL, 2 = FULL.
    pub synchronous: i64,
    /// Milliseconds.
    pub busy_timeout: i64,
    /// Bytes per page: `PAGE_SIZE` (1,024) for stores this version created.
    pub page_size: i64,
}

/// The page size of new shard files. SQLite's default is 4,096 bytes; a
/// send of one small task changes one leaf of the task table and one of its
/// ready index, and each changed page is written to the WAL whole (and later
/// to the database file), so with small pages a commit writes a quarter of
/// the bytes. On this project's 2-core reference machine that is the
/// difference between 30,000 and 50,000 single-task commits per second.
/// Payloads larger than a page spill onto overflow pages as before. A shard
/// created with another page size keeps it (SQLite cannot change it in WAL
/// mode).
pub const PAGE_SIZE: i64 = 1024;

/// Makes SQLite plan each statement once, whatever values are bound.
/// Without it a statement whose plan looked at a bound value (any `LIMIT
/// ?`, a `?n IS NULL` it could fold) is marked expired by every bind and
/// parsed and planned again at every run: most of a trickle's CPU went
/// there, in every claim, peek and completion.
pub fn plan_once(conn: &Connection) -> Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// Applies the store's settings to a fresh connection and verifies them.
pub fn configure(conn: &Connection, config: &StoreConfig, in_memory: bool) -> Result<Pragmas> {
    conn.busy_timeout(config.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    plan_once(conn)?;
    // Applies only to a file with no content yet (see PAGE_SIZE).
    conn.execute_batch(&sql::set_page_size(PAGE_SIZE))?;
    let want_journal = if in_memory { "memory" } else { "wal" };
    let journal: String = conn.query_row(sql::SET_WAL, [], |r| r.get(0))?;
    let want_sync = match config.synchronous {
        Synchronous::Normal => 1,
        Synchronous::Full => 2,
    };
    conn.execute_batch(&sql::set_synchronous(want_sync))?;
    // The page cache stays at 2 MiB (see sql::CACHE_SETTINGS for why not more).
    conn.execute_batch(sql::CACHE_SETTINGS)?;
    let pragmas = read_pragmas(conn)?;
    if !journal.eq_ignore_ascii_case(want_journal) || pragmas.journal_mode != want_journal {
        return Err(Error::Unavailable(format!(
            "could not switch the database to {want_journal} journaling (it reports {journal:?}); \
             is the directory on a filesystem without shared-memory support?"
        )));
    }
    if pragmas.synchronous != want_sync {
        return Err(Error::Storage(format!(
            "synchronous={} did not take (SQLite reports {})",
            want_sync, pragmas.synchronous
        )));
    }
    let want_busy = config.busy_timeout.as_millis() as i64;
    if pragmas.busy_timeout != want_busy {
        return Err(Error::Storage(format!(
            "busy_timeout={} did not take (SQLite reports {})",
            want_busy, pragmas.busy_timeout
        )));
    }
    Ok(pragmas)
}

/// Reads the settings that matter back from SQLite.
pub fn read_pragmas(conn: &Connection) -> Result<Pragmas> {
    Ok(Pragmas {
        journal_mode: conn.query_row(sql::JOURNAL_MODE, [], |r| r.get::<_, String>(0))?.to_lowercase(),
        synchronous: conn.query_row(sql::SYNCHRONOUS, [], |r| r.get(0))?,
        busy_timeout: conn.query_row(sql::BUSY_TIMEOUT, [], |r| r.get(0))?,
        page_size: conn.query_row(sql::PAGE_SIZE, [], |r| r.get(0))?,
    })
}

/// What [`prepare`] found in a shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The store's shard count, as this shard records it.
    pub shards: u32,
    /// True while the store is still being created (shard 0 carries the
    /// mark until every shard file exists): only then may a missing shard
    /// file be created.
    pub creating: bool,
    /// The id of the store this shard belongs to.
    pub store_id: String,
}

// A shard is known by its store: its `meta` table records the store's id
// (random, made when the store was created, the same in every shard), the
// shard's own index and the shard count. `meta` is a key/value table that
// has been in every shard since schema version 1, so the identity needed no
// new table; SQLite's header fields are taken (`application_id` is ferroq's
// mark, `user_version` the schema version) and too small for a random id.
/// The meta entry holding the store id.
const META_STORE_ID: &str = "store_id";
/// The meta entry holding the shard's index.
const META_SHARD: &str = "shard";
/// The meta entry holding the store's shard count.
const META_SHARDS: &str = "shards";
/// The meta entry shard 0 holds while a multi-shard store is being created.
const META_CREATING: &str = "creating";

/// A new random store id (128 bits, hex).
pub fn new_store_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Refuses a database that is not a ferroq shard (a SQLite file of
/// another application, or of a newer ferroq) or that is empty — before
/// [`configure`], so that a refused file is left exactly as it was (not
/// even switched to WAL). Shard files are only ever created whole (see
/// [`create`]), so an existing file without the schema is a damaged one
/// (truncated, or replaced by an empty file): opening it as a new shard
/// would silently lose its tasks and hand their ids out again.
pub fn identify(conn: &Connection, label: &str) -> Result<()> {
    let (app_id, version) = read_identity(conn)?;
    check_identity(conn, app_id, version, label)
}

/// The file's (application_id, user_version).
fn read_identity(conn: &Connection) -> Result<(i64, i64)> {
    let app_id: i64 = conn.query_row(sql::READ_APPLICATION_ID, [], |r| r.get(0))?;
    let version: i64 = conn.query_row(sql::READ_USER_VERSION, [], |r| r.get(0))?;
    Ok((app_id, version))
}

fn check_identity(conn: &Connection, app_id: i64, version: i64, label: &str) -> Result<()> {
    if app_id == 0 && version == 0 {
        let objects: i64 = conn.query_row(sql::SCHEMA_OBJECTS, [], |r| r.get(0))?;
        if objects != 0 {
            return Err(Error::NotAStore(format!(
                "{label} is a SQLite database of something else (it has tables but no ferroq schema)"
            )));
        }
        return Err(rules::damaged_file(
            label,
            "the shard file is empty (no ferroq schema): it was truncated or replaced, and its tasks are gone",
        ));
    } else if app_id != sql::APPLICATION_ID {
        return Err(Error::NotAStore(format!(
            "{label} is a SQLite database of another application (application_id {app_id:#x})"
        )));
    } else if version > sql::SCHEMA_VERSION {
        return Err(Error::NotAStore(format!(
            "{label} was written by a newer ferroq (schema version {version}; this build reads up to {})",
            sql::SCHEMA_VERSION
        )));
    }
    Ok(())
}

/// Writes the schema of shard `index` of a new store of `shards` shards
/// into an empty database (a file not yet at its place, or memory).
pub fn create(conn: &mut Connection, index: u32, shards: u32, store_id: &str) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(sql::SCHEMA_V1)?;
    tx.execute_batch(sql::MIGRATE_V2)?;
    tx.execute_batch(sql::MIGRATE_V3)?;
    tx.execute_batch(sql::MIGRATE_V4)?;
    tx.execute_batch(sql::MIGRATE_V5)?;
    tx.execute(sql::META_SET, ("app", "ferroq"))?;
    tx.execute(sql::META_SET, (META_SHARDS, shards.to_string()))?;
    tx.execute(sql::META_SET, (META_SHARD, index.to_string()))?;
    tx.execute(sql::META_SET, (META_STORE_ID, store_id))?;
    if index == 0 && shards > 1 {
        tx.execute(sql::META_SET, (META_CREATING, "1"))?;
    }
    tx.execute_batch(&sql::stamp())?;
    tx.commit()?;
    Ok(())
}

/// Checks that a shard file is shard `index` of its store — of the store
/// `store_id` names, when given (every shard but the first) — and migrates
/// a shard of an older schema version, all in one write transaction.
///
/// Migration from version 1 adds the checksum columns and the store id:
/// shard 0 gets a new one, every other shard the one shard 0 has. From
/// version 2, the queue options columns; from version 3, the dependency
/// table; from version 4, pause, aging and dead letters.
pub fn prepare(conn: &mut Connection, index: u32, store_id: Option<&str>, label: &str) -> Result<ShardInfo> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (app_id, version) = read_identity(&tx)?;
    // Checked again inside the write transaction: another process may have
    // changed the file since `identify` looked.
    check_identity(&tx, app_id, version, label)?;
    let has_meta: i64 = tx.query_row(sql::TABLE_EXISTS, ["meta"], |r| r.get(0))?;
    if has_meta == 0 {
        return Err(rules::damaged_file(label, "the shard carries ferroq's stamp but has no meta table"));
    }
    let meta =
        |name: &str| -> Result<Option<String>> { Ok(tx.query_row(sql::META_GET, [name], |r| r.get(0)).optional()?) };
    let shards: u32 = meta(META_SHARDS)?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| rules::damaged_file(label, "the shard records no valid shard count"))?;
    let stored_index: Option<u32> = meta(META_SHARD)?.and_then(|v| v.parse().ok());
    match stored_index {
        Some(i) if i == index => {}
        Some(i) => {
            return Err(rules::damaged_file(
                label,
                &format!("this file is shard {i} of its store, not shard {index}: shard files were renamed or swapped"),
            ))
        }
        None => return Err(rules::damaged_file(label, "the shard records no valid shard index")),
    }
    if version < 2 {
        tx.execute_batch(sql::MIGRATE_V2)?;
        let id = store_id.map(str::to_string).unwrap_or_else(new_store_id);
        tx.execute(sql::META_SET, (META_STORE_ID, id))?;
    }
    if version < 3 {
        tx.execute_batch(sql::MIGRATE_V3)?;
    }
    if version < 4 {
        tx.execute_batch(sql::MIGRATE_V4)?;
    }
    if version < 5 {
        tx.execute_batch(sql::MIGRATE_V5)?;
    }
    if version < sql::SCHEMA_VERSION {
        tx.execute_batch(&sql::stamp())?;
    }
    let own = meta(META_STORE_ID)?.ok_or_else(|| rules::damaged_file(label, "the shard records no store id"))?;
    if let Some(want) = store_id {
        if own != want {
            return Err(rules::damaged_file(
                label,
                &format!("this file belongs to another store (store id {own}; this store's is {want})"),
            ));
        }
    }
    let creating = meta(META_CREATING)?.is_some();
    tx.commit()?;
    Ok(ShardInfo { shards, creating, store_id: own })
}

/// What shard `index` of the store `store_id` records about itself, for
/// the store check: one message per disagreement (none when it agrees).
pub fn identity_problems(conn: &Connection, index: u32, shards: u32, store_id: &str) -> Result<Vec<String>> {
    let meta =
        |name: &str| -> Result<Option<String>> { Ok(conn.query_row(sql::META_GET, [name], |r| r.get(0)).optional()?) };
    let mut out = Vec::new();
    let (app_id, version) = read_identity(conn)?;
    if app_id != sql::APPLICATION_ID || version != sql::SCHEMA_VERSION {
        out.push(format!("header: application_id {app_id:#x}, schema version {version}"));
    }
    let expect =
        [(META_STORE_ID, store_id.to_string()), (META_SHARD, index.to_string()), (META_SHARDS, shards.to_string())];
    for (name, want) in expect {
        let got = meta(name)?;
        if got.as_deref() != Some(want.as_str()) {
            out.push(format!("meta {name} is {got:?}, expected {want:?}"));
        }
    }
    Ok(out)
}

/// The store id a shard records, if any.
pub fn store_id(conn: &Connection) -> Result<Option<String>> {
    Ok(conn.query_row(sql::META_GET, [META_STORE_ID], |r| r.get(0)).optional()?)
}

/// Clears the creation mark once every shard file exists.
pub fn finish_creating(conn: &Connection) -> Result<()> {
    conn.execute(sql::META_DELETE, [META_CREATING])?;
    Ok(())
}

/// The highest local task id a shard has ever handed out (0 when none).
pub fn last_local_id(conn: &Connection) -> Result<i64> {
    Ok(conn.prepare_cached(sql::LAST_LOCAL_ID)?.query_row([], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    /// The bundled SQLite is built as `.cargo/config.toml` asks: no shared
    /// page-cache mutex, no allocation statistics (both serialise threads
    /// writing different shards).
    #[test]
    fn sqlite_is_built_for_threads_on_separate_shards() -> rusqlite::Result<()> {
        let conn = rusqlite::Connection::open_in_memory()?;
        let mut stmt = conn.prepare("PRAGMA compile_options")?;
        let options: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{options:?}");
        assert!(!options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
        Ok(())
    }
}
