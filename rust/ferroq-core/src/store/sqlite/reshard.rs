//! Offline resharding: [`reshard`] copies a SQLite store into a new
//! directory with another shard count, and leaves the source as it was.
//!
//! Offline means no process uses the source: a running task or a live
//! worker record refuses the copy ([`Error::StoreInUse`]) unless the caller
//! says those processes are gone ([`ReshardParams::release_running`]); the
//! source's shards are held under their write locks for the whole copy, so
//! a forgotten sender waits (or fails) instead of being lost.
//!
//! Ids. A task id says its shard (`local * shards + shard`), so a task
//! keeps its id exactly when the new layout puts it in shard `id % n`: every
//! unkeyed task does (it is placed there), as does a keyed one whose key
//! routes there. A keyed task routed elsewhere (keys are routed by a hash
//! of (queue, key), so that a key is checked in one shard), and a task whose
//! id is below the new shard count (such ids name no local id), gets a new
//! id above every id the source ever handed out; the report lists each
//! (old, new). Each new shard records the same id high-water mark, so no id
//! — kept, given, or purged before the copy — is handed out again.
//!
//! Tables. `task` and `task_done` are copied row by row, every column;
//! `task_dep` (flows) with both ends' ids placed anew, in the child's and
//! the parent's new shards; the
//! event feed (`event`) is per shard and is not carried (see
//! [`ReshardReport::events_left`]); `meta` is the shard's identity (the new
//! store gets a new store id). Every other table is store-wide data kept in
//! shard 0 and is copied by name, with the columns both schemas have
//! (`queue_setting` into every shard, as `set_queue_options` writes it),
//! except `worker`: worker records say which processes serve the store,
//! and none serve the new one yet. A table this build does not know, or
//! one holding rows in a shard other than 0 that is not a task table, stops
//! the copy before anything is written rather than being lost.
//!
//! The copy is built under a hidden name beside the destination, verified
//! (counts per queue and status; every task found by id, and by key, with
//! every column equal; every shard's id mark), and only then renamed into
//! place: a failed or interrupted reshard leaves no store at `dest`.

use super::shard::{route_hash, shard_file};
use super::tx::WriteTx;
use super::{create_shard_file, io_error, schema, sql, SqliteStore};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::config::{StoreConfig, MAX_SHARDS};
use crate::store::events as ev;
use crate::store::{GetByKeyParams, Store};
use crate::task::Status;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What to reshard, where, and how.
#[derive(Debug, Clone)]
pub struct ReshardParams {
    /// The store directory to copy (left as it was).
    pub src: PathBuf,
    /// The new store's directory: one that does not exist yet, or is empty.
    pub dest: PathBuf,
    /// The new shard count (1..=64, not the source's).
    pub shards: u32,
    /// The caller says every process that used the source is gone (killed):
    /// running tasks are copied as queued with the interrupted attempt not
    /// counted, as a release would (one whose cancel was asked ends
    /// `cancelled`), and worker records are not taken as live. Without it,
    /// either refuses the copy.
    pub release_running: bool,
    /// A worker record whose last heartbeat is more recent than this (ms)
    /// is taken as a live worker. A stopped scheduler removes its record;
    /// a killed one's stays, and is stale after this long (the cleanup
    /// loop's `stale_after`, 30 s, by default).
    pub worker_stale_ms: i64,
}

impl ReshardParams {
    /// Resharding `src` into `dest` with `shards` shards, refusing a store
    /// in use, live workers judged as the cleanup loop does.
    pub fn new(src: impl Into<PathBuf>, dest: impl Into<PathBuf>, shards: u32) -> Self {
        ReshardParams {
            src: src.into(),
            dest: dest.into(),
            shards,
            release_running: false,
            worker_stale_ms: DEFAULT_WORKER_STALE_MS,
        }
    }
}

/// The store directory a store URL names (a path, or `sqlite:///path`;
/// its options say how a handle opens the store and do not matter here).
/// Memory and PostgreSQL URLs are refused: only a SQLite store has shards
/// to change.
pub fn store_dir(url: &str) -> Result<PathBuf> {
    if crate::store::postgres::PgConfig::is_postgres_url(url) {
        return Err(Error::InvalidArgument(
            "a PostgreSQL store has no shards to change: reshard is for SQLite stores".into(),
        ));
    }
    StoreConfig::parse(url)?
        .path
        .ok_or_else(|| Error::InvalidArgument("an in-memory store cannot be resharded (it has no files)".into()))
}

/// A worker record older than this (ms) is stale (the cleanup loop's default).
pub const DEFAULT_WORKER_STALE_MS: i64 = 30_000;

