//! Every SQL statement the SQLite backend runs. Nothing outside this file
//! writes SQL, so the statements and the indexes they rely on can be read
//! side by side.
//!
//! Each shard file holds two task tables with the same columns: `task` for
//! unfinished work (queued, running) and `task_done` for finished tasks.
//! Keeping history out of `task` keeps claims fast however many finished
//! tasks are retained.

/// `application_id` stamped on every ferroq shard ("FRQ1").
pub const APPLICATION_ID: i64 = 0x4652_5131;
/// The schema version this build writes (`PRAGMA user_version`).
/// Version 2 added the store identity (`meta.store_id`, see
/// `schema::prepare`) and the payload and result checksums
/// ([`MIGRATE_V2`]); version 3 the queue options ([`MIGRATE_V3`]);
/// version 4 task dependencies and the `waiting` status ([`MIGRATE_V4`]);
/// version 5 pause, aging and dead letters ([`MIGRATE_V5`]). An older
/// shard is migrated, one version at a time, when it is opened.
pub const SCHEMA_VERSION: i64 = 5;

/// The columns of both task tables, in the order `read::read_task` reads
/// them (the positions of `rules::TaskCol`).
macro_rules! task_columns {
    () => {
        "id, queue, name, payload, priority, status, run_at, attempts, max_attempts, \
         lease_until, worker, key, batch, progress, result, error, created_at, started_at, \
         finished_at, expires_at, metadata, cancel_requested, backoff, result_ttl, purge_at, \
         requires"
    };
}

/// The task columns as one list (checked against `rules::TaskCol`).
#[allow(dead_code)] // Read by the column-order test in `store/rules.rs`.
pub const TASK_COLUMNS: &str = task_columns!();

/// What every statement that reads a task returns: the shared task columns,
/// then the checksums of payload and result (`read::PAYLOAD_SUM`,
/// `read::RESULT_SUM`), which only this backend stores.
macro_rules! task_row {
    () => {
        concat!(task_columns!(), ", payload_sum, result_sum")
    };
}

/// Begins a write transaction, taking the shard's write lock at once (a
/// deferred BEGIN would take it at the first write, and could then fail
/// with SQLITE_BUSY instead of waiting for the busy timeout).
pub const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";
/// Commits the open transaction.
pub const COMMIT: &str = "COMMIT";
/// Rolls back the open transaction.
pub const ROLLBACK: &str = "ROLLBACK";

/// Switches the file to write-ahead logging; answers the journal mode in
/// effect (`memory` for an in-memory database, which cannot use WAL).
pub const SET_WAL: &str = "PRAGMA journal_mode = WAL";
/// Sets the page size of a file with no content yet (see
/// `schema::PAGE_SIZE`; ignored afterwards).
pub fn set_page_size(bytes: i64) -> String {
    format!("PRAGMA page_size = {bytes};")
}
/// Sets `synchronous` (1 = NORMAL, 2 = FULL).
pub fn set_synchronous(level: i64) -> String {
    format!("PRAGMA synchronous = {level};")
}
/// Temporary tables in memory, and a 2 MiB page cache per connection
/// (SQLite's default), about 2,000 pages of `schema::PAGE_SIZE`: the ready
/// index and the hot ends of the tables fit. Not more: SQLite scans the
/// cache's whole hash table at the end of many write transactions, so a
/// cache of 8,000 small pages cost a worker draining 100,000 tasks an eighth
/// of its speed (27k -> 31k/s with 2 MiB, measured).
pub const CACHE_SETTINGS: &str = "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -2048;";
/// Copies every committed page of the write-ahead log into the database
/// file and truncates the log to zero bytes (run as a shard closes, so that
/// the `.db` files alone hold every commit; see `Shard`'s `Drop`).
pub const CHECKPOINT_TRUNCATE: &str = "PRAGMA wal_checkpoint(TRUNCATE)";
/// Begins a read transaction (deferred: its snapshot is taken by the
/// first read, [`BACKUP_SNAPSHOT`]).
pub const BEGIN_READ: &str = "BEGIN";
/// The first read of a backup's source transaction, which fixes the
/// snapshot the backup copies.
pub const BACKUP_SNAPSHOT: &str = "SELECT count(*) FROM meta";
/// Reads the journal mode.
pub const JOURNAL_MODE: &str = "PRAGMA journal_mode";
/// Reads `synchronous`.
pub const SYNCHRONOUS: &str = "PRAGMA synchronous";
/// Reads the busy timeout (ms).
pub const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout";
/// Reads the page size (bytes).
pub const PAGE_SIZE: &str = "PRAGMA page_size";
/// Reads the application id (ferroq's is [`APPLICATION_ID`]; 0 when unset).
pub const READ_APPLICATION_ID: &str = "PRAGMA application_id";
/// Reads the schema version (0 when unset).
pub const READ_USER_VERSION: &str = "PRAGMA user_version";
/// Stamps a new shard as ferroq's, at this build's schema version.
pub fn stamp() -> String {
    format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};")
}
/// A number that changes whenever another connection commits to the file
/// (what waiters watch for other processes' writes).
pub const DATA_VERSION: &str = "PRAGMA data_version";

