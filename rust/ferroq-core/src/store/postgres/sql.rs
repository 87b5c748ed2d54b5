//! Every SQL statement the PostgreSQL backend runs. Nothing outside this
//! file writes SQL, so the statements and the indexes they rely on can be
//! read side by side.
//!
//! Every connection's `search_path` is the store's schema (set when the
//! connection is made), so statements name tables without a schema. The
//! few statements that must name the schema or a channel themselves
//! (creating the schema, LISTEN) carry a `{schema}` placeholder that is
//! replaced by a validated identifier (see `config.rs`).
//!
//! Like the SQLite backend, the store keeps two task tables with the same
//! columns: `task` for unfinished work (queued, running) and `task_done`
//! for finished tasks, so claims never wade through history. Keys are
//! unique per queue across both tables through `task_key`, whose primary
//! key is the idempotency guarantee even between concurrent transactions.
//!
//! Time is never read from the server: every `now` is a parameter taken
//! from the store's clock.

/// The schema version this build writes (`meta.schema_version`).
/// Version 2: 64-bit priorities and the queue options ([`MIGRATE_V2`]);
/// version 3: task dependencies ([`MIGRATE_V3`]); version 4: pause, aging
/// and dead letters ([`MIGRATE_V4`]).
pub const SCHEMA_VERSION: i64 = 4;

/// The aging step of queue `$q` (NULL when it has none).
macro_rules! aging_of {
    ($q:literal) => {
        concat!("(SELECT aging_ms FROM queue_setting qa WHERE qa.queue = ", $q, ")")
    };
}

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

/// The connection option that makes the store's schema the search path of
/// every statement (`{schema}` is a validated identifier).
pub const SEARCH_PATH_OPTION: &str = "-c search_path={schema}";