/// What [`reshard`] did (everything in it was verified in the new store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardReport {
    /// The source's shard count.
    pub src_shards: u32,
    /// The new store's shard count.
    pub shards: u32,
    /// The new store's id (a new store: its shards cannot be mixed with the source's).
    pub store_id: String,
    /// Tasks copied (every task of the source).
    pub tasks: u64,
    /// Of those, how many kept their id.
    pub kept_ids: u64,
    /// (old id, new id) of every task that got a new id, in old id order.
    pub renumbered: Vec<(i64, i64)>,
    /// Ids (in the new store) of tasks that were running and were copied
    /// as queued, or as cancelled when their cancel had been asked
    /// (only with [`ReshardParams::release_running`]).
    pub released: Vec<i64>,
    /// Tasks per (queue, status) in the new store: equal to the source's,
    /// released tasks counted where they went.
    pub counts: BTreeMap<(String, Status), u64>,
    /// The store-wide tables copied (by name).
    pub tables: Vec<String>,
    /// Worker records not copied (see the module doc).
    pub workers_dropped: u64,
    /// Events in the source's feed, which the new store does not carry: its
    /// feed starts empty (positions are per shard, so the old feed and its
    /// cursors have no meaning in another layout).
    pub events_left: u64,
    /// Consumers whose saved event cursor was moved to the start of the new
    /// feed (they resume with the first change after the reshard).
    pub event_cursors_reset: Vec<String>,
    /// Of those, the ones that had not read the old feed to its end: the
    /// events they had not read are among `events_left`.
    pub event_consumers_behind: Vec<String>,
}

/// The task tables: copied row by row with their ids placed anew.
const TASK_TABLES: [&str; 2] = ["task", "task_done"];
/// Per-shard tables that are not copied as they are: the event feed,
/// `meta`, the shard's identity (its other entries are copied from shard
/// 0), and the task dependencies, whose ids are placed anew ([`DEP_TABLE`]).
const PER_SHARD_TABLES: [&str; 3] = ["event", "meta", DEP_TABLE];
/// Task dependencies (flows): (parent, child, pos) by store-wide id, kept
/// in the child's shard and, when it lives elsewhere, the parent's too.
const DEP_TABLE: &str = "task_dep";
/// Store-wide tables whose shard-0 rows every shard holds a copy of.
const EVERY_SHARD_TABLES: [&str; 1] = ["queue_setting"];
/// Store-wide tables not copied (see the module doc).
const NOT_COPIED: [&str; 1] = ["worker"];
/// Store-wide tables that other shards hold unused (empty) copies of.
const SHARD_ZERO_TABLES: [&str; 4] = ["listen_log", "worker", "function_limit", "consumer_cursor"];
/// `meta` entries that are the shard's identity or id mark, not store data.
const IDENTITY_META: [&str; 6] = ["app", "shards", "shard", "store_id", "creating", "high_id"];
/// How long the source's write locks are waited for.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Tasks checked per store read in the verification.
const VERIFY_BATCH: usize = 500;
/// At most this many running tasks or live workers are named in a refusal.
const NAMED: usize = 10;

/// Copies the SQLite store `p.src` into the new directory `p.dest` with
/// `p.shards` shards, offline (see the module doc); `clock` says when
/// worker heartbeats are stale and when a released, cancelled task ended.
/// Nothing is written to the source, and nothing is left at `dest` unless
/// the whole copy was made and verified.
pub fn reshard(p: &ReshardParams, clock: Arc<dyn Clock>) -> Result<ReshardReport> {
    if !(1..=MAX_SHARDS).contains(&p.shards) {
        return Err(Error::InvalidArgument(format!("shards must be within 1..={MAX_SHARDS}, got {}", p.shards)));
    }
    check_paths(&p.src, &p.dest)?;
    let src = Source::open(&p.src)?;
    if src.n == p.shards {
        return Err(Error::InvalidArgument(format!(
            "{} already has {} shard(s); a reshard copies it to another count",
            p.src.display(),
            p.shards
        )));
    }
    // Held until the copy is verified: no process can change the source
    // meanwhile (a send waits for its busy timeout, then fails).
    let _locks = src.conns.iter().map(WriteTx::begin).collect::<Result<Vec<_>>>().map_err(|e| match e {
        Error::Unavailable(m) => {
            Error::StoreInUse(format!("{}: another process holds the store's write lock ({m})", p.src.display()))
        }
        other => other,
    })?;
    let now = clock.now_ms();
    preflight(&src, p, now)?;
    let tmp = temp_dir(&p.dest)?;
    let made = build(&src, p, &tmp, now).and_then(|plan| verify(&src, p, &tmp, clock, plan)).and_then(|report| {
        place(&tmp, &p.dest)?;
        Ok(report)
    });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

/// Refuses a source that is not a directory, and a destination that is a
/// file, a non-empty directory, inside the source, or holds it.
fn check_paths(src: &Path, dest: &Path) -> Result<()> {
    if !src.is_dir() {
        return Err(Error::NotAStore(format!("{} is not a store directory", src.display())));
    }
    if !src.join(shard_file(0)).is_file() {
        return Err(Error::NotAStore(format!("{} holds no {}", src.display(), shard_file(0))));
    }
    if dest.as_os_str().is_empty() || dest.file_name().is_none() {
        return Err(Error::InvalidArgument(format!("{} cannot be a store directory", dest.display())));
    }
    if super::backup::within(dest, src) || super::backup::within(src, dest) {
        return Err(Error::InvalidArgument(format!(
            "{} and {} overlap: the new store goes into a directory of its own",
            dest.display(),
            src.display()
        )));
    }
    if dest.exists() {
        if !dest.is_dir() {
            return Err(Error::InvalidArgument(format!("{} is a file", dest.display())));
        }
        let mut entries = std::fs::read_dir(dest).map_err(|e| io_error(dest, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty (the new store goes into a new or empty directory)",
                dest.display()
            )));
        }
    }
    Ok(())
}