/// Schema version 1.
pub const SCHEMA_V1: &str = "
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- No AUTOINCREMENT: the store assigns ids itself (see INSERT_TASK), and
-- keeping sqlite_sequence would cost every commit one more page.
CREATE TABLE task (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    status INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lease_until INTEGER,
    worker TEXT,
    key TEXT,
    batch TEXT,
    progress REAL,
    result BLOB,
    error TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    expires_at INTEGER,
    metadata TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    backoff TEXT,
    result_ttl INTEGER,
    purge_at INTEGER,
    requires TEXT
);
-- Same columns, same order as ORDER BY in CLAIM / PEEK_READY.
CREATE INDEX task_ready ON task (queue, priority DESC, run_at, id) WHERE status = 0;
CREATE INDEX task_lease ON task (lease_until) WHERE status = 1;
CREATE INDEX task_expiry ON task (expires_at) WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX task_key ON task (queue, key) WHERE key IS NOT NULL;
CREATE INDEX task_batch ON task (batch) WHERE batch IS NOT NULL;
CREATE TABLE task_done (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    status INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lease_until INTEGER,
    worker TEXT,
    key TEXT,
    batch TEXT,
    progress REAL,
    result BLOB,
    error TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    expires_at INTEGER,
    metadata TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    backoff TEXT,
    result_ttl INTEGER,
    purge_at INTEGER,
    requires TEXT
);
CREATE UNIQUE INDEX task_done_key ON task_done (queue, key) WHERE key IS NOT NULL;
-- No index on finished_at: every completion would pay for it, while only a
-- manual purge by age reads it (retention purges use purge_at).
CREATE INDEX task_done_purge ON task_done (purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX task_done_batch ON task_done (batch) WHERE batch IS NOT NULL;
CREATE TABLE listen_log (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX listen_log_key ON listen_log (key, version);
-- Store-wide tables; only shard 0's copies are used.
CREATE TABLE worker (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    queues TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE queue_setting (queue TEXT PRIMARY KEY, capacity INTEGER) WITHOUT ROWID;
CREATE TABLE function_limit (
    name TEXT PRIMARY KEY,
    max_running INTEGER,
    rate_per_s REAL,
    burst REAL,
    tokens REAL NOT NULL,
    refilled_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Schema version 2: CRC-32C checksums (`rules::checksum`) of each
/// task's payload and result, written by the store and checked on every
/// read. NULL (rows written by version 1, or no result) is not checked.
/// Appended columns: adding them rewrites no row.
pub const MIGRATE_V2: &str = "
ALTER TABLE task ADD COLUMN payload_sum INTEGER;
ALTER TABLE task ADD COLUMN result_sum INTEGER;
ALTER TABLE task_done ADD COLUMN payload_sum INTEGER;
ALTER TABLE task_done ADD COLUMN result_sum INTEGER;
";

/// Schema version 3: per-queue options beside the capacity. `serial`
/// (0/1): at most one running task; `answer_timeout_ms`: the lease of a
/// handed-out task; `on_timeout` (0 requeue, 1 expire): what recovery does
/// when it passes; `retention_ms`: how long finished tasks of the queue are
/// kept. Shard 0's row is the store's; the retention is copied into every
/// shard (`MOVE_TO_DONE` reads it there). Appended columns: no row is
/// rewritten.
pub const MIGRATE_V3: &str = "
ALTER TABLE queue_setting ADD COLUMN serial INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_setting ADD COLUMN answer_timeout_ms INTEGER;
ALTER TABLE queue_setting ADD COLUMN on_timeout INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_setting ADD COLUMN retention_ms INTEGER;
";

/// Schema version 4: task dependencies (flows). A row says task `child`
/// waits for task `parent` (both store-wide ids), `pos` its place among
/// the child's parents. The row is kept in the child's shard (its parents,
/// in order: `DEPS_OF`) and, when the parent lives elsewhere, in the
/// parent's shard too (its dependents: `DEPENDENTS_OF`; and the purge
/// guard of its result). Rows go once the child has finished (the sweep,
/// `flow.rs`). A task with unfinished parents has status 6 (`waiting`),
/// outside the ready index. A new table: no row is rewritten.
pub const MIGRATE_V4: &str = "
CREATE TABLE task_dep (
    parent INTEGER NOT NULL,
    child INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX task_dep_child ON task_dep (child, pos);
";

/// Records that task ?2 waits for task ?1 (its ?3-th parent).
pub const DEP_INSERT: &str = "INSERT OR IGNORE INTO task_dep (parent, child, pos) VALUES (?1, ?2, ?3)";
/// Whether the shard holds any dependency (a finish skips the lookup of
/// dependents when none does).
pub const DEPS_ANY: &str = "SELECT EXISTS (SELECT 1 FROM task_dep)";
/// The dependents of task ?1 recorded in this shard.
pub const DEPENDENTS_OF: &str = "SELECT child FROM task_dep WHERE parent = ?1";
/// The parents of task ?1, in order (complete in the child's shard).
pub const DEPS_OF: &str = "SELECT parent FROM task_dep WHERE child = ?1 ORDER BY pos";
/// Every task this shard holds dependency rows for.
pub const DEP_CHILDREN: &str = "SELECT DISTINCT child FROM task_dep";
/// Forgets the dependency rows of task ?1 in this shard.
pub const DEPS_DELETE: &str = "DELETE FROM task_dep WHERE child = ?1";
/// Releases waiting task ?1 (its parents are all done).
pub const RELEASE_WAITING: &str = "UPDATE task SET status = 0 WHERE id = ?1 AND status = 6";

/// Schema version 5. Queue options: `paused` (0/1; shard 0's row is the
/// store's), `aging_ms` (ms per priority level a waiting task gains),
/// `dead_letter` (where the queue's failed tasks are filed) and
/// `dead_retention_ms` (how long its failed tasks are kept), the last
/// three copied into every shard. `task.claim_rank` is the first key of
/// the claim order (`claim_rank!`; the priority on a queue without aging),
/// so the ready index is rebuilt on it. `task_done.origin` is the home
/// queue of a task filed in a dead-letter queue (NULL otherwise); keys
/// stay unique per home queue. Existing rows get `claim_rank = priority`
/// (no queue had aging before).
pub const MIGRATE_V5: &str = "
ALTER TABLE queue_setting ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_setting ADD COLUMN aging_ms INTEGER;
ALTER TABLE queue_setting ADD COLUMN dead_letter TEXT;
ALTER TABLE queue_setting ADD COLUMN dead_retention_ms INTEGER;
ALTER TABLE task ADD COLUMN claim_rank INTEGER NOT NULL DEFAULT 0;
UPDATE task SET claim_rank = priority;
DROP INDEX task_ready;
CREATE INDEX task_ready ON task (queue, claim_rank DESC, run_at, id) WHERE status = 0;
ALTER TABLE task_done ADD COLUMN origin TEXT;
DROP INDEX task_done_key;
CREATE UNIQUE INDEX task_done_key ON task_done (coalesce(origin, queue), key) WHERE key IS NOT NULL;
";

/// SQLite's own check of a shard file's structure: one row `ok`, or one
/// row per problem found (at most 100).
pub const INTEGRITY_CHECK: &str = "PRAGMA integrity_check(100)";

/// Every stored payload and result with its checksum, for the store check.
pub const CHECKSUMS: &str = "SELECT id, payload, payload_sum, result, result_sum FROM task
    UNION ALL SELECT id, payload, payload_sum, result, result_sum FROM task_done";

/// Reads one meta value.
pub const META_GET: &str = "SELECT value FROM meta WHERE name = ?1";
/// Writes one meta value.
pub const META_SET: &str = "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)";
/// Deletes one meta value.
pub const META_DELETE: &str = "DELETE FROM meta WHERE name = ?1";
/// Counts schema objects (an empty file has none).
pub const SCHEMA_OBJECTS: &str = "SELECT count(*) FROM sqlite_master";
/// Tells whether a table exists.
pub const TABLE_EXISTS: &str = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1";

/// Finds an existing task with this key in either table (a dead letter
/// by its home queue).
pub const FIND_KEY: &str = "SELECT id FROM task WHERE queue = ?1 AND key = ?2
    UNION ALL SELECT id FROM task_done WHERE coalesce(origin, queue) = ?1 AND key = ?2 LIMIT 1";

/// A queued or running task with this key (`task_key`).
pub const FIND_KEY_LIVE: &str = "SELECT id FROM task WHERE queue = ?1 AND key = ?2";
/// A finished task with this key (a dead letter by its home queue).
pub const FIND_KEY_DONE: &str = "SELECT id FROM task_done WHERE coalesce(origin, queue) = ?1 AND key = ?2";
/// Whether any finished task of queue ?1 has a key: when none has, a batch
/// of keyed sends need not look each key up among the finished ones.
pub const ANY_DONE_KEY: &str =
    "SELECT EXISTS (SELECT 1 FROM task_done WHERE coalesce(origin, queue) = ?1 AND key IS NOT NULL)";
/// Whether a task with local id ?1 is in the task table.
pub const TASK_ID_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM task WHERE id = ?1)";

/// The aging step (ms per priority level) of queue `$q`, NULL when it has
/// none: from this shard's copy of the queue's options (every shard has
/// one, see `steer::set_queue_options`).
macro_rules! aging_of {
    ($q:literal) => {
        concat!("(SELECT aging_ms FROM queue_setting AS qa WHERE qa.queue = ", $q, ")")
    };
}

/// The claim rank (`task.claim_rank`, the first key of the ready index)
/// of a task of priority `$p` ready at `$r` in a queue whose aging step is
/// `$a` (NULL: none): the same value as `rules::claim_rank`, which
/// documents it (a conformance test compares the two).
/// 2305843009213693952 is 2^61, its clamp.
macro_rules! claim_rank {
    ($p:literal, $r:literal, $a:expr) => {
        concat!(
            "(CASE WHEN ",
            $a,
            " IS NULL THEN ",
            $p,
            " ELSE max(min(",
            $p,
            ", 2305843009213693952), -2305843009213693952) - max(min(",
            $r,
            ", 2305843009213693952), -2305843009213693952) / ",
            $a,
            " END)"
        )
    };
}

/// The head of a task insert after its verb (`INSERT` or `INSERT OR IGNORE`).
macro_rules! insert_task_into {
    () => {
        " INTO task (id, queue, name, payload, priority, status, run_at,
    attempts, max_attempts, key, batch, created_at, expires_at, metadata, backoff, result_ttl,
    requires, payload_sum, claim_rank)"
    };
}
/// The head of every task insert.
macro_rules! insert_task_columns {
    () => {
        concat!("INSERT", insert_task_into!())
    };
}

/// Inserts a queued task with local id ?14. The store picks ids from one
/// counter for all its shards (so that id order follows enqueue order
/// across shards), never at or below the shard's `LAST_LOCAL_ID`.
pub const INSERT_TASK: &str = concat!(
    insert_task_columns!(),
    " VALUES (?14, ?1, ?2, ?3, ?4, 0, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?15, ?16, ",
    claim_rank!("?4", "?5", aging_of!("?1")),
    ")"
);

/// [`INSERT_TASK`] that stores nothing when the task's key is taken
/// (`task_key`): keyed sends insert first and look up only the rows it
/// refused.
pub const INSERT_TASK_OR_IGNORE: &str = concat!(
    "INSERT OR IGNORE",
    insert_task_into!(),
    " VALUES (?14, ?1, ?2, ?3, ?4, 0, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?15, ?16, ",
    claim_rank!("?4", "?5", aging_of!("?1")),
    ")"
);

/// How many values `INSERT_TASK` binds per row (?16: the payload's checksum).
pub const INSERT_TASK_PARAMS: usize = 16;

/// How many values each row of [`insert_task_rows`] binds: those of
/// `INSERT_TASK`, then its claim rank (computed by the caller from the
/// queue's aging step, read once per batch, instead of a lookup per row).
pub const INSERT_ROW_PARAMS: usize = INSERT_TASK_PARAMS + 1;

/// `INSERT_TASK` for `rows` rows in one statement: row `r` binds its values
/// at `r * INSERT_ROW_PARAMS` + the single-row positions, and its claim
/// rank (`rules::claim_rank`) at position 17.
/// With `or_ignore`, a row whose key is taken stores nothing.
pub fn insert_task_rows(rows: usize, or_ignore: bool) -> String {
    let mut out = String::from(if or_ignore { "INSERT OR IGNORE" } else { "INSERT" });
    out.push_str(insert_task_into!());
    out.push_str(" VALUES ");
    for r in 0..rows {
        let b = r * INSERT_ROW_PARAMS;
        let p = |k: usize| b + k;
        if r > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, 0, ?{}, 0, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
            p(14),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(9),
            p(10),
            p(11),
            p(12),
            p(13),
            p(15),
            p(16),
            p(17),
        ));
    }
    out
}

/// The expression for the highest local id the shard ever handed out.
macro_rules! last_local_id {
    () => {
        "max(
    coalesce((SELECT max(id) FROM task), 0),
    coalesce((SELECT max(id) FROM task_done), 0),
    coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE name = 'high_id'), 0))"
    };
}
/// The highest local id the shard ever handed out: the newest row of either
/// table, or the mark a purge left when it deleted the newest rows (so ids
/// are never reused).
pub const LAST_LOCAL_ID: &str = concat!("SELECT ", last_local_id!());

