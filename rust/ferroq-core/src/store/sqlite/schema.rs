//! Connection setup and schema creation, in one place, with every pragma
//! read back: SQLite silently ignores a misspelt pragma, so a setting that
//! did not take is reported as an error rather than trusted.

use super::sql;
use crate::error::{Error, Result};
use crate::store::config::{StoreConfig, Synchronous};
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

/// Applies the store's settings to a fresh connection and verifies them.
pub fn configure(conn: &Connection, config: &StoreConfig, in_memory: bool) -> Result<Pragmas> {
    conn.busy_timeout(config.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardInfo {
    /// The store's shard count, as this shard records it.
    pub shards: u32,
    /// True while the store is still being created (shard 0 carries the
    /// mark until every shard file exists): only then may a missing shard
    /// file be created.
    pub creating: bool,
}

/// Refuses a database that is not a ferroq shard (a SQLite file of
/// another application, or of a newer ferroq) — before [`configure`], so
/// that a refused file is left exactly as it was (not even switched to WAL).
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

/// Creates the schema in an empty shard, or checks that an existing one is
/// a ferroq shard of this store.
///
/// `want` is the shard count asked for (None = whatever exists, else 1).
pub fn prepare(conn: &mut Connection, index: u32, want: Option<u32>, label: &str) -> Result<ShardInfo> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (app_id, version) = read_identity(&tx)?;
    // Checked again inside the write transaction: another process may have
    // created the file since `identify` looked.
    check_identity(&tx, app_id, version, label)?;
    if app_id == 0 && version == 0 {
        let shards = want.unwrap_or(1);
        tx.execute_batch(sql::SCHEMA_V1)?;
        tx.execute(sql::META_SET, ("app", "ferroq"))?;
        tx.execute(sql::META_SET, ("shards", shards.to_string()))?;
        tx.execute(sql::META_SET, ("shard", index.to_string()))?;
        if index == 0 && shards > 1 {
            tx.execute(sql::META_SET, (META_CREATING, "1"))?;
        }
        tx.execute_batch(&sql::stamp())?;
    }
    let has_meta: i64 = tx.query_row(sql::TABLE_EXISTS, ["meta"], |r| r.get(0))?;
    if has_meta == 0 {
        return Err(Error::Corrupt(format!("{label} carries ferroq's stamp but has no meta table")));
    }
    let meta =
        |name: &str| -> Result<Option<String>> { Ok(tx.query_row(sql::META_GET, [name], |r| r.get(0)).optional()?) };
    let shards: u32 = meta("shards")?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Corrupt(format!("{label} has no valid shard count")))?;
    let stored_index: Option<u32> = meta("shard")?.and_then(|v| v.parse().ok());
    if stored_index != Some(index) {
        return Err(Error::Corrupt(format!("{label} is shard {stored_index:?} of its store, expected shard {index}")));
    }
    let creating = meta(META_CREATING)?.is_some();
    tx.commit()?;
    Ok(ShardInfo { shards, creating })
}

/// The meta entry shard 0 holds while a multi-shard store is being created.
const META_CREATING: &str = "creating";

/// Clears the creation mark once every shard file exists.
pub fn finish_creating(conn: &Connection) -> Result<()> {
    conn.execute(sql::META_DELETE, [META_CREATING])?;
    Ok(())
}

/// The highest local task id a shard has ever handed out (0 when none).
pub fn last_local_id(conn: &Connection) -> Result<i64> {
    Ok(conn.prepare_cached(sql::LAST_LOCAL_ID)?.query_row([], |r| r.get(0))?)
}