/// The source store's shard connections (read-write, so that they can hold
/// the write locks; they write nothing).
struct Source {
    conns: Vec<Connection>,
    n: u32,
    labels: Vec<String>,
}

impl Source {
    fn open(dir: &Path) -> Result<Source> {
        let open = |i: u32| -> Result<(Connection, String)> {
            let path = dir.join(shard_file(i));
            let label = path.display().to_string();
            // No CREATE: a missing shard file is an error, never a new one.
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            if !path.is_file() {
                return Err(crate::store::rules::damaged_file(&label, "the shard file is missing"));
            }
            let conn = Connection::open_with_flags(&path, flags).map_err(|e| match Error::from(e) {
                Error::Unavailable(m) => Error::Unavailable(format!("{label}: {m}")),
                other => other,
            })?;
            conn.busy_timeout(LOCK_WAIT)?;
            schema::identify(&conn, &label).map_err(|e| super::shard::name_file(e, &label))?;
            let version: i64 = conn.query_row(sql::READ_USER_VERSION, [], |r| r.get(0))?;
            if version != sql::SCHEMA_VERSION {
                return Err(Error::InvalidArgument(format!(
                    "{label} has schema version {version}; open the store once with this ferroq (which \
                     migrates it) and reshard it then (a reshard leaves its source as it is)"
                )));
            }
            Ok((conn, label))
        };
        let (first, label) = open(0)?;
        let meta = |conn: &Connection, name: &str| -> Result<Option<String>> {
            Ok(conn.query_row(sql::META_GET, [name], |r| r.get(0)).optional()?)
        };
        let n: u32 = meta(&first, "shards")?
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=MAX_SHARDS).contains(n))
            .ok_or_else(|| crate::store::rules::damaged_file(&label, "the shard records no valid shard count"))?;
        if meta(&first, "creating")?.is_some() && n > 1 {
            return Err(Error::InvalidArgument(format!(
                "{} is still being created (open it once, so that every shard exists)",
                dir.display()
            )));
        }
        let store_id = schema::store_id(&first)?
            .ok_or_else(|| crate::store::rules::damaged_file(&label, "the shard records no store id"))?;
        let mut conns = vec![first];
        let mut labels = vec![label];
        for i in 0..n {
            if i > 0 {
                let (conn, label) = open(i)?;
                conns.push(conn);
                labels.push(label);
            }
            let problems = schema::identity_problems(&conns[i as usize], i, n, &store_id)?;
            if !problems.is_empty() {
                return Err(crate::store::rules::damaged_file(&labels[i as usize], &problems.join("; ")));
            }
        }
        Ok(Source { conns, n, labels })
    }
}