/// A task's requirements (`requires`, JSON text) are met by the worker's
/// resources (JSON text parameter `$r`): `requires IS NULL` first so tasks
/// without requirements cost nothing.
macro_rules! requirements_met {
    ($r:literal) => {
        concat!(
            "(requires IS NULL OR NOT EXISTS (SELECT 1 FROM jsonb_each_text(requires::jsonb) AS r
              WHERE r.value::float8 > coalesce(((",
            $r,
            "::text)::jsonb ->> r.key)::float8, 0)))"
        )
    };
}

/// Creates the store's schema (`{schema}` is a validated identifier).
pub const CREATE_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS {schema}";

/// Tells whether the store's schema exists (a role without CREATE on the
/// database may still use a schema made for it).
pub const SCHEMA_EXISTS: &str = "SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = $1";

/// Serialises schema creation and migration between processes opening the
/// same store at once (a transaction-scoped advisory lock on a hash of the
/// schema name).
pub const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('ferroq:' || $1))";

/// Tells whether a table exists in the store's schema.
pub const TABLE_EXISTS: &str = "SELECT count(*) FROM pg_catalog.pg_tables
    WHERE schemaname = $1 AND tablename = $2";

/// Counts the tables in the store's schema (a new schema has none).
pub const TABLE_COUNT: &str = "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = $1";

/// Reads one meta value.
pub const META_GET: &str = "SELECT value FROM meta WHERE name = $1";

/// Writes one meta value.
pub const META_SET: &str = "INSERT INTO meta (name, value) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value";

/// Schema version 1.
///
/// Triggers do the cross-process wake-ups: each statement that makes work
/// ready or finishes a task bumps `change_seq` (what pollers watch) and
/// sends a NOTIFY on `ferroq_<schema>` (what listeners wait on). Claims,
/// heartbeats and progress wake nobody, so they do neither.
pub const SCHEMA_V1: &str = "
CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL);
CREATE SEQUENCE task_id_seq;
CREATE SEQUENCE change_seq;
CREATE TABLE task (
    id bigint PRIMARY KEY DEFAULT nextval('task_id_seq'),
    queue text NOT NULL,
    name text NOT NULL,
    payload bytea NOT NULL,
    priority integer NOT NULL,
    status smallint NOT NULL,
    run_at bigint NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    lease_until bigint,
    worker text,
    key text,
    batch text,
    progress double precision,
    result bytea,
    error text,
    created_at bigint NOT NULL,
    started_at bigint,
    finished_at bigint,
    expires_at bigint,
    metadata text,
    cancel_requested boolean NOT NULL DEFAULT false,
    backoff text,
    result_ttl bigint,
    purge_at bigint,
    requires text
);
-- Same columns, same order as ORDER BY in CLAIM.
CREATE INDEX task_ready ON task (queue, priority DESC, run_at, id) WHERE status = 0;
CREATE INDEX task_lease ON task (lease_until) WHERE status = 1;
CREATE INDEX task_running_name ON task (name) WHERE status = 1;
CREATE INDEX task_expiry ON task (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX task_by_key ON task (queue, key) WHERE key IS NOT NULL;
CREATE INDEX task_batch ON task (batch) WHERE batch IS NOT NULL;
CREATE TABLE task_done (LIKE task INCLUDING DEFAULTS);
ALTER TABLE task_done ADD PRIMARY KEY (id);
CREATE INDEX task_done_by_key ON task_done (queue, key) WHERE key IS NOT NULL;
CREATE INDEX task_done_finished ON task_done (finished_at);
CREATE INDEX task_done_purge ON task_done (purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX task_done_batch ON task_done (batch) WHERE batch IS NOT NULL;
-- One row per key in use, whichever table its task is in.
CREATE TABLE task_key (
    queue text NOT NULL,
    key text NOT NULL,
    id bigint NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE TABLE listen_log (
    version bigserial PRIMARY KEY,
    key text NOT NULL,
    value bytea NOT NULL,
    at bigint NOT NULL
);
CREATE INDEX listen_log_key ON listen_log (key, version);
CREATE TABLE worker (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid bigint NOT NULL,
    started_at bigint NOT NULL,
    heartbeat_at bigint NOT NULL,
    queues text NOT NULL
);
CREATE TABLE queue_setting (queue text PRIMARY KEY, capacity bigint);
CREATE TABLE function_limit (
    name text PRIMARY KEY,
    max_running bigint,
    rate_per_s double precision,
    burst double precision,
    tokens double precision NOT NULL,
    refilled_at bigint NOT NULL
);
CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval((quote_ident(TG_TABLE_SCHEMA) || '.change_seq')::regclass);
    PERFORM pg_notify('ferroq_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END $$;
CREATE TRIGGER task_changed AFTER INSERT OR DELETE ON task
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER task_requeued AFTER UPDATE ON task
    FOR EACH ROW WHEN (OLD.status = 1 AND NEW.status = 0) EXECUTE FUNCTION notify_change();
CREATE TRIGGER listen_changed AFTER INSERT ON listen_log
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER limit_changed AFTER INSERT OR DELETE OR UPDATE OF max_running, rate_per_s, burst
    ON function_limit FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
";

/// Schema version 2: priorities are any 64-bit integer (the columns and
/// the ready index are rewritten once), and per-queue options beside the
/// capacity: `serial` (at most one running task), `answer_timeout_ms` (the
/// lease of a handed-out task), `on_timeout` (0 requeue, 1 expire: what
/// recovery does when it passes) and `retention_ms` (how long finished
/// tasks of the queue are kept).
pub const MIGRATE_V2: &str = "
ALTER TABLE task ALTER COLUMN priority TYPE bigint;
ALTER TABLE task_done ALTER COLUMN priority TYPE bigint;
ALTER TABLE queue_setting ADD COLUMN serial boolean NOT NULL DEFAULT false,
    ADD COLUMN answer_timeout_ms bigint,
    ADD COLUMN on_timeout smallint NOT NULL DEFAULT 0,
    ADD COLUMN retention_ms bigint;
";

/// Schema version 3: task dependencies (flows). A row says task `child`
/// waits for task `parent` (`pos`: its place among the child's parents).
/// A task with unfinished parents has status 6 (`waiting`), outside the
/// ready index. The statement that finishes tasks (any insert into
/// `task_done`) settles their waiting dependents in the same transaction
/// (`settle_waiting`, through a statement-level trigger that costs one
/// probe of an empty `task_dep` when there are no flows): each is locked
/// first, in id order, so that two transactions finishing the last two
/// parents take turns and the second sees the first's commit; then those
/// whose parents are all done go to `queued`, and those with a parent
/// that ended otherwise go to `cancelled`, naming it, which in turn
/// settles their own dependents. A cancelled dependent takes the purge
/// time of the parent that ended it (the trigger cannot see the store's
/// default retention).
pub const MIGRATE_V3: &str = "
CREATE TABLE task_dep (
    parent bigint NOT NULL,
    child bigint NOT NULL,
    pos integer NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE INDEX task_dep_child ON task_dep (child, pos);
CREATE FUNCTION settle_waiting(children bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM task WHERE id = ANY(children) AND status = 6 ORDER BY id FOR UPDATE;
    RETURN QUERY UPDATE task t SET status = 0 WHERE t.id = ANY(children) AND t.status = 6
        AND NOT EXISTS (SELECT 1 FROM task_dep d WHERE d.child = t.id
            AND NOT EXISTS (SELECT 1 FROM task_done p WHERE p.id = d.parent AND p.status = 2))
        RETURNING t.id;
    RETURN QUERY WITH bad AS (
        SELECT DISTINCT ON (d.child) d.child, d.parent, p.status, p.finished_at, p.purge_at
        FROM task_dep d JOIN task_done p ON p.id = d.parent
        WHERE d.child = ANY(children) AND p.status IN (3, 4, 5) ORDER BY d.child, d.pos),
    moved AS (DELETE FROM task t USING bad WHERE t.id = bad.child AND t.status = 6
        RETURNING t.*, bad.parent AS dep, bad.status AS dep_status, bad.finished_at AS dep_at,
            bad.purge_at AS dep_purge)
    INSERT INTO task_done (id, queue, name, payload, priority, status, run_at, attempts, max_attempts,
        lease_until, worker, key, batch, progress, result, error, created_at, started_at, finished_at,
        expires_at, metadata, cancel_requested, backoff, result_ttl, purge_at, requires)
    SELECT id, queue, name, payload, priority, 4, run_at, attempts, max_attempts, NULL, NULL, key, batch,
        progress, NULL, 'dependency ' || dep || ' ended '
            || CASE dep_status WHEN 3 THEN 'failed' WHEN 4 THEN 'cancelled' ELSE 'expired' END,
        created_at, started_at, dep_at, expires_at, metadata, false, backoff, result_ttl, dep_purge, requires
    FROM moved RETURNING id;
END $$;
CREATE FUNCTION settle_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    children bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM task_dep) THEN RETURN NULL; END IF;
    SELECT array_agg(DISTINCT d.child) INTO children FROM task_dep d JOIN finished f ON d.parent = f.id;
    IF children IS NOT NULL THEN
        PERFORM settle_waiting(children);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_finished_settle AFTER INSERT ON task_done REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION settle_dependents();
";

/// Inserts one flow task with id `$1` and status `$15` (queued or
/// waiting); `$12` = now.
/// Its claim rank is computed as for any send (see `INSERT_TASK`).
pub const INSERT_FLOW_TASK: &str = "INSERT INTO task (id, queue, name, payload, priority, status, run_at,
        attempts, max_attempts, key, batch, created_at, expires_at, metadata, backoff, result_ttl, requires,
        claim_rank)
    VALUES ($1, $2, $3, $4, $5, $15, coalesce($6::bigint, $12::bigint), 0, $7, $8, $9, $12, $10, $11, $13, $14,
        $16, ferroq_rank($5::bigint, coalesce($6::bigint, $12::bigint),
            (SELECT aging_ms FROM queue_setting qa WHERE qa.queue = $2::text)))";
/// Takes the next task id.
pub const NEXT_ID: &str = "SELECT nextval('task_id_seq')";
/// Locks unfinished parents `$1` against finishing while their dependents
/// are stored (a finished parent stays finished).
pub const LOCK_PARENTS: &str = "SELECT id FROM task WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE";
/// Records that task `$2` waits for task `$1` (its `$3`-th parent).
pub const DEP_INSERT: &str = "INSERT INTO task_dep (parent, child, pos) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
/// The parents of tasks `$1`, in order: (child, parent).
pub const DEPS_OF: &str = "SELECT child, parent FROM task_dep WHERE child = ANY($1::bigint[]) ORDER BY child, pos";
/// Settles every waiting task (the sweep; settling is also done by the
/// finishing statement, so this finds work only after a manual change).
pub const SETTLE_ALL: &str = "SELECT settle_waiting(array_agg(id)) FROM task WHERE status = 6";
/// Forgets the dependency rows of finished (or gone) tasks: their parents'
/// results are no longer needed.
pub const DEPS_FORGET: &str = "DELETE FROM task_dep d WHERE NOT EXISTS
    (SELECT 1 FROM task t WHERE t.id = d.child)";

/// Schema version 4. Queue options: `paused`, `aging_ms` (ms per priority
/// level a waiting task gains), `dead_letter` (where the queue's failed
/// tasks are filed) and `dead_retention_ms` (how long its failed tasks are
/// kept). `task.claim_rank` is the first key of the claim order
/// (`ferroq_rank`, the same value as `rules::claim_rank`; the priority on a
/// queue without aging), so the ready index is rebuilt on it.
/// `task_done.origin` is the home queue of a task filed in a dead-letter
/// queue (its key stays reserved there, in `task_key`), and lookups by key
/// go by the home queue. 2305843009213693952 is 2^61, the clamp.
pub const MIGRATE_V4: &str = "
ALTER TABLE queue_setting ADD COLUMN paused boolean NOT NULL DEFAULT false,
    ADD COLUMN aging_ms bigint,
    ADD COLUMN dead_letter text,
    ADD COLUMN dead_retention_ms bigint;
CREATE FUNCTION ferroq_rank(p bigint, r bigint, a bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS
    'SELECT CASE WHEN a IS NULL THEN p ELSE greatest(least(p, 2305843009213693952), -2305843009213693952)
        - greatest(least(r, 2305843009213693952), -2305843009213693952) / a END';
ALTER TABLE task ADD COLUMN claim_rank bigint NOT NULL DEFAULT 0;
UPDATE task SET claim_rank = priority;
DROP INDEX task_ready;
CREATE INDEX task_ready ON task (queue, claim_rank DESC, run_at, id) WHERE status = 0;
ALTER TABLE task_done ADD COLUMN origin text;
DROP INDEX task_done_by_key;
CREATE INDEX task_done_by_key ON task_done ((coalesce(origin, queue)), key) WHERE key IS NOT NULL;
";

/// Subscribes a connection to the store's wake-ups.
pub const LISTEN: &str = "LISTEN ferroq_{schema}";

/// What a poller compares: bumped by every statement that wakes waiters.
pub const CHANGE_COUNTER: &str = "SELECT last_value + CASE WHEN is_called THEN 1 ELSE 0 END FROM change_seq";

/// Hands out `$1` task ids, for batches whose keys must be reserved
/// before their rows are written.
pub const NEXT_IDS: &str = "SELECT nextval('task_id_seq') FROM generate_series(1, $1::int)";

/// Inserts queued tasks from parallel arrays, one row per element, in
/// array order. A NULL id takes the next from the sequence, so ids follow
/// array order. `$15` = now. With `$16` true, nothing is inserted while
/// any queue has a capacity (the caller then takes the checked path).
pub const INSERT_TASKS: &str = "INSERT INTO task (id, queue, name, payload, priority, status, run_at,
        attempts, max_attempts, key, batch, created_at, expires_at, metadata, backoff, result_ttl,
        requires, claim_rank)
    SELECT coalesce(i.id, nextval('task_id_seq')), i.queue, i.name, i.payload, i.priority, 0,
        coalesce(i.run_at, $15::bigint), 0, i.max_attempts, i.key, i.batch, $15::bigint, i.expires_at, i.metadata,
        i.backoff, i.result_ttl, i.requires,
        ferroq_rank(i.priority, coalesce(i.run_at, $15::bigint),
            (SELECT aging_ms FROM queue_setting qa WHERE qa.queue = i.queue))
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::bigint[],
        $7::int[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[],
        $14::text[])
        AS i(id, queue, name, payload, priority, run_at, max_attempts, key, batch, expires_at,
             metadata, backoff, result_ttl, requires)
    WHERE NOT ($16::bool AND EXISTS (SELECT 1 FROM queue_setting WHERE capacity IS NOT NULL))
    RETURNING id";

/// Inserts one queued task without a key (the single send, the hottest
/// path: scalar parameters cost less than one-element arrays). `$12` = now;
/// with `$13` true, nothing is inserted while any queue has a capacity.
pub const INSERT_TASK: &str = "INSERT INTO task (queue, name, payload, priority, status, run_at,
        attempts, max_attempts, batch, created_at, expires_at, metadata, backoff, result_ttl,
        requires, claim_rank)
    SELECT $1::text, $2::text, $3::bytea, $4::bigint, 0, coalesce($5::bigint, $12::bigint), 0,
        $6::int, $7::text, $12::bigint, $8::bigint, $9::text, $10::text, $11::bigint, $14::text,
        ferroq_rank($4::bigint, coalesce($5::bigint, $12::bigint),
            (SELECT aging_ms FROM queue_setting qa WHERE qa.queue = $1::text))
    WHERE NOT ($13::bool AND EXISTS (SELECT 1 FROM queue_setting WHERE capacity IS NOT NULL))
    RETURNING id";

/// Reserves keys for ids; returns the (queue, key) pairs this call won.
/// Arrays are sorted by (queue, key) so that concurrent batches lock in
/// the same order.
pub const RESERVE_KEYS: &str = "INSERT INTO task_key (queue, key, id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
    ON CONFLICT DO NOTHING RETURNING queue, key";

/// The ids that own the given keys.
pub const KEY_OWNERS: &str = "SELECT k.queue, k.key, k.id FROM task_key k
    JOIN unnest($1::text[], $2::text[]) AS i(queue, key) ON k.queue = i.queue AND k.key = i.key";

/// The capacities of the given queues, locked so that concurrent sends to
/// a capped queue are checked one after another.
pub const CAPACITIES_FOR_UPDATE: &str = "SELECT queue, capacity FROM queue_setting
    WHERE queue = ANY($1::text[]) ORDER BY queue FOR UPDATE";

/// Claims up to `$3` ready tasks of queue `$1` for worker `$4` with lease
/// end `$5` (`$2` = now, `$6` = the worker's resources as JSON), in one
/// statement; a queue with an answer timeout gives that lease instead.
/// Always returns at least one row: the first column says whether function
/// limits are in force or the queue is serial, in which case nothing was
/// claimed and the caller takes the slower path; the second is the
/// queue's aging step (the order of what was claimed); the task columns
/// are NULL when nothing was claimed. A paused queue claims nothing (and
/// is not `limited`).
pub const CLAIM: &str = concat!(
    "WITH qs AS (SELECT coalesce(bool_or(serial), false) AS serial, coalesce(bool_or(paused), false) AS paused,
            max(aging_ms) AS aging_ms FROM queue_setting WHERE queue = $1),
    lim AS (SELECT (EXISTS (SELECT 1 FROM function_limit) OR qs.serial) AND NOT qs.paused AS limited,
            qs.paused, qs.aging_ms FROM qs),
    claimed AS (UPDATE task SET status = 1, attempts = attempts + 1,
            lease_until = coalesce($2 + (SELECT answer_timeout_ms FROM queue_setting WHERE queue = $1), $5),
            worker = $4, started_at = $2, cancel_requested = false
        WHERE id IN (SELECT id FROM task
            WHERE queue = $1 AND status = 0 AND run_at <= $2
              AND (expires_at IS NULL OR expires_at > $2)
              AND NOT (SELECT limited OR paused FROM lim)
              AND ",
    requirements_met!("$6"),
    " ORDER BY claim_rank DESC, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING ",
    task_columns!(),
    ")
    SELECT lim.limited, lim.aging_ms, c.* FROM lim LEFT JOIN claimed c ON true"
);

/// Whether any function limit exists.
pub const LIMITS_ANY: &str = "SELECT EXISTS (SELECT 1 FROM function_limit)";

/// Locks every function limit (serialising limited claims store-wide) and
/// reads them with their buckets.
pub const LIMITS_FOR_UPDATE: &str = "SELECT name, max_running, rate_per_s, burst, tokens, refilled_at
    FROM function_limit ORDER BY name FOR UPDATE";

/// Running tasks per name, for the limited names `$1`.
pub const RUNNING_BY_NAME: &str = "SELECT name, count(*) FROM task
    WHERE status = 1 AND name = ANY($1::text[]) GROUP BY name";

/// Candidates of a limited claim, in claim order, locked: like CLAIM's
/// subquery, leaving out the names in `$5` (whose allowance is spent).
/// `$4` = the worker's resources.
pub const CLAIM_CANDIDATES: &str = concat!(
    "SELECT id, name FROM task
    WHERE queue = $1 AND status = 0 AND run_at <= $2
      AND (expires_at IS NULL OR expires_at > $2)
      AND NOT (name = ANY($5::text[]))
      AND ",
    requirements_met!("$4"),
    " ORDER BY claim_rank DESC, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED"
);

/// Claims the chosen, already locked candidates `$1` (`$2` = now, `$3`
/// worker, `$4` lease end).
pub const CLAIM_IDS: &str = concat!(
    "UPDATE task SET status = 1, attempts = attempts + 1, lease_until = $4, worker = $3,
        started_at = $2, cancel_requested = false
    WHERE id = ANY($1::bigint[]) AND status = 0
    RETURNING ",
    task_columns!()
);

/// Stores a bucket's new level.
pub const LIMIT_TOKENS: &str = "UPDATE function_limit SET tokens = $2, refilled_at = $3 WHERE name = $1";

/// Sets a function limit; a new bucket starts full (`$6` = the burst in
/// effect, `$5` = now).
pub const LIMIT_SET: &str = "INSERT INTO function_limit
    (name, max_running, rate_per_s, burst, tokens, refilled_at) VALUES ($1, $2, $3, $4, $6, $5)
    ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running,
        rate_per_s = excluded.rate_per_s, burst = excluded.burst,
        tokens = least(function_limit.tokens, $6)";

/// Removes a function limit.
pub const LIMIT_DELETE: &str = "DELETE FROM function_limit WHERE name = $1";

/// Every function limit.
pub const LIMITS: &str = "SELECT name, max_running, rate_per_s, burst FROM function_limit ORDER BY name";

/// Records or refreshes a worker (`$4` = now).
pub const WORKER_UPSERT: &str = "INSERT INTO worker (id, host, pid, started_at, heartbeat_at, queues)
    VALUES ($1, $2, $3, $4, $4, $5)
    ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
        heartbeat_at = excluded.heartbeat_at, queues = excluded.queues";

/// Every worker.
pub const WORKERS: &str = "SELECT id, host, pid, started_at, heartbeat_at, queues FROM worker ORDER BY id";

/// Forgets a worker.
pub const WORKER_DELETE: &str = "DELETE FROM worker WHERE id = $1";

/// Sets a queue's capacity.
pub const CAPACITY_SET: &str = "INSERT INTO queue_setting (queue, capacity) VALUES ($1, $2)
    ON CONFLICT (queue) DO UPDATE SET capacity = excluded.capacity";

/// Removes a queue's capacity (its other options stay).
pub const CAPACITY_DELETE: &str = "UPDATE queue_setting SET capacity = NULL WHERE queue = $1";

/// Serialises the hand-outs of serial queue `$1` (claims, `start`,
/// `active`) store-wide: a transaction-scoped advisory lock on a hash of
/// the store's schema and the queue.
pub const SERIAL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('ferroq:serial:' || current_schema() || ':' || $1::text))";

/// Claims up to `$3` ready tasks of queue `$1` for worker `$4` with lease
/// end `$5` (`$2` = now, `$6` = the worker's resources), whatever the
/// queue's settings: the serial path, which holds `SERIAL_LOCK`.
pub const CLAIM_PLAIN: &str = concat!(
    "UPDATE task SET status = 1, attempts = attempts + 1, lease_until = $5, worker = $4,
        started_at = $2, cancel_requested = false
    WHERE id IN (SELECT id FROM task
        WHERE queue = $1 AND status = 0 AND run_at <= $2
          AND (expires_at IS NULL OR expires_at > $2)
          AND ",
    requirements_met!("$6"),
    " ORDER BY claim_rank DESC, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
    RETURNING ",
    task_columns!()
);

/// The running task of queue `$1` that started first.
pub const ACTIVE_IN_QUEUE: &str =
    concat!("SELECT ", task_columns!(), " FROM task WHERE status = 1 AND queue = $1 ORDER BY started_at, id LIMIT 1");

/// The running tasks of queue `$1` with their cancel flags, locked.
pub const RUNNING_IN_QUEUE: &str = "SELECT id, cancel_requested FROM task
    WHERE status = 1 AND queue = $1 ORDER BY id FOR UPDATE";

/// The queue and status of one task, from either table.
pub const QUEUE_OF: &str = "SELECT queue, status FROM task WHERE id = $1
    UNION ALL SELECT queue, status FROM task_done WHERE id = $1";

/// Locks task `$1` if it is queued (a `start` checks, then starts).
pub const LOCK_QUEUED: &str = "SELECT id FROM task WHERE id = $1 AND status = 0 FOR UPDATE";

/// Hands queued task `$1` to worker `$2` with lease end `$3` (`$4` = now),
/// counting the attempt, whatever its run_at.
pub const START: &str = concat!(
    "UPDATE task SET status = 1, attempts = attempts + 1, lease_until = $3, worker = $2,
        started_at = $4, cancel_requested = false
    WHERE id = $1 AND status = 0 RETURNING ",
    task_columns!()
);

/// Puts running task `$1` back in the queue without counting the attempt
/// (a serial queue switching, or an answer deadline with the requeue
/// policy); `$2` is the error to record (NULL keeps the old one). A task
/// whose cancel was asked is not moved (it is cancelled instead).
pub const SWITCH_OUT: &str = "UPDATE task SET status = 0, attempts = greatest(attempts - 1, 0),
    lease_until = NULL, worker = NULL, error = coalesce($2::text, error)
    WHERE id = $1 AND status = 1 AND NOT cancel_requested";

/// Changes the priority (and so the claim rank) of a queued task.
pub const SET_PRIORITY: &str = concat!(
    "UPDATE task SET priority = $2, claim_rank = ferroq_rank($2, run_at, ",
    aging_of!("task.queue"),
    ") WHERE id = $1 AND status = 0"
);

/// Changes the run_at (and so the claim rank) of a queued task.
pub const SET_RUN_AT: &str = concat!(
    "UPDATE task SET run_at = $2, claim_rank = ferroq_rank(priority, $2, ",
    aging_of!("task.queue"),
    ") WHERE id = $1 AND status = 0"
);

/// The claim rank of task `$1` (for the test comparing it with `rules::claim_rank`).
pub const CLAIM_RANK_OF: &str = "SELECT claim_rank FROM task WHERE id = $1";

/// Sets the metadata of a task in either table; returns how many rows changed.
pub const SET_METADATA: &str = "WITH a AS (UPDATE task SET metadata = $2 WHERE id = $1 RETURNING id),
    b AS (UPDATE task_done SET metadata = $2 WHERE id = $1 RETURNING id)
    SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)";

/// Sets a queue's options, keeping its capacity and whether it is paused;
/// returns the aging step it had before (NULL: none, or a new row).
pub const QUEUE_OPTIONS_SET: &str = "WITH old AS (SELECT aging_ms FROM queue_setting WHERE queue = $1 FOR UPDATE)
    INSERT INTO queue_setting
    (queue, serial, answer_timeout_ms, on_timeout, retention_ms, aging_ms, dead_letter, dead_retention_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (queue) DO UPDATE SET serial = excluded.serial,
        answer_timeout_ms = excluded.answer_timeout_ms, on_timeout = excluded.on_timeout,
        retention_ms = excluded.retention_ms, aging_ms = excluded.aging_ms,
        dead_letter = excluded.dead_letter, dead_retention_ms = excluded.dead_retention_ms
    RETURNING (SELECT aging_ms FROM old)";

/// Recomputes the claim rank of every unfinished task of queue `$1` for
/// aging step `$2` (NULL: none), after the queue's aging changed.
pub const RERANK_QUEUE: &str = "UPDATE task SET claim_rank = ferroq_rank(priority, run_at, $2::bigint)
    WHERE queue = $1";

/// Pauses (`$2` true) or resumes a queue, keeping its other options.
pub const PAUSE_SET: &str = "INSERT INTO queue_setting (queue, paused) VALUES ($1, $2)
    ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused";

/// Whether queue `$1` is paused.
pub const PAUSED: &str = "SELECT coalesce((SELECT paused FROM queue_setting WHERE queue = $1), false)";

/// The columns of a queue's options, in the order `steer::options_row` reads them.
macro_rules! queue_options_columns {
    () => {
        "queue, serial, answer_timeout_ms, on_timeout, retention_ms, paused, aging_ms, dead_letter, dead_retention_ms"
    };
}

/// One queue's options.
pub const QUEUE_OPTIONS_GET: &str =
    concat!("SELECT ", queue_options_columns!(), " FROM queue_setting WHERE queue = $1");

/// Every queue that has options other than the defaults.
pub const QUEUE_OPTIONS_ALL: &str = concat!(
    "SELECT ",
    queue_options_columns!(),
    " FROM queue_setting
    WHERE serial OR answer_timeout_ms IS NOT NULL OR on_timeout <> 0 OR retention_ms IS NOT NULL
        OR paused OR aging_ms IS NOT NULL OR dead_letter IS NOT NULL OR dead_retention_ms IS NOT NULL
    ORDER BY queue"
);

/// Queues with an answer deadline and their policy (for recovery).
pub const TIMEOUT_QUEUES: &str = "SELECT queue, on_timeout FROM queue_setting WHERE answer_timeout_ms IS NOT NULL";

/// One queue's capacity.
pub const CAPACITY_GET: &str = "SELECT capacity FROM queue_setting WHERE queue = $1";

/// Earliest run_at among a queue's queued tasks that can still run at
/// `$2` = now or later (one past its deadline never becomes claimable);
/// none while the queue is paused (nothing of it becomes claimable by time).
pub const NEXT_RUN_AT: &str = "SELECT min(run_at) FROM task WHERE queue = $1 AND status = 0
    AND (expires_at IS NULL OR expires_at > greatest(run_at, $2))
    AND NOT EXISTS (SELECT 1 FROM queue_setting WHERE queue = $1 AND paused)";

/// Extends the leases of tasks `$1` held by worker `$2` (any worker when
/// NULL: a forced heartbeat) to `$3`; returns the held ones with their
/// cancel flags.
pub const HEARTBEAT: &str = "UPDATE task SET lease_until = $3
    WHERE id = ANY($1::bigint[]) AND status = 1 AND ($2::text IS NULL OR worker = $2)
    RETURNING id, cancel_requested";

/// Records progress of a task held by worker `$2` (any worker when NULL).
pub const PROGRESS: &str =
    "UPDATE task SET progress = $3 WHERE id = $1 AND status = 1 AND ($2::text IS NULL OR worker = $2)";

/// Reads (and locks) what fail needs of a task held by worker `$2` (any
/// worker when NULL): attempts, max_attempts, backoff, the cancel flag and
/// the worker holding it.
pub const FAIL_LOOKUP: &str = "SELECT attempts, max_attempts, backoff, cancel_requested, worker FROM task
    WHERE id = $1 AND status = 1 AND ($2::text IS NULL OR worker = $2) FOR UPDATE";

/// Puts running tasks back in the queue for a later attempt: parallel
/// arrays of id, expected worker, run_at and error.
pub const REQUEUE: &str = "UPDATE task t SET status = 0, run_at = i.run_at, lease_until = NULL,
        worker = NULL, error = i.error,
        claim_rank = ferroq_rank(t.priority, i.run_at, (SELECT aging_ms FROM queue_setting qa WHERE qa.queue = t.queue))
    FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS i(id, worker, run_at, error)
    WHERE t.id = i.id AND t.status = 1 AND t.worker = i.worker
    RETURNING t.id";

/// Gives claims back without counting the attempt: parallel arrays of id
/// and worker (NULL: any worker, a forced release). A task whose cancel
/// was asked is left for `MOVE_TO_DONE` to cancel (a cancel sticks).
pub const RELEASE: &str = "UPDATE task t SET status = 0, attempts = t.attempts - 1,
        lease_until = NULL, worker = NULL
    FROM unnest($1::bigint[], $2::text[]) AS i(id, worker)
    WHERE t.id = i.id AND t.status = 1 AND (i.worker IS NULL OR t.worker = i.worker)
        AND NOT t.cancel_requested
    RETURNING t.id";

/// Flags a running task for cancellation.
pub const FLAG_CANCEL: &str = "UPDATE task SET cancel_requested = true WHERE id = $1 AND status = 1";

/// Moves tasks from `task` to `task_done` with final status `$5`, if they
/// are in status `$6` (and held by the item's worker when it names one).
/// Parallel arrays: `$1` id, `$2` result, `$3` error (the old error is
/// kept when NULL), `$4` worker. `$7` = now, `$8` = default retention (ms,
/// NULL = forever), overridden by the queue's retention and the task's
/// own result TTL; a task ending `failed`, by its queue's dead retention
/// first. A task whose cancel was asked ends `cancelled` whatever
/// `$5` says (a cancel sticks; a late completion keeps its result). A task
/// ending `failed` in a queue with a dead-letter queue is filed there, its
/// home queue in `origin`. Returns the ids moved.
pub const MOVE_TO_DONE: &str = concat!(
    "WITH input AS (SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[])
        AS i(id, result, error, worker)),
    moved AS (DELETE FROM task t USING input i
        WHERE t.id = i.id AND t.status = $6::smallint AND (i.worker IS NULL OR t.worker = i.worker)
        RETURNING t.*, i.result AS new_result, i.error AS new_error,
            CASE WHEN t.cancel_requested THEN 4::smallint ELSE $5::smallint END AS final)
    INSERT INTO task_done (",
    task_columns!(),
    ", origin) SELECT m.id,
        CASE WHEN m.final = 3 AND qs.dead_letter IS NOT NULL THEN qs.dead_letter ELSE m.queue END,
        m.name, m.payload, m.priority, m.final, m.run_at, m.attempts, m.max_attempts,
        NULL, m.worker, m.key, m.batch, m.progress, m.new_result, coalesce(m.new_error, m.error), m.created_at,
        m.started_at, $7::bigint, m.expires_at, m.metadata, m.cancel_requested, m.backoff, m.result_ttl,
        $7::bigint + CASE WHEN m.final = 3 THEN coalesce(qs.dead_retention_ms, m.result_ttl, qs.retention_ms, $8::bigint)
            ELSE coalesce(m.result_ttl, qs.retention_ms, $8::bigint) END,
        m.requires,
        CASE WHEN m.final = 3 AND qs.dead_letter IS NOT NULL THEN m.queue END
    FROM moved m LEFT JOIN queue_setting qs ON qs.queue = m.queue RETURNING id"
);

/// Moves failed, cancelled or expired tasks `$1` back to the queue with
/// fresh attempts (`$2` = now). Returns the ids moved.
pub const RETRY_FROM_DONE: &str = concat!(
    "WITH moved AS (DELETE FROM task_done WHERE id = ANY($1::bigint[]) AND status IN (3, 4, 5)
        RETURNING *, coalesce(origin, queue) AS home)
    INSERT INTO task (",
    task_columns!(),
    ", claim_rank) SELECT id, home, name, payload, priority, 0, $2::bigint, 0, max_attempts,
        NULL, NULL, key, batch, NULL, NULL, error, created_at, NULL,
        NULL, NULL, metadata, false, backoff, result_ttl, NULL, requires,
        ferroq_rank(priority, $2::bigint, (SELECT aging_ms FROM queue_setting qa WHERE qa.queue = moved.home))
    FROM moved RETURNING id"
);

/// Moves any finished task `$1` back to the queue with fresh attempts
/// (requeue; `$2` = now): like `RETRY_FROM_DONE`, done tasks too (their
/// result is dropped). Returns the ids moved.
pub const REQUEUE_FROM_DONE: &str = concat!(
    "WITH moved AS (DELETE FROM task_done WHERE id = ANY($1::bigint[]) AND status IN (2, 3, 4, 5)
        RETURNING *, coalesce(origin, queue) AS home)
    INSERT INTO task (",
    task_columns!(),
    ", claim_rank) SELECT id, home, name, payload, priority, 0, $2::bigint, 0, max_attempts,
        NULL, NULL, key, batch, NULL, NULL, error, created_at, NULL,
        NULL, NULL, metadata, false, backoff, result_ttl, NULL, requires,
        ferroq_rank(priority, $2::bigint, (SELECT aging_ms FROM queue_setting qa WHERE qa.queue = moved.home))
    FROM moved RETURNING id"
);

/// Running tasks whose lease ended before `$1`, or all of worker `$2`'s,
/// locked (skipping tasks another transaction is finishing right now): id,
/// attempts, max_attempts, worker, run_at, queue, cancel flag.
pub const EXPIRED_LEASES: &str = "SELECT id, attempts, max_attempts, worker, run_at, queue, cancel_requested FROM task
    WHERE status = 1 AND (($2::text IS NULL AND lease_until < $1) OR worker = $2)
    ORDER BY id FOR UPDATE SKIP LOCKED";

/// Queued tasks whose deadline passed, locked.
pub const PAST_DEADLINE: &str = "SELECT id FROM task
    WHERE expires_at IS NOT NULL AND expires_at <= $1 AND status = 0
    ORDER BY id FOR UPDATE SKIP LOCKED";

/// Tasks by id, from either table (one snapshot: a task moving between
/// tables is seen exactly once).
pub const GET: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM task WHERE id = ANY($1::bigint[]) UNION ALL SELECT ",
    task_columns!(),
    " FROM task_done WHERE id = ANY($1::bigint[])"
);

/// Tasks by key within queue `$1`, from either table (a dead letter by
/// its home queue).
pub const GET_BY_KEY: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM task WHERE queue = $1 AND key = ANY($2::text[]) UNION ALL SELECT ",
    task_columns!(),
    " FROM task_done WHERE coalesce(origin, queue) = $1 AND key = ANY($2::text[])"
);

/// The statuses of tasks `$1` (to explain guarded updates that changed nothing).
pub const STATUS_OF: &str = "SELECT id, status FROM task WHERE id = ANY($1::bigint[])
    UNION ALL SELECT id, status FROM task_done WHERE id = ANY($1::bigint[])";

/// What a replayed move reads of tasks `$1` whose guard matched nothing
/// (`replay.rs`): id, status, worker, result and error, from either table.
pub const REPLAY_ROWS: &str = "SELECT id, status, worker, result, error FROM task WHERE id = ANY($1::bigint[])
    UNION ALL SELECT id, status, worker, result, error FROM task_done WHERE id = ANY($1::bigint[])";

/// A page of tasks, filtered by queue `$1`, status `$2`, batch `$3`, name
/// `$8`, key `$9` (NULL = any), with ids above `$4` (NULL = from the
/// start), at most `$5`.
/// `$6` / `$7` pick the tables to read.
pub const LIST: &str = concat!(
    "SELECT * FROM (SELECT ",
    task_columns!(),
    " FROM task WHERE $6 AND ($4::bigint IS NULL OR id > $4) AND ($1::text IS NULL OR queue = $1)
        AND ($2::smallint IS NULL OR status = $2) AND ($3::text IS NULL OR batch = $3)
        AND ($8::text IS NULL OR name = $8) AND ($9::text IS NULL OR key = $9)
    UNION ALL SELECT ",
    task_columns!(),
    " FROM task_done WHERE $7 AND ($4::bigint IS NULL OR id > $4) AND ($1::text IS NULL OR queue = $1)
        AND ($2::smallint IS NULL OR status = $2) AND ($3::text IS NULL OR batch = $3)
        AND ($8::text IS NULL OR name = $8) AND ($9::text IS NULL OR key = $9)) AS t
    ORDER BY id LIMIT $5"
);

/// Task counts per queue and status.
pub const COUNTS: &str = "SELECT queue, status, count(*) FROM task GROUP BY queue, status
    UNION ALL SELECT queue, status, count(*) FROM task_done GROUP BY queue, status";

/// Unfinished tasks in each of the queues `$1`.
pub const COUNT_UNFINISHED: &str = "SELECT queue, count(*) FROM task
    WHERE queue = ANY($1::text[]) GROUP BY queue";

/// Deletes finished tasks past their retention (`$1` = now) or finished
/// before `$2`, except the parents of unfinished dependents (their result
/// is read when the dependent runs), and frees their keys; returns how
/// many tasks went.
pub const PURGE: &str = "WITH gone AS (DELETE FROM task_done
        WHERE (purge_at <= $1 OR ($2::bigint IS NOT NULL AND finished_at < $2))
            AND NOT EXISTS (SELECT 1 FROM task_dep d WHERE d.parent = task_done.id)
        RETURNING id, coalesce(origin, queue) AS queue, key),
    freed AS (DELETE FROM task_key k USING gone g
        WHERE g.key IS NOT NULL AND k.queue = g.queue AND k.key = g.key AND k.id = g.id)
    SELECT count(*) FROM gone";

/// Deletes the finished tasks among `$1` and frees their keys; returns
/// the ids deleted (a dead letter's key is its home queue's).
pub const DELETE_FINISHED: &str = "WITH gone AS (DELETE FROM task_done WHERE id = ANY($1::bigint[])
        RETURNING id, coalesce(origin, queue) AS queue, key),
    freed AS (DELETE FROM task_key k USING gone g
        WHERE g.key IS NOT NULL AND k.queue = g.queue AND k.key = g.key AND k.id = g.id)
    SELECT id FROM gone";

