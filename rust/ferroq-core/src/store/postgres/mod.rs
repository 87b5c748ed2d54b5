//! The multi-machine backend: one PostgreSQL database (in a schema of the
//! user's choosing) shared by workers on any number of hosts.
//!
//! Behaviour matches the SQLite backend verb for verb (the conformance
//! suite runs on both). What differs is how it is achieved:
//!
//! * Claims are one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
//!   LOCKED)` in priority order, so concurrent claimers on any host never
//!   wait for each other or take the same task.
//! * Keys are unique per queue through `task_key`, across unfinished and
//!   finished tasks, also between concurrent transactions.
//! * Batches travel as arrays: one statement enqueues, completes, releases
//!   or heartbeats a whole batch.
//! * Time comes from the store's clock as a parameter, never from the
//!   server's `now()`, so every host agrees with its own leases and tests
//!   can drive a manual clock.
//! * Wake-ups come by LISTEN/NOTIFY (see `notify.rs`), or by polling.
//! * A connection broken by a server restart is replaced on the next call
//!   (see `pool.rs`); the call that met the break reports
//!   [`Error::Unavailable`].
//!
//! This file opens the store and maps each [`Store`] verb onto the module
//! that implements it: `enqueue.rs`, `claim.rs`, `transitions.rs` (the
//! guarded moves), `steer.rs` (moves from outside: start, active, requeue,
//! set_*, queue options), `read.rs`, `admin.rs` (purge, listen data, workers,
//! capacities, limits) and `notify.rs` (wake-ups and waiting). `exec.rs`
//! runs calls and transactions with their retries; every statement is in
//! `sql.rs`.

mod admin;
mod claim;
pub mod config;
mod enqueue;
mod events;
mod exec;
mod flow;
mod notify;
mod pool;
mod read;
mod replay;
mod schema;
pub mod sql;
mod steer;
mod transitions;

pub use config::PgConfig;