/// The tables of a shard file (not SQLite's own).
fn tables(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(sql::RESHARD_TABLES)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A table's columns, in order.
fn columns(conn: &Connection, table: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(sql::RESHARD_COLUMNS)?;
    let rows = stmt.query_map([table], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every table of a shard this build creates, with its columns.
fn this_build() -> Result<HashMap<String, Vec<String>>> {
    let mut conn = Connection::open_in_memory()?;
    schema::create(&mut conn, 0, 1, "reshard")?;
    conn.execute_batch(sql::EVENTS_SCHEMA)?;
    tables(&conn)?
        .into_iter()
        .map(|t| {
            let cols = columns(&conn, &t)?;
            Ok((t, cols))
        })
        .collect()
}

/// Refuses a store in use, and a table the copy would not carry.
fn preflight(src: &Source, p: &ReshardParams, now: i64) -> Result<()> {
    if !p.release_running {
        let mut running = Vec::new();
        for (s, conn) in src.conns.iter().enumerate() {
            let mut stmt = conn.prepare(sql::RESHARD_RUNNING)?;
            for local in stmt.query_map([], |r| r.get::<_, i64>(0))? {
                running.push(local? * i64::from(src.n) + s as i64);
            }
        }
        let mut live = Vec::new();
        let mut stmt = src.conns[0].prepare(sql::RESHARD_WORKER_BEATS)?;
        for w in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (id, beat) = w?;
            if now - beat < p.worker_stale_ms {
                live.push(id);
            }
        }
        if !running.is_empty() || !live.is_empty() {
            running.sort_unstable();
            let mut why = Vec::new();
            if !running.is_empty() {
                let shown: Vec<String> = running.iter().take(NAMED).map(i64::to_string).collect();
                why.push(format!("{} task(s) running ({}{})", running.len(), shown.join(", "), more(running.len())));
            }
            if !live.is_empty() {
                let shown: Vec<&str> = live.iter().take(NAMED).map(String::as_str).collect();
                why.push(format!("{} live worker(s) ({}{})", live.len(), shown.join(", "), more(live.len())));
            }
            return Err(Error::StoreInUse(format!(
                "{} is in use: {}. Stop its workers first (a stopped worker releases its tasks and removes \
                 its record); if they were killed, pass release_running to copy their tasks as queued",
                p.src.display(),
                why.join(" and ")
            )));
        }
    }
    let known = this_build()?;
    for (s, conn) in src.conns.iter().enumerate() {
        for t in tables(conn)? {
            if TASK_TABLES.contains(&t.as_str()) || PER_SHARD_TABLES.contains(&t.as_str()) {
                continue;
            }
            let Some(ours) = known.get(&t) else {
                return Err(Error::InvalidArgument(format!(
                    "{} has a table {t:?} this build of ferroq does not know; reshard it with the build \
                     that made it",
                    src.labels[s]
                )));
            };
            let theirs = columns(conn, &t)?;
            if let Some(c) = theirs.iter().find(|c| !ours.contains(c)) {
                return Err(Error::InvalidArgument(format!(
                    "{}: table {t:?} has a column {c:?} this build does not know",
                    src.labels[s]
                )));
            }
            let store_wide = EVERY_SHARD_TABLES.contains(&t.as_str()) || SHARD_ZERO_TABLES.contains(&t.as_str());
            if s > 0 && !store_wide {
                let rows: i64 = conn.query_row(&sql::count_rows(&t), [], |r| r.get(0))?;
                if rows > 0 {
                    return Err(Error::InvalidArgument(format!(
                        "{}: table {t:?} holds {rows} row(s) in a shard other than 0, which a reshard does not \
                         know how to move",
                        src.labels[s]
                    )));
                }
            }
        }
    }
    Ok(())
}

fn more(n: usize) -> &'static str {
    if n > NAMED {
        ", ..."
    } else {
        ""
    }
}

/// A directory beside `dest` to build the copy in.
fn temp_dir(dest: &Path) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_error(&parent, e))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.reshard-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir(&tmp).map_err(|e| io_error(&tmp, e))?;
    Ok(tmp)
}

/// Moves the finished copy to `dest` (replacing an empty directory).
fn place(tmp: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir(dest).map_err(|e| io_error(dest, e))?;
    }
    std::fs::rename(tmp, dest).map_err(|e| io_error(dest, e))
}

/// Where every task goes, decided before any is copied.
struct Plan {
    /// New ids of the tasks that do not keep theirs.
    renumbered: HashMap<i64, i64>,
    /// The same, in old id order, for the report.
    pairs: Vec<(i64, i64)>,
    tasks: u64,
    /// The new store's id high-water mark (a local id), in every shard.
    high_local: i64,
    store_id: String,
    counts: BTreeMap<(String, i64), u64>,
    released: Vec<i64>,
    /// Every dependency row the new store holds: (shard, parent, child, pos).
    deps: BTreeSet<(usize, i64, i64, i64)>,
    tables: Vec<String>,
    workers_dropped: u64,
    events_left: u64,
    cursors_reset: Vec<String>,
    consumers_behind: Vec<String>,
}

impl Plan {
    fn new_id(&self, old: i64) -> i64 {
        self.renumbered.get(&old).copied().unwrap_or(old)
    }
}