/// `INSERT_TASK` as a statement of its own, outside any transaction (a
/// single send): the local id is ?14, or the next after `LAST_LOCAL_ID`
/// when the shard's sequence is ahead, decided under the statement's own
/// write lock. One statement instead of four (begin, read the sequence,
/// insert, commit).
pub const INSERT_TASK_ALONE: &str = concat!(
    insert_task_columns!(),
    " VALUES (max(?14, 1 + ",
    last_local_id!(),
    "), ?1, ?2, ?3, ?4, 0, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?15, ?16, ",
    claim_rank!("?4", "?5", aging_of!("?1")),
    ")"
);
/// Inserts a flow task with local id ?14 and status ?17 (queued or
/// waiting); otherwise as [`INSERT_TASK`].
pub const INSERT_FLOW_TASK: &str = concat!(
    insert_task_columns!(),
    " VALUES (?14, ?1, ?2, ?3, ?4, ?17, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?15, ?16, ",
    claim_rank!("?4", "?5", aging_of!("?1")),
    ")"
);
/// Records the id high-water mark before a purge deletes rows.
pub const SET_HIGH_ID: &str = "INSERT OR REPLACE INTO meta (name, value) VALUES ('high_id', ?1)";

/// A task's requirements are met by the worker's resources (JSON ?R);
/// `requires IS NULL` first so tasks without requirements cost nothing.
macro_rules! requirements_met {
    ($r:literal) => {
        concat!(
            "(requires IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(requires) AS r
              WHERE r.value > coalesce(json_extract(",
            $r,
            ", '$.\"' || r.key || '\"'), 0)))"
        )
    };
}

/// The head of a queue's ready tasks, in claim order (multi-shard merge):
/// claim rank, run_at, local id.
/// ?4 resources (JSON), ?5 task names not to claim (JSON array or NULL).
pub const PEEK_READY: &str = concat!(
    "SELECT claim_rank, run_at, id FROM task
    WHERE queue = ?1 AND status = 0 AND run_at <= ?2
      AND (expires_at IS NULL OR expires_at > ?2)
      AND (?5 IS NULL OR name NOT IN (SELECT value FROM json_each(?5)))
      AND ",
    requirements_met!("?4"),
    " ORDER BY claim_rank DESC, run_at, id LIMIT ?3"
);

/// The claim statement, with `$rank` (empty, or a bound on `claim_rank`
/// ending in `AND`) among its conditions.
macro_rules! claim_tasks {
    ($rank:literal) => {
        concat!(
            "UPDATE task SET status = 1, attempts = attempts + 1, lease_until = ?5, worker = ?4,
        started_at = ?2, cancel_requested = 0
    WHERE id IN (SELECT id FROM task
        WHERE queue = ?1 AND status = 0 AND ",
            $rank,
            " run_at <= ?2
          AND (expires_at IS NULL OR expires_at > ?2)
          AND (?7 IS NULL OR name NOT IN (SELECT value FROM json_each(?7)))
          AND ",
            requirements_met!("?6"),
            " ORDER BY claim_rank DESC, run_at, id LIMIT ?3)
    RETURNING ",
            task_row!()
        )
    };
}

/// Claims up to ?3 ready tasks of queue ?1 for worker ?4 with lease ?5;
/// ?6 resources (JSON), ?7 task names not to claim (JSON array or NULL).
pub const CLAIM: &str = claim_tasks!("");

/// [`CLAIM`] of tasks ranked ?8 or higher only: a shard's part of a claim
/// while another shard's head ranks ?8 (the ready index's second column
/// bounds the scan; a statement of its own so that the bound is in its plan).
pub const CLAIM_RANKED_AT_LEAST: &str = claim_tasks!("claim_rank >= ?8 AND");

/// Gives back a task a limited claim took beyond its allowance (the attempt
/// is not counted: it never started).
pub const UNCLAIM: &str = "UPDATE task SET status = 0, attempts = attempts - 1,
    lease_until = NULL, worker = NULL, started_at = NULL WHERE id = ?1 AND status = 1";

/// Running tasks per name.
pub const RUNNING_BY_NAME: &str = "SELECT name, count(*) FROM task WHERE status = 1 GROUP BY name";

/// Records or refreshes a worker (?4 = now).
pub const WORKER_UPSERT: &str = "INSERT INTO worker (id, host, pid, started_at, heartbeat_at, queues)
    VALUES (?1, ?2, ?3, ?4, ?4, ?5)
    ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
        heartbeat_at = excluded.heartbeat_at, queues = excluded.queues";
/// Every worker.
pub const WORKERS: &str = "SELECT id, host, pid, started_at, heartbeat_at, queues FROM worker ORDER BY id";
/// Forgets a worker.
pub const WORKER_DELETE: &str = "DELETE FROM worker WHERE id = ?1";

/// Sets a queue's capacity.
pub const CAPACITY_SET: &str = "INSERT INTO queue_setting (queue, capacity) VALUES (?1, ?2)
    ON CONFLICT (queue) DO UPDATE SET capacity = excluded.capacity";
/// Removes a queue's capacity (its other options stay).
pub const CAPACITY_DELETE: &str = "UPDATE queue_setting SET capacity = NULL WHERE queue = ?1";
/// One queue's capacity.
pub const CAPACITY_GET: &str = "SELECT capacity FROM queue_setting WHERE queue = ?1";
/// Whether any queue has a capacity (skips the per-send check when none does).
pub const CAPACITY_ANY: &str = "SELECT count(*) FROM queue_setting WHERE capacity IS NOT NULL";

/// Sets a function limit; a new bucket starts full (?6 = the burst in
/// effect, ?5 = now).
pub const LIMIT_SET: &str = "INSERT INTO function_limit
    (name, max_running, rate_per_s, burst, tokens, refilled_at) VALUES (?1, ?2, ?3, ?4, ?6, ?5)
    ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running,
        rate_per_s = excluded.rate_per_s, burst = excluded.burst, tokens = min(tokens, ?6)";
/// Removes a function limit.
pub const LIMIT_DELETE: &str = "DELETE FROM function_limit WHERE name = ?1";
/// What a claim of queue ?1 needs to know first, in one statement: how
/// many function limits exist (plain claims skip the limit logic), whether
/// the queue is serial, and its answer timeout (the lease of what it hands out).
/// Then whether it is paused, and its aging step.
pub const CLAIM_MODE: &str = "SELECT (SELECT count(*) FROM function_limit),
    coalesce(qs.serial, 0), qs.answer_timeout_ms, coalesce(qs.paused, 0), qs.aging_ms
    FROM (SELECT 1) LEFT JOIN queue_setting AS qs ON qs.queue = ?1";

/// Sets a queue's options (?2 serial, ?3 answer timeout, ?4 on_timeout
/// code, ?5 retention, ?6 aging, ?7 dead-letter queue, ?8 dead retention),
/// keeping its capacity and whether it is paused.
pub const QUEUE_OPTIONS_SET: &str = "INSERT INTO queue_setting
    (queue, serial, answer_timeout_ms, on_timeout, retention_ms, aging_ms, dead_letter, dead_retention_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (queue) DO UPDATE SET serial = excluded.serial,
        answer_timeout_ms = excluded.answer_timeout_ms, on_timeout = excluded.on_timeout,
        retention_ms = excluded.retention_ms, aging_ms = excluded.aging_ms,
        dead_letter = excluded.dead_letter, dead_retention_ms = excluded.dead_retention_ms";
/// The columns of a queue's options, in the order `steer::options_row` reads them.
macro_rules! queue_options_columns {
    () => {
        "queue, serial, answer_timeout_ms, on_timeout, retention_ms, paused, aging_ms, dead_letter, dead_retention_ms"
    };
}
/// One queue's options.
pub const QUEUE_OPTIONS_GET: &str =
    concat!("SELECT ", queue_options_columns!(), " FROM queue_setting WHERE queue = ?1");
/// Every queue that has options other than the defaults.
pub const QUEUE_OPTIONS_ALL: &str = concat!(
    "SELECT ",
    queue_options_columns!(),
    " FROM queue_setting
    WHERE serial <> 0 OR answer_timeout_ms IS NOT NULL OR on_timeout <> 0 OR retention_ms IS NOT NULL
        OR paused <> 0 OR aging_ms IS NOT NULL OR dead_letter IS NOT NULL OR dead_retention_ms IS NOT NULL
    ORDER BY queue"
);
/// Pauses (?2 = 1) or resumes (0) queue ?1, keeping its other options.
pub const PAUSE_SET: &str = "INSERT INTO queue_setting (queue, paused) VALUES (?1, ?2)
    ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused";
/// A queue's aging step in this shard (to tell whether a change needs
/// [`RERANK_QUEUE`]).
pub const AGING_GET: &str = "SELECT aging_ms FROM queue_setting WHERE queue = ?1";
/// Recomputes the claim rank of every unfinished task of queue ?1 for
/// aging step ?2 (NULL: none), after the queue's aging changed. Reads the
/// queue's unfinished tasks once; a rare operator action.
pub const RERANK_QUEUE: &str =
    concat!("UPDATE task SET claim_rank = ", claim_rank!("priority", "run_at", "?2"), " WHERE queue = ?1");
/// Queues with an answer deadline and their policy (for recovery).
pub const TIMEOUT_QUEUES: &str = "SELECT queue, on_timeout FROM queue_setting WHERE answer_timeout_ms IS NOT NULL";

/// The running tasks of queue ?1 (a serial queue has at most one), with
/// their cancel flags.
pub const RUNNING_IN_QUEUE: &str = "SELECT id, cancel_requested FROM task WHERE status = 1 AND queue = ?1";
/// The running task of queue ?1 that started first.
pub const ACTIVE_IN_QUEUE: &str =
    concat!("SELECT ", task_row!(), " FROM task WHERE status = 1 AND queue = ?1 ORDER BY started_at, id LIMIT 1");
/// The queue and status of one task, from either table.
pub const QUEUE_OF: &str = "SELECT queue, status FROM task WHERE id = ?1
    UNION ALL SELECT queue, status FROM task_done WHERE id = ?1";
/// Hands queued task ?1 to worker ?2 with lease end ?3 (?4 = now),
/// counting the attempt, whatever its run_at.
pub const START: &str = concat!(
    "UPDATE task SET status = 1, attempts = attempts + 1, lease_until = ?3, worker = ?2,
        started_at = ?4, cancel_requested = 0
    WHERE id = ?1 AND status = 0 RETURNING ",
    task_row!()
);
/// Puts running task ?1 back in the queue without counting its attempt, in
/// its old place (a serial queue switching to another task, or an answer
/// deadline with the requeue policy); ?2 is the error to record (NULL
/// keeps the old one). A task whose cancel was asked is not moved: it is
/// cancelled instead (see `transitions.rs`).
pub const SWITCH_OUT: &str = "UPDATE task SET status = 0, attempts = max(attempts - 1, 0),
    lease_until = NULL, worker = NULL, error = coalesce(?2, error)
    WHERE id = ?1 AND status = 1 AND cancel_requested = 0";
/// Changes the priority (and so the claim rank) of a queued task.
pub const SET_PRIORITY: &str = concat!(
    "UPDATE task SET priority = ?2, claim_rank = ",
    claim_rank!("?2", "run_at", aging_of!("task.queue")),
    " WHERE id = ?1 AND status = 0"
);
/// Changes the run_at (and so the claim rank) of a queued task.
pub const SET_RUN_AT: &str = concat!(
    "UPDATE task SET run_at = ?2, claim_rank = ",
    claim_rank!("priority", "?2", aging_of!("task.queue")),
    " WHERE id = ?1 AND status = 0"
);
/// The claim rank of local task ?1 (for the test comparing it with
/// `rules::claim_rank`).
pub const CLAIM_RANK_OF: &str = "SELECT claim_rank FROM task WHERE id = ?1";
/// Sets the metadata of an unfinished task.
pub const SET_METADATA: &str = "UPDATE task SET metadata = ?2 WHERE id = ?1";
/// Sets the metadata of a finished task.
pub const SET_METADATA_DONE: &str = "UPDATE task_done SET metadata = ?2 WHERE id = ?1";

/// Whether queue ?1 is paused (shard 0's row is the store's).
pub const PAUSED: &str = "SELECT coalesce((SELECT paused FROM queue_setting WHERE queue = ?1), 0)";

/// Whether any function limit exists (plain claims skip the limit logic).
pub const LIMITS_ANY: &str = "SELECT count(*) FROM function_limit";
/// Every function limit with its bucket.
pub const LIMITS: &str = "SELECT name, max_running, rate_per_s, burst, tokens, refilled_at
    FROM function_limit ORDER BY name";
/// Stores a bucket's new level.
pub const LIMIT_TOKENS: &str = "UPDATE function_limit SET tokens = ?2, refilled_at = ?3 WHERE name = ?1";

/// Earliest run_at among a queue's queued tasks that can still run at
/// ?2 = now or later: one past its deadline never becomes claimable, and
/// counting it would make a waiting claimer wake at once, again and again.
pub const NEXT_RUN_AT: &str = "SELECT min(run_at) FROM task WHERE queue = ?1 AND status = 0
    AND (expires_at IS NULL OR expires_at > max(run_at, ?2))";

/// Extends a lease held by worker ?2 (any worker when ?2 is NULL: a
/// forced heartbeat); returns the cancel flag.
pub const HEARTBEAT: &str = "UPDATE task SET lease_until = ?3
    WHERE id = ?1 AND status = 1 AND (?2 IS NULL OR worker = ?2) RETURNING cancel_requested";

/// Records progress of a task held by worker ?2 (any worker when NULL).
pub const PROGRESS: &str = "UPDATE task SET progress = ?3 WHERE id = ?1 AND status = 1 AND (?2 IS NULL OR worker = ?2)";

/// Reads what fail and release need of a task held by worker ?2 (any
/// worker when NULL): attempts, max_attempts, backoff, the cancel flag and
/// the worker holding it.
pub const FAIL_LOOKUP: &str = "SELECT attempts, max_attempts, backoff, cancel_requested, worker FROM task
    WHERE id = ?1 AND status = 1 AND (?2 IS NULL OR worker = ?2)";

/// Puts a running task back in the queue for a later attempt (ready at
/// ?3, which sets its claim rank).
pub const REQUEUE: &str = concat!(
    "UPDATE task SET status = 0, run_at = ?3, lease_until = NULL, worker = NULL, error = ?4, claim_rank = ",
    claim_rank!("priority", "?3", aging_of!("task.queue")),
    " WHERE id = ?1 AND status = 1 AND worker IS ?2"
);

/// Gives a claim back without counting the attempt.
pub const RELEASE: &str = "UPDATE task SET status = 0, attempts = attempts - 1,
    lease_until = NULL, worker = NULL WHERE id = ?1 AND status = 1 AND worker = ?2";

/// Flags a running task for cancellation.
pub const FLAG_CANCEL: &str = "UPDATE task SET cancel_requested = 1 WHERE id = ?1 AND status = 1";

/// Moves task ?1 from `task` to `task_done` with final status ?2, if it is
/// in status ?7 (and held by worker ?8 when given). ?3 result, ?4 error
/// (kept when NULL), ?5 finish time, ?6 default retention, ?9 the
/// result's checksum. A task whose cancel was asked ends `cancelled`
/// whatever ?2 says (a cancel sticks; a late completion keeps its result).
/// It is kept for its own result TTL, else its queue's retention, else ?6;
/// a task ending `failed` for its queue's dead retention first. A task
/// ending `failed` in a queue with a dead-letter queue is filed there,
/// its home queue in `origin`.
pub const MOVE_TO_DONE: &str = concat!(
    "INSERT INTO task_done (",
    task_row!(),
    ", origin) SELECT id,
        CASE WHEN ?2 = 3 AND cancel_requested = 0
            THEN coalesce((SELECT dead_letter FROM queue_setting AS qs WHERE qs.queue = task.queue), queue)
            ELSE queue END,
        name, payload, priority, CASE WHEN cancel_requested <> 0 THEN 4 ELSE ?2 END,
        run_at, attempts, max_attempts,
        NULL, worker, key, batch, progress, ?3, coalesce(?4, error), created_at, started_at,
        ?5, expires_at, metadata, cancel_requested, backoff, result_ttl,
        ?5 + CASE WHEN ?2 = 3 AND cancel_requested = 0
            THEN coalesce((SELECT dead_retention_ms FROM queue_setting AS qs WHERE qs.queue = task.queue),
                result_ttl, (SELECT retention_ms FROM queue_setting AS qs WHERE qs.queue = task.queue), ?6)
            ELSE coalesce(result_ttl, (SELECT retention_ms FROM queue_setting AS qs WHERE qs.queue = task.queue), ?6)
            END,
        requires, payload_sum, ?9,
        CASE WHEN ?2 = 3 AND cancel_requested = 0
            AND (SELECT dead_letter FROM queue_setting AS qs WHERE qs.queue = task.queue) IS NOT NULL
            THEN queue END
    FROM task WHERE id = ?1 AND status = ?7 AND (?8 IS NULL OR worker = ?8)"
);
/// Second half of a move: drop the row from `task`.
pub const DELETE_ACTIVE: &str = "DELETE FROM task WHERE id = ?1";

/// Moves a finished task back to the queue with fresh attempts (retry): to
/// its home queue when it is a dead letter.
pub const RETRY_FROM_DONE: &str = concat!(
    "INSERT INTO task (",
    task_row!(),
    ", claim_rank) SELECT id, coalesce(origin, queue), name, payload, priority, 0, ?2, 0, max_attempts,
        NULL, NULL, key, batch, NULL, NULL, error, created_at, NULL,
        NULL, NULL, metadata, 0, backoff, result_ttl, NULL, requires, payload_sum, NULL, ",
    claim_rank!("priority", "?2", aging_of!("coalesce(task_done.origin, task_done.queue)")),
    " FROM task_done WHERE id = ?1 AND status IN (3, 4, 5)"
);
/// Moves any finished task back to the queue with fresh attempts
/// (requeue): like [`RETRY_FROM_DONE`], done tasks too (their result is
/// dropped).
pub const REQUEUE_FROM_DONE: &str = concat!(
    "INSERT INTO task (",
    task_row!(),
    ", claim_rank) SELECT id, coalesce(origin, queue), name, payload, priority, 0, ?2, 0, max_attempts,
        NULL, NULL, key, batch, NULL, NULL, error, created_at, NULL,
        NULL, NULL, metadata, 0, backoff, result_ttl, NULL, requires, payload_sum, NULL, ",
    claim_rank!("priority", "?2", aging_of!("coalesce(task_done.origin, task_done.queue)")),
    " FROM task_done WHERE id = ?1 AND status IN (2, 3, 4, 5)"
);
/// Second half of a retry: drop the row from `task_done`.
pub const DELETE_DONE: &str = "DELETE FROM task_done WHERE id = ?1";

/// Running tasks whose lease ended before ?1, or all of worker ?2's: id,
/// attempts, max_attempts, run_at, worker, queue, cancel flag.
pub const EXPIRED_LEASES: &str = "SELECT id, attempts, max_attempts, run_at, worker, queue, cancel_requested
    FROM task WHERE status = 1 AND ((?2 IS NULL AND lease_until < ?1) OR worker = ?2)";

/// Queued tasks whose deadline passed.
pub const PAST_DEADLINE: &str = "SELECT id FROM task WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND status = 0";

/// One task by local id, from either table.
pub const GET: &str = concat!(
    "SELECT ",
    task_row!(),
    " FROM task WHERE id = ?1 UNION ALL SELECT ",
    task_row!(),
    " FROM task_done WHERE id = ?1"
);

/// One task by key, from either table (a dead letter by its home queue).
pub const GET_BY_KEY: &str = concat!(
    "SELECT ",
    task_row!(),
    " FROM task WHERE queue = ?1 AND key = ?2 UNION ALL SELECT ",
    task_row!(),
    " FROM task_done WHERE coalesce(origin, queue) = ?1 AND key = ?2"
);

/// The status of one task by local id (to explain a guarded update that
/// changed nothing).
pub const STATUS_OF: &str = "SELECT status, worker FROM task WHERE id = ?1
    UNION ALL SELECT status, worker FROM task_done WHERE id = ?1";

/// A page of tasks, filtered by queue ?1, status ?2, batch ?3, name ?8,
/// key ?9 (NULL = any), from local id ?4 on, at most ?5. ?6 / ?7 pick the
/// tables to read.
pub const LIST: &str = concat!(
    "SELECT * FROM (SELECT ",
    task_row!(),
    " FROM task WHERE ?6 AND id >= ?4 AND (?1 IS NULL OR queue = ?1)
        AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR batch = ?3)
        AND (?8 IS NULL OR name = ?8) AND (?9 IS NULL OR key = ?9)
    UNION ALL SELECT ",
    task_row!(),
    " FROM task_done WHERE ?7 AND id >= ?4 AND (?1 IS NULL OR queue = ?1)
        AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR batch = ?3)
        AND (?8 IS NULL OR name = ?8) AND (?9 IS NULL OR key = ?9))
    ORDER BY id LIMIT ?5"
);

/// Task counts per queue and status.
pub const COUNTS: &str = "SELECT queue, status, count(*) FROM task GROUP BY queue, status
    UNION ALL SELECT queue, status, count(*) FROM task_done GROUP BY queue, status";

/// Unfinished tasks in one queue.
pub const COUNT_UNFINISHED: &str = "SELECT count(*) FROM task WHERE queue = ?1";

/// Deletes finished tasks past their retention (?1 = now) or finished
/// before ?2, except the parents of unfinished dependents (their result is
/// read when the dependent runs): ?3 shards, ?4 this shard's index, to
/// make a local id store-wide.
pub const PURGE: &str = "DELETE FROM task_done WHERE (purge_at <= ?1 OR (?2 IS NOT NULL AND finished_at < ?2))
    AND NOT EXISTS (SELECT 1 FROM task_dep WHERE parent = task_done.id * ?3 + ?4)";

/// Appends a listen-data change.
pub const LISTEN_SET: &str = "INSERT INTO listen_log (key, value, at) VALUES (?1, ?2, ?3) RETURNING version";
/// Changes after version ?1, oldest first.
pub const LISTEN_SINCE: &str =
    "SELECT version, key, value, at FROM listen_log WHERE version > ?1 ORDER BY version LIMIT ?2";
/// The latest value of one key.
pub const LISTEN_GET: &str = "SELECT version, key, value, at FROM listen_log WHERE key = ?1
    ORDER BY version DESC LIMIT 1";
/// The newest version.
pub const LISTEN_HEAD: &str = "SELECT coalesce(max(version), 0) FROM listen_log";
/// Drops superseded changes older than ?1 (the newest of each key stays).
pub const LISTEN_PRUNE: &str = "DELETE FROM listen_log WHERE at < ?1
    AND version NOT IN (SELECT max(version) FROM listen_log GROUP BY key)";

// ---- The event feed (see `store/events.rs` and `events.rs`) ----------

/// The event feed's tables. Added without a schema version bump: a build
/// that predates them ignores them, and every open creates them when
/// missing (`schema::prepare`), so the step is idempotent. `event.task` is
/// the local id (a read turns it into the task id). A row is one event,
/// or, when `tasks` is not NULL, the same change of several tasks at once
/// (a claim's or a completion batch's): `tasks` holds their local ids
/// (`events::pack_ids`), `task` the first, and the row stands for the
/// positions `seq - n + 1 ..= seq`, one per task in order, so cursors
/// count events as before. One row instead of n keeps what a W2 drain
/// writes per task small. `consumer_cursor` is
/// store-wide (only shard 0's copy is used): consumers' event cursors and
/// listen versions, by namespaced name.
pub const EVENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    task INTEGER NOT NULL,
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    old INTEGER,
    new INTEGER,
    worker TEXT,
    error_type TEXT,
    tasks BLOB
);
CREATE TABLE IF NOT EXISTS consumer_cursor (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Whether the `event` table has its `tasks` column (1) or predates it (0).
pub const EVENTS_HAS_TASKS: &str = "SELECT count(*) FROM pragma_table_info('event') WHERE name = 'tasks'";
/// Adds the `tasks` column to an `event` table made before it existed:
/// its rows keep their meaning (NULL: a row is one event, of `task`).
pub const EVENTS_ADD_TASKS: &str = "ALTER TABLE event ADD COLUMN tasks BLOB";

/// The SQL function the event triggers read the store's clock through
/// (registered on each writer connection, `events::install`).
pub const NOW_FUNCTION: &str = "ferroq_now";

/// The error type of error text `e`: the `type` of ferroq's error JSON, the
/// core's `LeaseLost` for a recovered task, else `Error`.
macro_rules! error_type {
    ($e:literal) => {
        concat!(
            "CASE WHEN ",
            $e,
            " IS NULL THEN NULL WHEN json_valid(",
            $e,
            ") THEN json_extract(",
            $e,
            ", '$.type') WHEN ",
            $e,
            " LIKE 'lease lost%' THEN 'LeaseLost' ELSE 'Error' END"
        )
    };
}

/// The head of every event insert (its rows follow: `VALUES` or a `SELECT`).
macro_rules! insert_event {
    () => {
        "INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type) "
    };
}

/// Records the changes of `task` rows as events, in the statement that
/// made them. TEMP triggers: they belong to this connection only, so a
/// handle opened with `events=off` records nothing, and no shard file
/// carries them (an older build opening the store is not affected).
///
/// The moves of a W2 drain are not recorded here: a trigger runs its
/// sub-program for every row, and writes a row of its own for each, which
/// cost a drain about a quarter of its speed. Claims (`queued -> running`,
/// by [`CLAIM`] and [`START`] only) and finishes (the only statement that
/// adds to `task_done` is [`MOVE_TO_DONE`]) are recorded by their callers,
/// a batch at a time ([`CLAIMED_EVENTS`], [`FINISHED_EVENTS`] and
/// [`EVENT_APPEND`], in `events::record_moves`); the UPDATE trigger skips
/// claims, and `task_done` has no insert trigger (which would also make
/// SQLite copy each `INSERT ... SELECT` into a temporary table first).
/// Status changes and cancel requests share one UPDATE trigger, so a
/// statement that sets both columns runs one sub-program per row; no
/// statement both moves a task and asks its cancel.
///
/// A task put back from `task_done` is inserted before its old row goes,
/// so the insert trigger finds the status it came from. `ON task` /
/// `ON task_done` name the main database's tables (the temp schema has
/// none of its own). Kind codes: `events::KIND_*`.
pub const EVENT_TRIGGERS: &str = concat!(
    "CREATE TEMP TRIGGER IF NOT EXISTS ferroq_event_insert AFTER INSERT ON task BEGIN ",
    insert_event!(),
    "VALUES (ferroq_now(), NEW.id, NEW.queue, NEW.name, 0, (SELECT status FROM task_done WHERE id = NEW.id),
        NEW.status, NEW.worker, NULL); END;
    CREATE TEMP TRIGGER IF NOT EXISTS ferroq_event_update AFTER UPDATE OF status, cancel_requested ON task
    WHEN (NEW.status <> OLD.status AND NOT (OLD.status = 0 AND NEW.status = 1))
        OR (NEW.cancel_requested <> 0 AND OLD.cancel_requested = 0) BEGIN ",
    insert_event!(),
    "VALUES (ferroq_now(), NEW.id, NEW.queue, NEW.name, CASE WHEN NEW.status <> OLD.status THEN 0 ELSE 1 END,
        OLD.status, NEW.status, coalesce(NEW.worker, OLD.worker),
        CASE WHEN NEW.status = 0 AND OLD.status = 1 AND NEW.attempts >= OLD.attempts THEN ",
    error_type!("NEW.error"),
    " END); END;
    CREATE TEMP TRIGGER IF NOT EXISTS ferroq_event_purge AFTER DELETE ON task_done
    WHEN NOT EXISTS (SELECT 1 FROM task WHERE id = OLD.id) BEGIN ",
    insert_event!(),
    "VALUES (ferroq_now(), OLD.id, OLD.queue, OLD.name, 3, OLD.status, NULL, NULL, NULL); END;"
);