use super::rules;
use super::{
    ActiveParams, EnqueueParams, PauseParams, QueueOptions, RequeueParams, SetMetadataParams, SetPriorityParams,
    SetRunAtParams, StartParams,
};
use super::{
    BackupParams, CancelParams, CapacityParams, ClaimParams, CompleteParams, Enqueued, FailParams, FunctionLimit,
    GetByKeyParams, HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams,
    ProgressParams, PurgeParams, QueueCount, RecoverParams, ReleaseParams, RetryParams, Store, WorkerInfo,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::task::{NewTask, Status, Task};
use notify::Wake;
use pool::{to_error, Pool};
use std::sync::Arc;
use std::time::Duration;

/// The PostgreSQL backend.
pub struct PostgresStore {
    cfg: Arc<PgConfig>,
    pool: Pool,
    clock: Arc<dyn Clock>,
    wake: Arc<Wake>,
}

impl PostgresStore {
    /// Connects, creates or checks the schema, and starts the listener
    /// (unless notifications are off).
    pub fn open(cfg: PgConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        rules::check_max_payload(cfg.store.max_payload)?;
        let cfg = Arc::new(cfg);
        let mut first = pool::connect(&cfg)?;
        schema::prepare(&mut first, &cfg).map_err(|f| to_error(&cfg, f))?;
        let wake = Arc::new(Wake::new());
        if cfg.notify {
            notify::spawn_listener(wake.clone(), cfg.clone())
                .map_err(|e| Error::Unavailable(format!("cannot start the LISTEN thread: {e}")))?;
        }
        Ok(PostgresStore { pool: Pool::new(cfg.clone(), first), cfg, clock, wake })
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

    /// True while a LISTEN connection delivers wake-ups (false when
    /// notifications are off or the listener is reconnecting).
    pub fn listening(&self) -> bool {
        self.wake.listening()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.wake.stop();
    }
}

impl Store for PostgresStore {
    fn enqueue_flow(&self, tasks: &[crate::store::FlowTask]) -> Result<Vec<Enqueued>> {
        flow::enqueue_flow(self, tasks)
    }
    fn dependencies(&self, ids: &[i64]) -> Result<Vec<Vec<i64>>> {
        flow::dependencies(self, ids)
    }
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        enqueue::enqueue(self, tasks)
    }
    fn enqueue_with(&self, p: &EnqueueParams<'_>) -> Result<Vec<Enqueued>> {
        enqueue::enqueue_with(self, p)
    }
    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>> {
        claim::claim(self, p)
    }
    fn start(&self, p: &[StartParams]) -> Result<Vec<Result<Task>>> {
        steer::start(self, p)
    }
    fn active(&self, p: &ActiveParams) -> Result<Option<Task>> {
        steer::active(self, p)
    }
    fn requeue(&self, p: &[RequeueParams]) -> Result<Vec<Result<()>>> {
        steer::requeue(self, p)
    }
    fn set_priority(&self, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>> {
        steer::set_priority(self, p)
    }
    fn set_run_at(&self, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>> {
        steer::set_run_at(self, p)
    }
    fn set_metadata(&self, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>> {
        steer::set_metadata(self, p)
    }
    fn set_queue_options(&self, o: &QueueOptions) -> Result<()> {
        steer::set_queue_options(self, o)
    }
    fn set_paused(&self, p: &PauseParams) -> Result<()> {
        steer::set_paused(self, p)
    }
    fn queue_options(&self, queue: &str) -> Result<QueueOptions> {
        steer::queue_options(self, queue)
    }
    fn all_queue_options(&self) -> Result<Vec<QueueOptions>> {
        steer::all_queue_options(self)
    }
    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
        transitions::heartbeat(self, p)
    }
    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
        transitions::progress(self, p)
    }
    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
        transitions::complete(self, p)
    }
    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
        transitions::fail(self, p)
    }
    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
        transitions::cancel(self, p)
    }
    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
        transitions::release(self, p)
    }
    fn retry(&self, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
        transitions::retry(self, p)
    }
    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
        let out = transitions::recover(self, p)?;
        flow::sweep(self)?;
        Ok(out)
    }
    fn expire(&self) -> Result<Vec<i64>> {
        transitions::expire(self)
    }
    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>> {
        read::get(self, ids)
    }
    fn get_by_key(&self, p: &GetByKeyParams) -> Result<Vec<Option<Task>>> {
        read::get_by_key(self, &p.queue, &p.keys)
    }
    fn list(&self, p: &ListParams) -> Result<Vec<Task>> {
        read::list(self, p)
    }
    fn counts(&self) -> Result<Vec<QueueCount>> {
        read::counts(self)
    }
    fn unfinished(&self, queue: &str) -> Result<u64> {
        read::unfinished(self, queue)
    }
    fn next_run_at(&self, queue: &str) -> Result<Option<i64>> {
        read::next_run_at(self, queue)
    }
    fn purge(&self, p: &PurgeParams) -> Result<u64> {
        admin::purge(self, p)
    }
    fn delete(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        admin::delete(self, ids)
    }
    fn listen_set(&self, p: &ListenSetParams) -> Result<i64> {
        admin::listen_set(self, p)
    }
    fn listen_changes(&self, p: &ListenChangesParams) -> Result<Vec<ListenChange>> {
        admin::listen_changes(self, p)
    }
    fn listen_get(&self, key: &str) -> Result<Option<ListenChange>> {
        admin::listen_get(self, key)
    }
    fn listen_head(&self) -> Result<i64> {
        admin::listen_head(self)
    }
    fn register_worker(&self, w: &WorkerInfo) -> Result<()> {
        admin::register_worker(self, w)
    }
    fn workers(&self) -> Result<Vec<WorkerInfo>> {
        admin::workers(self)
    }
    fn remove_worker(&self, id: &str) -> Result<bool> {
        admin::remove_worker(self, id)
    }
    fn set_capacity(&self, p: &CapacityParams) -> Result<()> {
        admin::set_capacity(self, p)
    }
    fn capacity(&self, queue: &str) -> Result<Option<u64>> {
        admin::capacity(self, queue)
    }
    fn set_function_limit(&self, limit: &FunctionLimit) -> Result<()> {
        admin::set_function_limit(self, limit)
    }
    fn function_limits(&self) -> Result<Vec<FunctionLimit>> {
        admin::function_limits(self)
    }
    /// Not done here: a PostgreSQL store is backed up with the server's
    /// own tools (`pg_dump --schema=<schema>`, or the server's base backups),
    /// which copy it consistently while it is in use.
    fn backup(&self, _p: &BackupParams) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "a PostgreSQL store is backed up with pg_dump (pg_dump --schema={} <database>), not by ferroq",
            self.cfg.schema
        )))
    }
    fn check(&self) -> Result<Vec<crate::store::ShardCheck>> {
        admin::check(self)
    }
    fn change_token(&self) -> Result<u64> {
        notify::change_token(self)
    }
    fn wake(&self) {
        self.wake.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wake.bump()
    }
    fn wake_count(&self) -> u64 {
        self.wake.wakes.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool> {
        notify::wait_for_change(self, token, timeout)
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn events(&self, p: &crate::store::EventsParams) -> Result<crate::store::EventsPage> {
        events::events(self, p)
    }
    fn events_head(&self) -> Result<String> {
        events::events_head(self)
    }
    fn event_cursor_set(&self, consumer: &str, cursor: &str) -> Result<()> {
        events::event_cursor_set(self, consumer, cursor)
    }
    fn event_cursor_get(&self, consumer: &str) -> Result<Option<String>> {
        events::event_cursor_get(self, consumer)
    }
    fn ack_callbacks(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        events::ack_callbacks(self, ids)
    }
    fn listen_keys(&self) -> Result<Vec<ListenChange>> {
        events::listen_keys(self)
    }
    fn listen_cursor_set(&self, consumer: &str, version: i64) -> Result<()> {
        events::listen_cursor_set(self, consumer, version)
    }
    fn listen_cursor_get(&self, consumer: &str) -> Result<Option<i64>> {
        events::listen_cursor_get(self, consumer)
    }

    fn describe(&self) -> String {
        format!(
            "postgresql store {} schema {} (pool {}, {})",
            self.cfg.redacted(),
            self.cfg.schema,
            self.cfg.pool_size,
            if self.cfg.notify { "LISTEN/NOTIFY" } else { "polling" }
        )
    }
}