/// Decides every task's new id (see the module doc).
fn plan_ids(src: &Source, n_new: u32) -> Result<Plan> {
    let (n_old, n_new_i) = (i64::from(src.n), i64::from(n_new));
    let mut routes: Vec<(i64, i64)> = Vec::new();
    let mut high_old = 0i64;
    for (s, conn) in src.conns.iter().enumerate() {
        high_old = high_old.max(schema::last_local_id(conn)? * n_old + s as i64);
        let mut stmt = conn.prepare(sql::RESHARD_ROUTES)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let old = r.get::<_, i64>(0)? * n_old + s as i64;
            let key: Option<String> = r.get(2)?;
            let target = match key {
                Some(k) => (route_hash(&r.get::<_, String>(1)?, &k) % n_new as u64) as i64,
                None => old % n_new_i,
            };
            routes.push((old, target));
        }
    }
    routes.sort_unstable();
    let mut next = high_old / n_new_i + 1;
    let mut pairs = Vec::new();
    for &(old, target) in &routes {
        if old < n_new_i || old % n_new_i != target {
            pairs.push((old, next * n_new_i + target));
            next += 1;
        }
    }
    Ok(Plan {
        renumbered: pairs.iter().copied().collect(),
        pairs,
        tasks: routes.len() as u64,
        high_local: (next - 1).max(high_old / n_new_i),
        store_id: schema::new_store_id(),
        counts: BTreeMap::new(),
        released: Vec::new(),
        deps: BTreeSet::new(),
        tables: Vec::new(),
        workers_dropped: 0,
        events_left: 0,
        cursors_reset: Vec::new(),
        consumers_behind: Vec::new(),
    })
}

/// The positions of a task row's columns that the copy reads or changes.
struct TaskCols {
    names: Vec<String>,
    id: usize,
    queue: usize,
    key: usize,
    status: usize,
    attempts: usize,
    lease_until: usize,
    worker: usize,
    finished_at: usize,
    cancel_requested: usize,
    result_ttl: usize,
    purge_at: usize,
}

impl TaskCols {
    fn new(names: Vec<String>) -> Result<TaskCols> {
        let at = |c: &str| {
            names.iter().position(|n| n == c).ok_or_else(|| Error::Storage(format!("task table has no column {c}")))
        };
        Ok(TaskCols {
            id: at("id")?,
            queue: at("queue")?,
            key: at("key")?,
            status: at("status")?,
            attempts: at("attempts")?,
            lease_until: at("lease_until")?,
            worker: at("worker")?,
            finished_at: at("finished_at")?,
            cancel_requested: at("cancel_requested")?,
            result_ttl: at("result_ttl")?,
            purge_at: at("purge_at")?,
            names,
        })
    }
}

/// The columns of both task tables (`task_done` has a few of its own).
struct Cols {
    task: TaskCols,
    done: TaskCols,
}

impl Cols {
    /// The columns of the task tables both the source and `dst` have.
    fn new(src: &Connection, dst: &Connection) -> Result<Cols> {
        Ok(Cols {
            task: TaskCols::new(common_columns(src, dst, "task")?)?,
            done: TaskCols::new(common_columns(src, dst, "task_done")?)?,
        })
    }