/// Drops the event triggers of this connection (`events=off`).
pub const DROP_EVENT_TRIGGERS: &str = "DROP TRIGGER IF EXISTS temp.ferroq_event_insert;
    DROP TRIGGER IF EXISTS temp.ferroq_event_update;
    DROP TRIGGER IF EXISTS temp.ferroq_event_purge;";

/// The claim events of tasks just claimed (local ids in the JSON array
/// ?1), in the array's order: (id, at, queue, name, old, new, worker,
/// error type).
pub const CLAIMED_EVENTS: &str = "SELECT t.id, t.started_at, t.queue, t.name, 0, 1, t.worker, NULL
    FROM json_each(?1) AS j CROSS JOIN task AS t ON t.id = j.value ORDER BY j.key";

/// The finish events of tasks just moved to `task_done` (local ids in the
/// JSON array ?1), in the array's order, as [`CLAIMED_EVENTS`]. A finished
/// task came from `running` when it has a worker, else from `queued` (a
/// queued task never has one).
pub const FINISHED_EVENTS: &str = concat!(
    "SELECT d.id, d.finished_at, d.queue, d.name, CASE WHEN d.worker IS NULL THEN 0 ELSE 1 END, d.status,
        d.worker, CASE WHEN d.status = 3 THEN ",
    error_type!("d.error"),
    " END FROM json_each(?1) AS j CROSS JOIN task_done AS d ON d.id = j.value ORDER BY j.key"
);