/// Appends a listen-data change. The table lock makes versions commit in
/// the order they are handed out, so a follower reading "after version v"
/// never skips a change that commits later with a smaller version.
pub const LISTEN_LOCK: &str = "LOCK TABLE listen_log IN EXCLUSIVE MODE";

/// Appends a listen-data change (`$3` = now); returns its version.
pub const LISTEN_SET: &str = "INSERT INTO listen_log (key, value, at) VALUES ($1, $2, $3) RETURNING version";

/// Changes after version `$1`, oldest first.
pub const LISTEN_SINCE: &str =
    "SELECT version, key, value, at FROM listen_log WHERE version > $1 ORDER BY version LIMIT $2";

/// The latest value of one key.
pub const LISTEN_GET: &str = "SELECT version, key, value, at FROM listen_log WHERE key = $1
    ORDER BY version DESC LIMIT 1";

/// The newest version.
pub const LISTEN_HEAD: &str = "SELECT coalesce(max(version), 0) FROM listen_log";

/// Drops superseded changes older than `$1` (the newest of each key stays).
pub const LISTEN_PRUNE: &str = "DELETE FROM listen_log WHERE at < $1
    AND version NOT IN (SELECT max(version) FROM listen_log GROUP BY key)";

// ---- The event feed (see `store/events.rs` and `events.rs`) ----------