    fn of(&self, table: &str) -> &TaskCols {
        if table == "task" {
            &self.task
        } else {
            &self.done
        }
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

/// What the copy makes of one source task row: the table it goes to, its
/// new id, its values there, and whether it was running and released.
struct Placed {
    table: &'static str,
    new_id: i64,
    values: Vec<Value>,
    released: bool,
}

/// Places one source row (of `table`, in source shard `s`).
#[allow(clippy::too_many_arguments)]
fn place_row(
    plan: &Plan,
    all: &Cols,
    retention: &HashMap<String, i64>,
    n_old: i64,
    n_new: i64,
    s: usize,
    table: &'static str,
    mut values: Vec<Value>,
    now: i64,
) -> Result<Placed> {
    let cols = all.of(table);
    let local = int(&values[cols.id]).ok_or_else(|| Error::Corrupt(format!("a {table} row has no integer id")))?;
    let new_id = plan.new_id(local * n_old + s as i64);
    values[cols.id] = Value::Integer(new_id / n_new);
    let mut out_table = table;
    let running = table == "task" && int(&values[cols.status]) == Some(Status::Running.code());
    if running {
        values[cols.lease_until] = Value::Null;
        if int(&values[cols.cancel_requested]).unwrap_or(0) != 0 {
            // A cancel sticks: the interrupted attempt was the task's last,
            // as a release of it would have made it (kept as long as a
            // finished task of its queue is).
            out_table = "task_done";
            values[cols.status] = Value::Integer(Status::Cancelled.code());
            values[cols.finished_at] = Value::Integer(now);
            let queue = text(&values[cols.queue]).unwrap_or_default();
            let keep = int(&values[cols.result_ttl])
                .or_else(|| retention.get(queue).copied())
                .or(StoreConfig::default().retention_ms);
            values[cols.purge_at] = keep.map_or(Value::Null, |k| Value::Integer(now.saturating_add(k)));
            // Into `task_done`'s columns, by name (its own ones start NULL).
            values = all
                .done
                .names
                .iter()
                .map(|n| cols.names.iter().position(|c| c == n).map_or(Value::Null, |i| values[i].clone()))
                .collect();
        } else {
            values[cols.status] = Value::Integer(Status::Queued.code());
            let attempts = int(&values[cols.attempts]).unwrap_or(0);
            values[cols.attempts] = Value::Integer((attempts - 1).max(0));
            values[cols.worker] = Value::Null;
        }
    }
    Ok(Placed { table: out_table, new_id, values, released: running })
}

/// The retention of each queue that has one (for released, cancelled tasks).
fn retentions(conn: &Connection) -> Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare(sql::RESHARD_RETENTIONS)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Reads every row of `table` (columns `cols`) of a source shard (a task
/// table in id order).
fn each_row(
    conn: &Connection,
    table: &str,
    cols: &[String],
    mut f: impl FnMut(Vec<Value>) -> Result<()>,
) -> Result<()> {
    let by_id = TASK_TABLES.contains(&table);
    let mut stmt = conn.prepare(&sql::select_columns(table, cols, by_id))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        f((0..cols.len()).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<_>>()?)?;
    }
    Ok(())
}

/// The columns of `table` both the source and the new store have, in the
/// new store's order.
fn common_columns(src: &Connection, dst: &Connection, table: &str) -> Result<Vec<String>> {
    let theirs = columns(src, table)?;
    Ok(columns(dst, table)?.into_iter().filter(|c| theirs.contains(c)).collect())
}

/// Writes the new store into `tmp`: shard files, tasks, store-wide tables,
/// id marks. Returns the plan, for the verification.
fn build(src: &Source, p: &ReshardParams, tmp: &Path, now: i64) -> Result<Plan> {
    let mut plan = plan_ids(src, p.shards)?;
    let (n_old, n_new) = (i64::from(src.n), i64::from(p.shards));
    for i in 0..p.shards {
        create_shard_file(tmp, i, p.shards, &plan.store_id)?;
    }
    let dconns = (0..p.shards)
        .map(|i| {
            let conn = Connection::open(tmp.join(shard_file(i)))?;
            conn.execute_batch(sql::EVENTS_SCHEMA)?;
            Ok(conn)
        })
        .collect::<Result<Vec<_>>>()?;
    let dtx = dconns.iter().map(WriteTx::begin).collect::<Result<Vec<_>>>()?;

    // Tasks.
    let cols = Cols::new(&src.conns[0], &dtx[0])?;
    let retention = retentions(&src.conns[0])?;
    let inserts: HashMap<&str, String> =
        TASK_TABLES.iter().map(|t| (*t, sql::insert_columns(t, &cols.of(t).names, false))).collect();
    let mut counts: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut released = Vec::new();
    for (s, conn) in src.conns.iter().enumerate() {
        for table in TASK_TABLES {
            each_row(conn, table, &cols.of(table).names, |values| {
                let placed = place_row(&plan, &cols, &retention, n_old, n_new, s, table, values, now)?;
                let pc = cols.of(placed.table);
                let queue = text(&placed.values[pc.queue]).unwrap_or_default().to_string();
                let status = int(&placed.values[pc.status]).unwrap_or(-1);
                *counts.entry((queue, status)).or_default() += 1;
                if placed.released {
                    released.push(placed.new_id);
                }
                let d = (placed.new_id % n_new) as usize;
                let n = dtx[d]
                    .prepare_cached(&inserts[placed.table])?
                    .execute(rusqlite::params_from_iter(&placed.values))?;
                if n != 1 {
                    return Err(Error::Storage(format!("task {} was not copied", placed.new_id)));
                }
                Ok(())
            })?;
        }
    }
    released.sort_unstable();
    plan.counts = counts;
    plan.released = released;

    // Dependencies: both ends placed anew, in the child's shard and the parent's.
    for conn in &src.conns {
        let mut stmt = conn.prepare(sql::RESHARD_DEPS)?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
            let (parent, child, pos) = row?;
            let (parent, child) = (plan.new_id(parent), plan.new_id(child));
            for id in [child, parent] {
                plan.deps.insert(((id.rem_euclid(n_new)) as usize, parent, child, pos));
            }
        }
    }
    for &(d, parent, child, pos) in &plan.deps {
        dtx[d].prepare_cached(sql::DEP_INSERT)?.execute(params![parent, child, pos])?;
    }

    // Store-wide tables, by name, from shard 0.
    let src0 = &src.conns[0];
    for t in tables(src0)? {
        let name = t.as_str();
        if TASK_TABLES.contains(&name) || PER_SHARD_TABLES.contains(&name) {
            continue;
        }
        if NOT_COPIED.contains(&name) {
            plan.workers_dropped += src0.query_row(&sql::count_rows(name), [], |r| r.get::<_, i64>(0))? as u64;
            continue;
        }
        let cols = common_columns(src0, &dtx[0], name)?;
        let insert = sql::insert_columns(name, &cols, true);
        let targets: Vec<usize> = if EVERY_SHARD_TABLES.contains(&name) { (0..dtx.len()).collect() } else { vec![0] };
        each_row(src0, name, &cols, |values| {
            for &d in &targets {
                dtx[d].prepare_cached(&insert)?.execute(rusqlite::params_from_iter(&values))?;
            }
            Ok(())
        })?;
        plan.tables.push(t);
    }
    // AUTOINCREMENT counters (listen versions): never below the source's.
    let mut stmt = src0.prepare(sql::RESHARD_SEQUENCES)?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (name, seq) = row?;
        if plan.tables.contains(&name) && dtx[0].execute(sql::RESHARD_SEQUENCE_RAISE, params![name, seq])? == 0 {
            dtx[0].execute(sql::RESHARD_SEQUENCE_INSERT, params![name, seq])?;
        }
    }
    drop(stmt);
    // Store-wide meta entries (not the shard's identity).
    let mut stmt = src0.prepare(sql::RESHARD_META)?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (name, value) = row?;
        if !IDENTITY_META.contains(&name.as_str()) {
            dtx[0].execute(sql::META_SET, params![name, value])?;
        }
    }
    drop(stmt);
    // The event feed: counted, not carried; saved cursors restart.
    let mut heads = Vec::new();
    for conn in &src.conns {
        plan.events_left += conn.query_row(sql::RESHARD_EVENTS_SINGLE, [], |r| r.get::<_, i64>(0))? as u64;
        let mut stmt = conn.prepare(sql::RESHARD_EVENTS_PACKED)?;
        for packed in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
            plan.events_left += super::events::unpack_ids(&packed?)?.len() as u64;
        }
        heads.push(conn.query_row(sql::EVENTS_HEAD, [], |r| r.get::<_, i64>(0))?);
    }
    if plan.tables.iter().any(|t| t == "consumer_cursor") {
        let start = ev::shard_cursor(&vec![0; p.shards as usize]);
        let mut stmt = src0.prepare(sql::RESHARD_CURSORS)?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (name, value) = row?;
            let Some(consumer) = ev::event_cursor_consumer(&name) else { continue };
            let read_all = ev::parse_shard_cursor(Some(&value), heads.len()).is_ok_and(|at| at == heads);
            dtx[0].execute(sql::CURSOR_SET, params![name, start, now])?;
            plan.cursors_reset.push(consumer.to_string());
            if !read_all {
                plan.consumers_behind.push(consumer.to_string());
            }
        }
    }
    // Ids: the same mark in every shard, above every id the source handed out.
    for tx in &dtx {
        tx.execute(sql::SET_HIGH_ID, [plan.high_local.to_string()])?;
    }
    schema::finish_creating(&dtx[0])?;
    for tx in dtx {
        tx.commit()?;
    }
    drop(dconns);
    Ok(plan)
}