/// Appends a status change of ?1 tasks (kind 0): ?3 the first local id,
/// ?10 all of them packed (NULL for one), taking the next ?1 positions.
pub const EVENT_APPEND: &str =
    "INSERT INTO event (seq, at, task, queue, name, kind, old, new, worker, error_type, tasks)
    VALUES ((SELECT coalesce(max(seq), 0) FROM event) + ?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9, ?10)";

/// Records that a finished task's callback ran (kind 2): the task's
/// status before and after, from `task_done` (local id ?1, ?2 = now).
pub const EVENT_DELIVERED: &str = "INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT ?2, id, queue, name, 2, status, status, NULL, NULL FROM task_done WHERE id = ?1";

/// A shard's event rows holding positions after ?1, of queue ?2 (NULL =
/// any), at most ?3 rows.
pub const EVENTS_AFTER: &str = "SELECT seq, at, task, queue, name, kind, old, new, worker, error_type, tasks
    FROM event WHERE seq > ?1 AND (?2 IS NULL OR queue = ?2) ORDER BY seq LIMIT ?3";

/// A shard's newest position (0 when it has recorded none).
pub const EVENTS_HEAD: &str = "SELECT coalesce(max(seq), 0) FROM event";

/// The position of a shard's oldest event at or after time ?1 (to prune
/// before it without an index on time: the scan stops there).
pub const EVENTS_FIRST_KEPT: &str = "SELECT seq FROM event WHERE at >= ?1 ORDER BY seq LIMIT 1";