/// The meta entry that records which version of [`EVENTS_SCHEMA`] the
/// store has (kept apart from the schema version: the step is
/// idempotent, and runs once per store under the migration lock).
pub const EVENTS_SCHEMA_MARK: &str = "events_schema";
/// The version of [`EVENTS_SCHEMA`] this build writes.
pub const EVENTS_SCHEMA_VERSION: &str = "1";

/// The event feed: its tables, and statement-level triggers that record
/// every status change in the statement that made it. Events are ordered
/// by (transaction id, sequence) and read only below the oldest running
/// transaction (`EVENTS_AFTER`). A connection opened with
/// `ferroq.events=off` records nothing. A move between the task tables is
/// one statement (a data-modifying CTE), so at the end of it the trigger
/// on the table moved from finds the row in the table moved to. A task
/// put back from `task_done` also shows as an insert into `task`: the two
/// triggers of that statement agree, whichever fires first, that it was
/// requeued and not sent. Times are the store clock's where the row
/// carries one (sent: `created_at`, claimed: `started_at`, finished:
/// `finished_at`), else the server's. Kind codes: `events::KIND_*`.
pub const EVENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event (
    xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq bigint GENERATED BY DEFAULT AS IDENTITY,
    at bigint NOT NULL,
    task bigint NOT NULL,
    queue text NOT NULL,
    name text NOT NULL,
    kind smallint NOT NULL,
    old smallint,
    new smallint,
    worker text,
    error_type text,
    PRIMARY KEY (xid, seq)
);
CREATE INDEX IF NOT EXISTS event_at ON event (at);
CREATE TABLE IF NOT EXISTS consumer_cursor (name text PRIMARY KEY, value text NOT NULL, at bigint NOT NULL);
CREATE OR REPLACE FUNCTION ferroq_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
    $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