/// Opens the new store and checks it against the (still locked) source.
fn verify(src: &Source, p: &ReshardParams, tmp: &Path, clock: Arc<dyn Clock>, plan: Plan) -> Result<ReshardReport> {
    let config =
        StoreConfig { path: Some(tmp.to_path_buf()), shards: Some(p.shards), events: false, ..Default::default() };
    let store = SqliteStore::open(config, clock)?;
    let bad = |what: String| Error::Storage(format!("the resharded copy failed its check: {what}"));
    let mut counts = BTreeMap::new();
    for c in store.counts()? {
        counts.insert((c.queue, c.status), c.count);
    }
    let want: BTreeMap<(String, Status), u64> =
        plan.counts.iter().map(|((q, s), n)| Ok(((q.clone(), Status::from_code(*s)?), *n))).collect::<Result<_>>()?;
    if counts != want {
        return Err(bad(format!("counts per queue and status are {counts:?}, the source's {want:?}")));
    }
    for s in 0..store.shard_count() as usize {
        let high = store.read(s, schema::last_local_id)?;
        if high != plan.high_local {
            return Err(bad(format!("shard {s} records id mark {high}, expected {}", plan.high_local)));
        }
    }
    let mut deps = BTreeSet::new();
    for s in 0..store.shard_count() as usize {
        store.read(s, |c| {
            let mut stmt = c.prepare(sql::RESHARD_DEPS)?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
                let (parent, child, pos) = row?;
                deps.insert((s, parent, child, pos));
            }
            Ok(())
        })?;
    }
    if deps != plan.deps {
        return Err(bad(format!("{} dependency rows found, {} expected", deps.len(), plan.deps.len())));
    }
    let (n_old, n_new) = (i64::from(src.n), i64::from(p.shards));
    let cols = Cols::new(&src.conns[0], &store.shards[0].conn.lock())?;
    let retention = retentions(&src.conns[0])?;
    // A released, cancelled row's finish time is the copy's (compared as stored).
    let now = 0;
    let mut found = 0u64;
    let mut batch: Vec<Placed> = Vec::with_capacity(VERIFY_BATCH);
    let mut check = |batch: &mut Vec<Placed>| -> Result<()> {
        let ids: Vec<i64> = batch.iter().map(|x| x.new_id).collect();
        let got = store.get(&ids)?;
        for (placed, task) in batch.iter().zip(got) {
            let Some(task) = task else { return Err(bad(format!("task {} is missing", placed.new_id))) };
            let d = (placed.new_id % n_new) as usize;
            let pc = cols.of(placed.table);
            let sql = sql::select_by_id(placed.table, &pc.names);
            let stored = store.read(d, |c| {
                let mut stmt = c.prepare_cached(&sql)?;
                let row = stmt.query_row([placed.new_id / n_new], |r| {
                    (0..pc.names.len()).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<Vec<_>>>()
                });
                Ok(row?)
            })?;
            let mut expect = placed.values.clone();
            if placed.released && placed.table == "task_done" {
                expect[pc.finished_at] = stored[pc.finished_at].clone();
                expect[pc.purge_at] = stored[pc.purge_at].clone();
            }
            if stored != expect {
                return Err(bad(format!("task {} differs from the source's row", placed.new_id)));
            }
            if let Some(key) = text(&placed.values[pc.key]) {
                // A dead-lettered task's key is unique in its home queue.
                let origin = pc.names.iter().position(|n| n == "origin").and_then(|i| text(&placed.values[i]));
                let queue = origin.unwrap_or(&task.queue).to_string();
                let by_key = store.get_by_key(&GetByKeyParams { queue, keys: vec![key.into()] })?;
                if by_key.first().and_then(|t| t.as_ref()).map(|t| t.id) != Some(placed.new_id) {
                    return Err(bad(format!("task {} is not found by its key {key:?}", placed.new_id)));
                }
            }
            found += 1;
        }
        batch.clear();
        Ok(())
    };
    for (s, conn) in src.conns.iter().enumerate() {
        for table in TASK_TABLES {
            each_row(conn, table, &cols.of(table).names, |values| {
                batch.push(place_row(&plan, &cols, &retention, n_old, n_new, s, table, values, now)?);
                if batch.len() == VERIFY_BATCH {
                    check(&mut batch)?;
                }
                Ok(())
            })?;
        }
    }
    check(&mut batch)?;
    if found != plan.tasks {
        return Err(bad(format!("{found} tasks found, {} copied", plan.tasks)));
    }
    drop(store);
    Ok(ReshardReport {
        src_shards: src.n,
        shards: p.shards,
        store_id: plan.store_id,
        tasks: plan.tasks,
        kept_ids: plan.tasks - plan.pairs.len() as u64,
        renumbered: plan.pairs,
        released: plan.released,
        counts: want,
        tables: plan.tables,
        workers_dropped: plan.workers_dropped,
        events_left: plan.events_left,
        event_cursors_reset: plan.cursors_reset,
        event_consumers_behind: plan.consumers_behind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_table_of_this_build_is_placed_by_the_copy() {
        // A table added to the schema must be classified here (task,
        // per-shard, or store-wide and listed), or a reshard of a store
        // holding its rows in another shard is refused.
        let known = this_build().unwrap();
        let classified: HashSet<&str> = TASK_TABLES
            .iter()
            .chain(PER_SHARD_TABLES.iter())
            .chain(EVERY_SHARD_TABLES.iter())
            .chain(SHARD_ZERO_TABLES.iter())
            .copied()
            .collect();
        let mut missing: Vec<&String> = known.keys().filter(|t| !classified.contains(t.as_str())).collect();
        missing.sort();
        assert!(missing.is_empty(), "tables the reshard does not classify: {missing:?}");
    }
}