/// Deletes a shard's events before position ?1, always keeping its newest
/// one: positions come from the rowid, which an empty table would hand
/// out again from 1.
pub const EVENTS_PRUNE: &str = "DELETE FROM event WHERE seq < ?1 AND seq < (SELECT max(seq) FROM event)";

/// Stores a consumer cursor (?3 = now).
pub const CURSOR_SET: &str = "INSERT INTO consumer_cursor (name, value, at) VALUES (?1, ?2, ?3)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, at = excluded.at";
/// Reads a consumer cursor.
pub const CURSOR_GET: &str = "SELECT value FROM consumer_cursor WHERE name = ?1";

/// Every listen key's latest change, by key.
pub const LISTEN_KEYS: &str = "SELECT l.version, l.key, l.value, l.at FROM listen_log l
    JOIN (SELECT key, max(version) AS version FROM listen_log GROUP BY key) m ON m.version = l.version
    ORDER BY l.key";

// ---- Offline resharding (`reshard.rs`) ----------------------------------

/// The tables of a shard file, not SQLite's own.
pub const RESHARD_TABLES: &str =
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name";
/// The columns of table ?1, in order.
pub const RESHARD_COLUMNS: &str = "SELECT name FROM pragma_table_info(?1) ORDER BY cid";
/// The local ids of a shard's running tasks.
pub const RESHARD_RUNNING: &str = "SELECT id FROM task WHERE status = 1 ORDER BY id";
/// Every worker record's id and last heartbeat.
pub const RESHARD_WORKER_BEATS: &str = "SELECT id, heartbeat_at FROM worker ORDER BY id";
/// What places each task of a shard: local id, the queue its key is
/// unique in (a dead-lettered task's home queue), key.
pub const RESHARD_ROUTES: &str =
    "SELECT id, queue, key FROM task UNION ALL SELECT id, coalesce(origin, queue), key FROM task_done";
