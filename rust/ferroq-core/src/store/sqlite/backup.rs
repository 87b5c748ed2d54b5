//! [`Store::backup`](crate::store::Store::backup): a consistent copy of a
//! live store, made with SQLite's online backup API, one shard file at a
//! time into a new directory.
//!
//! On disk, each shard is read through a connection of its own whose read
//! transaction is begun, for every shard, before the first page is copied:
//! the copy holds every commit made before the call, and writers (in this
//! and other processes) carry on meanwhile, as WAL lets readers and a
//! writer work side by side. An in-memory store has only its writer
//! connections, so each is copied under its lock.

use super::shard::shard_file;
use super::{io_error, schema, sql, SqliteStore};
use crate::error::{Error, Result};
use crate::store::BackupParams;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a busy step waits before it is tried again.
const BUSY_PAUSE: Duration = Duration::from_millis(5);

/// [`Store::backup`](crate::store::Store::backup).
pub(super) fn backup(store: &SqliteStore, p: &BackupParams) -> Result<()> {
    if let Some(src) = &store.config.path {
        if within(&p.dest, src) {
            return Err(Error::InvalidArgument(format!(
                "backup destination {} is inside the store it copies ({})",
                p.dest.display(),
                src.display()
            )));
        }
    }
    prepare_dest(&p.dest)?;
    let mut written = Vec::new();
    let out = copy_shards(store, &p.dest, &mut written);
    if out.is_err() {
        // A partial copy must not be mistaken for a store.
        for f in &written {
            let _ = std::fs::remove_file(f);
        }
    }
    out
}

/// True when `path` (which may not exist yet) lies in or at `dir`, links
/// and `..` resolved.
pub(super) fn within(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else { return false };
    // The nearest existing ancestor, resolved, plus the rest as written.
    let mut rest = Vec::new();
    let mut at = path.to_path_buf();
    loop {
        if let Ok(real) = at.canonicalize() {
            let full = rest.iter().rev().fold(real, |p: PathBuf, c: &std::ffi::OsString| p.join(c));
            return full.starts_with(&dir);
        }
        match (at.file_name().map(|n| n.to_os_string()), at.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                at = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
            }
            _ => return false,
        }
    }
}

/// Creates `dest`, or accepts an existing empty directory.
fn prepare_dest(dest: &Path) -> Result<()> {
    if dest.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("a backup needs a destination directory".into()));
    }
    if dest.exists() {
        if !dest.is_dir() {
            return Err(Error::InvalidArgument(format!("backup destination {} is a file", dest.display())));
        }
        let mut entries = std::fs::read_dir(dest).map_err(|e| io_error(dest, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "backup destination {} is not empty (a backup goes into a new or empty directory)",
                dest.display()
            )));
        }
    }
    std::fs::create_dir_all(dest).map_err(|e| io_error(dest, e))
}

fn copy_shards(store: &SqliteStore, dest: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let timeout = store.config.busy_timeout;
    match &store.config.path {
        Some(dir) => {
            // Every snapshot is taken before any shard is copied.
            let mut sources = Vec::with_capacity(store.shards.len());
            for i in 0..store.shard_count() {
                sources.push(snapshot(&dir.join(shard_file(i)), timeout)?);
            }
            for (i, src) in sources.iter().enumerate() {
                copy_shard(src, dest, i, timeout, written)?;
                src.prepare_cached(sql::COMMIT)?.execute([])?;
            }
        }
        None => {
            for (i, shard) in store.shards.iter().enumerate() {
                copy_shard(&shard.conn.lock(), dest, i, timeout, written)?;
            }
        }
    }
    Ok(())
}

/// A read-only connection to a shard file, in a read transaction whose
/// snapshot is fixed.
fn snapshot(path: &Path, timeout: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(timeout)?;
    conn.prepare_cached(sql::BEGIN_READ)?.execute([])?;
    conn.prepare_cached(sql::BACKUP_SNAPSHOT)?.query_row([], |r| r.get::<_, i64>(0))?;
    Ok(conn)
}

/// Copies one shard into `dest`, in one step (one snapshot of the source).
fn copy_shard(src: &Connection, dest: &Path, i: usize, timeout: Duration, written: &mut Vec<PathBuf>) -> Result<()> {
    let path = dest.join(shard_file(i as u32));
    let mut dst = Connection::open(&path)?;
    written.push(path);
    dst.busy_timeout(timeout)?;
    {
        let copy = Backup::new(src, &mut dst)?;
        let deadline = Instant::now() + timeout;
        // -1: every page in one step, under one read lock of the source.
        while copy.step(-1)? != StepResult::Done {
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!("backup of shard {i}: the store stayed busy")));
            }
            std::thread::sleep(BUSY_PAUSE);
        }
    }
    if i == 0 {
        // The copy is complete: a shard missing from it later is damage
        // (an in-memory store of several shards never clears the mark).
        schema::finish_creating(&dst)?;
    }
    Ok(())
}