CREATE OR REPLACE FUNCTION ferroq_xid() RETURNS bigint LANGUAGE sql VOLATILE AS
    $$ SELECT pg_current_xact_id()::text::bigint $$;
CREATE OR REPLACE FUNCTION ferroq_events_on() RETURNS boolean LANGUAGE sql STABLE AS
    $$ SELECT coalesce(current_setting('ferroq.events', true), '') <> 'off' $$;
CREATE OR REPLACE FUNCTION ferroq_error_type(e text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF e IS NULL THEN RETURN NULL; END IF;
    IF e LIKE 'lease lost%' THEN RETURN 'LeaseLost'; END IF;
    IF left(ltrim(e), 1) = '{' THEN
        BEGIN
            RETURN e::jsonb ->> 'type';
        EXCEPTION WHEN others THEN
            RETURN 'Error';
        END;
    END IF;
    RETURN 'Error';
END $$;
CREATE OR REPLACE FUNCTION ferroq_event_task_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ferroq_events_on() THEN RETURN NULL; END IF;
    INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT n.created_at, n.id, n.queue, n.name, 0, NULL, n.status, n.worker, NULL FROM ev_new n
    WHERE NOT EXISTS (SELECT 1 FROM event e WHERE e.xid = ferroq_xid() AND e.task = n.id
        AND e.kind = 0 AND e.old IS NOT NULL AND e.new = 0)
    ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION ferroq_event_task_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ferroq_events_on() THEN RETURN NULL; END IF;
    INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT * FROM (
        SELECT CASE WHEN n.status = 1 THEN coalesce(n.started_at, ferroq_ms()) ELSE ferroq_ms() END,
            n.id, n.queue, n.name, 0, o.status, n.status, coalesce(n.worker, o.worker),
            CASE WHEN n.status = 0 AND o.status = 1 AND n.attempts >= o.attempts
                THEN ferroq_error_type(n.error) END
        FROM ev_old o JOIN ev_new n ON n.id = o.id WHERE n.status <> o.status
        UNION ALL
        SELECT ferroq_ms(), n.id, n.queue, n.name, 1, o.status, n.status, n.worker, NULL
        FROM ev_old o JOIN ev_new n ON n.id = o.id WHERE n.cancel_requested AND NOT o.cancel_requested
    ) AS changed ORDER BY 2;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION ferroq_event_task_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ferroq_events_on() THEN RETURN NULL; END IF;
    INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT coalesce(d.finished_at, ferroq_ms()), d.id, d.queue, d.name, 0, o.status, d.status, d.worker,
        CASE WHEN d.status = 3 THEN ferroq_error_type(d.error) END
    FROM ev_old o JOIN task_done d ON d.id = o.id ORDER BY d.id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION ferroq_event_done_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ferroq_events_on() THEN RETURN NULL; END IF;
    INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT ferroq_ms(), o.id, o.queue, o.name, 3, o.status, NULL, NULL, NULL FROM ev_old o
    WHERE NOT EXISTS (SELECT 1 FROM task t WHERE t.id = o.id) ORDER BY o.id;
    WITH fixed AS (
        UPDATE event e SET old = o.status FROM ev_old o
        WHERE e.xid = ferroq_xid() AND e.task = o.id AND e.kind = 0 AND e.old IS NULL AND e.new = 0
        RETURNING e.task)
    INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT ferroq_ms(), t.id, t.queue, t.name, 0, o.status, t.status, NULL, NULL
    FROM ev_old o JOIN task t ON t.id = o.id WHERE o.id NOT IN (SELECT task FROM fixed) ORDER BY t.id;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER ferroq_event_task_insert AFTER INSERT ON task
    REFERENCING NEW TABLE AS ev_new FOR EACH STATEMENT EXECUTE FUNCTION ferroq_event_task_insert();
CREATE OR REPLACE TRIGGER ferroq_event_task_update AFTER UPDATE ON task
    REFERENCING OLD TABLE AS ev_old NEW TABLE AS ev_new FOR EACH STATEMENT EXECUTE FUNCTION ferroq_event_task_update();
CREATE OR REPLACE TRIGGER ferroq_event_task_delete AFTER DELETE ON task
    REFERENCING OLD TABLE AS ev_old FOR EACH STATEMENT EXECUTE FUNCTION ferroq_event_task_delete();
CREATE OR REPLACE TRIGGER ferroq_event_done_delete AFTER DELETE ON task_done
    REFERENCING OLD TABLE AS ev_old FOR EACH STATEMENT EXECUTE FUNCTION ferroq_event_done_delete();
";

/// The connection option that stops a connection recording events.
pub const EVENTS_OFF_OPTION: &str = "-c ferroq.events=off";

/// Records that a finished task's callback ran (kind 2; `$2` = now).
/// Returns a row when it did.
pub const EVENT_DELIVERED: &str = "INSERT INTO event (at, task, queue, name, kind, old, new, worker, error_type)
    SELECT $2, id, queue, name, 2, status, status, NULL, NULL FROM task_done WHERE id = $1 RETURNING seq";

/// Events after position (`$1`, `$2`), of queue `$3` (NULL = any), at most
/// `$4`, of transactions older than every running one (so none can commit
/// behind the cursor later); then one row (part 1) with the newest such
/// position, read in the same snapshot.
pub const EVENTS_AFTER: &str = "WITH lim AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin),
    head AS (SELECT e.xid, e.seq FROM event e, lim WHERE e.xid < lim.xmin ORDER BY e.xid DESC, e.seq DESC LIMIT 1),
    page AS (SELECT e.* FROM event e, lim
        WHERE (e.xid, e.seq) > ($1::bigint, $2::bigint) AND e.xid < lim.xmin AND ($3::text IS NULL OR e.queue = $3)
        ORDER BY e.xid, e.seq LIMIT $4)
    SELECT 0 AS part, xid, seq, at, task, queue, name, kind, old, new, worker, error_type FROM page
    UNION ALL SELECT 1, xid, seq, 0, 0, '', '', 0::smallint, NULL, NULL, NULL, NULL FROM head
    ORDER BY part, xid, seq";

/// The newest position a follower may stand on (see `EVENTS_AFTER`).
pub const EVENTS_HEAD: &str = "SELECT e.xid, e.seq FROM event e
    WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY e.xid DESC, e.seq DESC LIMIT 1";

/// Deletes events recorded before `$1`.
pub const EVENTS_PRUNE: &str = "DELETE FROM event WHERE at < $1";

/// Stores a consumer cursor (`$3` = now).
pub const CURSOR_SET: &str = "INSERT INTO consumer_cursor (name, value, at) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, at = excluded.at";
/// Reads a consumer cursor.
pub const CURSOR_GET: &str = "SELECT value FROM consumer_cursor WHERE name = $1";

/// Every listen key's latest change, by key.
pub const LISTEN_KEYS: &str = "SELECT DISTINCT ON (key) version, key, value, at FROM listen_log
    ORDER BY key, version DESC";