/// Every dependency row of a shard (store-wide ids).
pub const RESHARD_DEPS: &str = "SELECT parent, child, pos FROM task_dep";
/// Each queue's retention, where it has one.
pub const RESHARD_RETENTIONS: &str = "SELECT queue, retention_ms FROM queue_setting WHERE retention_ms IS NOT NULL";
/// The AUTOINCREMENT counters of a shard.
pub const RESHARD_SEQUENCES: &str = "SELECT name, seq FROM sqlite_sequence";
/// Raises table ?1's AUTOINCREMENT counter to at least ?2.
pub const RESHARD_SEQUENCE_RAISE: &str = "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1";
/// Sets table ?1's AUTOINCREMENT counter (a table that has none yet).
pub const RESHARD_SEQUENCE_INSERT: &str = "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)";
/// Every meta entry of a shard.
pub const RESHARD_META: &str = "SELECT name, value FROM meta ORDER BY name";
/// Event rows of one event each.
pub const RESHARD_EVENTS_SINGLE: &str = "SELECT count(*) FROM event WHERE tasks IS NULL";
/// The packed task ids of event rows of several events.
pub const RESHARD_EVENTS_PACKED: &str = "SELECT tasks FROM event WHERE tasks IS NOT NULL";
/// Every saved consumer cursor.
pub const RESHARD_CURSORS: &str = "SELECT name, value FROM consumer_cursor ORDER BY name";

/// A table or column name quoted for SQL (the reshard copies tables by the
/// names a shard file lists, so they are quoted, never trusted).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns, quoted and comma-separated.
fn column_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

/// Reads columns `cols` of every row of `table` (by id when `by_id`).
pub fn select_columns(table: &str, cols: &[String], by_id: bool) -> String {
    let order = if by_id { " ORDER BY id" } else { "" };
    format!("SELECT {} FROM {}{order}", column_list(cols), quote(table))
}

/// Reads columns `cols` of the row of `table` with local id ?1.
pub fn select_by_id(table: &str, cols: &[String]) -> String {
    format!("SELECT {} FROM {} WHERE id = ?1", column_list(cols), quote(table))
}

/// Inserts one row of columns `cols` into `table` (replacing a row with the
/// same primary key when `replace`: a store-wide table copied into a new
/// shard that already has a default row).
pub fn insert_columns(table: &str, cols: &[String], replace: bool) -> String {
    let marks = (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let verb = if replace { "INSERT OR REPLACE" } else { "INSERT" };
    format!("{verb} INTO {} ({}) VALUES ({marks})", quote(table), column_list(cols))
}

/// Counts the rows of `table`.
pub fn count_rows(table: &str) -> String {
    format!("SELECT count(*) FROM {}", quote(table))
}
