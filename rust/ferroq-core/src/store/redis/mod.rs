//! The Redis backend: one Redis database (under a key prefix of the
//! user's choosing, so several stores share one server) used by workers on
//! any number of hosts.
//!
//! Behaviour matches the SQLite and PostgreSQL backends verb for verb (the
//! conformance suite runs on all of them). How it is achieved:
//!
//! * Every decision is made by the rules every backend shares
//!   (`store/rules.rs`) in Rust, from records read from Redis; every write
//!   is one Lua script (`scripts.rs`, loaded once and called by SHA) that
//!   re-checks on the server, atomically, that what the decision was made
//!   from is unchanged, and only then writes the records and every index
//!   (`tx.rs`). A guard that fails writes nothing; the verb reads again.
//! * Claims read the head of the queue's ready set (a sorted set ordered
//!   by priority descending, then run_at, then id: every 64-bit priority
//!   is supported) and the due part of its scheduled set, and commit each
//!   task on its own guard, so concurrent claimers on any host never take
//!   the same task and a lost race costs one task, not the batch.
//! * Time comes from the store's clock, never from the server, so every
//!   host agrees with its own leases and tests can drive a manual clock.
//! * Wake-ups come by pub/sub with a polling fallback (`wake.rs`).
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync
//! everysec` a Redis crash loses at most about a second of acknowledged
//! writes, `always` loses none (each write waits for fsync), and without
//! the append-only file a crash loses everything since the last snapshot.

mod admin;
mod claim;
mod codec;
pub mod config;
mod moves;
mod pool;
pub mod scripts;
mod tx;
mod wake;
mod write;

pub use config::RedisConfig;

use super::{
    ActiveParams, EnqueueParams, QueueOptions, RequeueParams, SetMetadataParams, SetPriorityParams, SetRunAtParams,
    StartParams,
};
use super::{
    BackupParams, CancelParams, CapacityParams, ClaimParams, CompleteParams, Enqueued, FailParams, FunctionLimit,
    GetByKeyParams, HeartbeatOutcome, HeartbeatParams, ListParams, ListenChange, ListenChangesParams, ListenSetParams,
    ProgressParams, PurgeParams, QueueCount, RecoverParams, ReleaseParams, RetryParams, Store, WorkerInfo,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::task::{NewTask, Status, Task};
use pool::Pool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tx::{Keys, Loaded};
use wake::Wake;

/// The layout version of the keys this build writes (`P:meta` field `layout`).
pub const LAYOUT_VERSION: i64 = 1;

/// How long opening a store waits for its wake-up subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How often a wait looks at the store while the subscription is down.
const UNSUBSCRIBED_POLL: Duration = Duration::from_millis(5);

/// The Redis backend.
pub struct RedisStore {
    cfg: Arc<RedisConfig>,
    pool: Arc<Pool>,
    clock: Arc<dyn Clock>,
    wake: Arc<Wake>,
    keys: Keys,
    commit: redis::Script,
    listen_set: redis::Script,
}

impl RedisStore {
    /// Connects, checks or writes the layout version, and starts the
    /// wake-up subscriber (unless `notify=off`).
    pub fn open(cfg: RedisConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        super::rules::check_max_payload(cfg.store.max_payload)?;
        let cfg = Arc::new(cfg);
        let pool = Arc::new(Pool::open(cfg.clone())?);
        let keys = Keys::new(&cfg.prefix);
        let store = RedisStore {
            cfg: cfg.clone(),
            pool: pool.clone(),
            clock,
            wake: Arc::new(Wake::default()),
            keys,
            commit: redis::Script::new(scripts::COMMIT),
            listen_set: redis::Script::new(scripts::LISTEN_SET),
        };
        let meta = store.keys.k("meta");
        let layout: Option<i64> = store.pool.run(|c| {
            redis::cmd("HSETNX").arg(&meta).arg("layout").arg(LAYOUT_VERSION).query::<i64>(c)?;
            redis::cmd("HGET").arg(&meta).arg("layout").query(c)
        })?;
        if layout != Some(LAYOUT_VERSION) {
            return Err(Error::NotAStore(format!(
                "the keys under prefix {:?} at {} have layout {:?}; this build reads layout {LAYOUT_VERSION}",
                cfg.prefix,
                cfg.redacted(),
                layout
            )));
        }
        if cfg.notify {
            wake::spawn_listener(store.wake.clone(), pool, store.keys.k("wake"))
                .map_err(|e| Error::Unavailable(format!("cannot start the wake-up thread: {e}")))?;
            // A message published before the subscription is in place
            // reaches nobody: give it a moment, so that a wait started
            // right after opening is woken by the next commit. (Until it is
            // in place, waits poll every UNSUBSCRIBED_POLL.)
            let until = Instant::now() + SUBSCRIBE_WAIT;
            while !store.wake.listening() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(store)
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// True while the wake-up subscriber is connected.
    pub fn listening(&self) -> bool {
        self.wake.listening()
    }

    /// Runs a script by SHA (loading it when the server lacks it).
    fn eval<T: redis::FromRedisValue>(&self, script: &redis::Script, args: &[Vec<u8>]) -> Result<T> {
        self.pool.run(|c| {
            let mut inv = script.prepare_invoke();
            for a in args {
                inv.arg(a.as_slice());
            }
            inv.invoke(c)
        })
    }

    /// Reads task records by id (None where there is none).
    fn load(&self, ids: &[i64]) -> Result<Vec<Option<Loaded>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.task(*id)).collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in keys.chunks(1000) {
            let raws: Vec<Option<Vec<u8>>> = self.pool.run(|c| redis::cmd("MGET").arg(chunk).query(c))?;
            for raw in raws {
                out.push(match raw {
                    Some(raw) => Some(Loaded { rec: codec::decode(&raw)?, raw }),
                    None => None,
                });
            }
        }
        Ok(out)
    }

    /// Reads one string key.
    fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.pool.run(|c| redis::cmd("GET").arg(key).query(c))
    }

    /// Runs a plain command.
    fn q<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.pool.run(|c| cmd.query(c))
    }

    /// Runs `round` until its commit goes through (it returns Some), reading
    /// afresh each time; gives up after many lost races.
    fn retrying<T>(&self, mut round: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        for attempt in 0..1_000u32 {
            if let Some(v) = round()? {
                return Ok(v);
            }
            if attempt > 8 {
                std::thread::sleep(Duration::from_micros(200 * u64::from(attempt.min(50))));
            }
        }
        Err(Error::Storage("too many concurrent changes to the same Redis keys; try again".into()))
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.wake.stop();
    }
}

impl Store for RedisStore {
    fn enqueue_flow(&self, tasks: &[crate::store::FlowTask]) -> Result<Vec<Enqueued>> {
        write::enqueue_flow(self, tasks)
    }
    fn dependencies(&self, ids: &[i64]) -> Result<Vec<Vec<i64>>> {
        write::dependencies(self, ids)
    }
    fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        write::enqueue_with(self, &EnqueueParams { tasks, on_duplicate: super::OnDuplicate::Existing })
    }
    fn enqueue_with(&self, p: &EnqueueParams<'_>) -> Result<Vec<Enqueued>> {
        write::enqueue_with(self, p)
    }
    fn claim(&self, p: &ClaimParams) -> Result<Vec<Task>> {
        claim::claim(self, p)
    }
    fn start(&self, p: &[StartParams]) -> Result<Vec<Result<Task>>> {
        claim::start(self, p)
    }
    fn active(&self, p: &ActiveParams) -> Result<Option<Task>> {
        claim::active(self, p)
    }
    fn requeue(&self, p: &[RequeueParams]) -> Result<Vec<Result<()>>> {
        moves::requeue(self, p)
    }
    fn set_priority(&self, p: &[SetPriorityParams]) -> Result<Vec<Result<()>>> {
        moves::set_priority(self, p)
    }
    fn set_run_at(&self, p: &[SetRunAtParams]) -> Result<Vec<Result<()>>> {
        moves::set_run_at(self, p)
    }
    fn set_metadata(&self, p: &[SetMetadataParams]) -> Result<Vec<Result<()>>> {
        moves::set_metadata(self, p)
    }
    fn set_queue_options(&self, o: &QueueOptions) -> Result<()> {
        admin::set_queue_options(self, o)
    }
    fn set_paused(&self, p: &super::PauseParams) -> Result<()> {
        admin::set_paused(self, p)
    }
    fn queue_options(&self, queue: &str) -> Result<QueueOptions> {
        admin::queue_options(self, queue)
    }
    fn all_queue_options(&self) -> Result<Vec<QueueOptions>> {
        admin::all_queue_options(self)
    }
    fn heartbeat(&self, p: &HeartbeatParams) -> Result<Vec<HeartbeatOutcome>> {
        moves::heartbeat(self, p)
    }
    fn progress(&self, p: &[ProgressParams]) -> Result<Vec<Result<()>>> {
        moves::progress(self, p)
    }
    fn complete(&self, p: &[CompleteParams]) -> Result<Vec<Result<()>>> {
        let out = moves::complete(self, p)?;
        write::settle_after(self, p.iter().map(|x| x.id))?;
        Ok(out)
    }
    fn fail(&self, p: &[FailParams]) -> Result<Vec<Result<Status>>> {
        let out = moves::fail(self, p)?;
        write::settle_after(self, p.iter().map(|x| x.id))?;
        Ok(out)
    }
    fn cancel(&self, p: &[CancelParams]) -> Result<Vec<Result<Status>>> {
        let out = moves::cancel(self, p)?;
        write::settle_after(self, p.iter().map(|x| x.id))?;
        Ok(out)
    }
    fn release(&self, p: &[ReleaseParams]) -> Result<Vec<Result<()>>> {
        let out = moves::release(self, p)?;
        write::settle_after(self, p.iter().map(|x| x.id))?;
        Ok(out)
    }
    fn retry(&self, p: &[RetryParams]) -> Result<Vec<Result<()>>> {
        moves::retry(self, p)
    }
    fn recover(&self, p: &RecoverParams) -> Result<Vec<(i64, Status)>> {
        let out = moves::recover(self, p)?;
        write::sweep(self)?;
        Ok(out)
    }
    fn expire(&self) -> Result<Vec<i64>> {
        let out = moves::expire(self)?;
        write::settle_after(self, out.iter().copied())?;
        Ok(out)
    }
    fn get(&self, ids: &[i64]) -> Result<Vec<Option<Task>>> {
        Ok(self.load(ids)?.into_iter().map(|l| l.map(|l| l.rec.task)).collect())
    }
    fn get_by_key(&self, p: &GetByKeyParams) -> Result<Vec<Option<Task>>> {
        admin::get_by_key(self, p)
    }
    fn list(&self, p: &ListParams) -> Result<Vec<Task>> {
        admin::list(self, p)
    }
    fn counts(&self) -> Result<Vec<QueueCount>> {
        admin::counts(self)
    }
    fn unfinished(&self, queue: &str) -> Result<u64> {
        admin::unfinished(self, queue)
    }
    fn next_run_at(&self, queue: &str) -> Result<Option<i64>> {
        admin::next_run_at(self, queue)
    }
    fn purge(&self, p: &PurgeParams) -> Result<u64> {
        admin::purge(self, p)
    }
    fn delete(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        moves::delete(self, ids)
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
    /// Not done here: a Redis store is backed up with the server's own
    /// tools (`BGSAVE` and a copy of the RDB file, or the append-only file).
    fn backup(&self, _p: &BackupParams) -> Result<()> {
        Err(Error::InvalidArgument(
            "a Redis store is backed up with the server's own tools (BGSAVE, then copy dump.rdb), not by ferroq".into(),
        ))
    }
    fn check(&self) -> Result<Vec<crate::store::ShardCheck>> {
        admin::check(self)
    }
    fn change_token(&self) -> Result<u64> {
        let chg: Option<u64> = self.q(redis::cmd("GET").arg(self.keys.k("chg")))?;
        Ok(chg.unwrap_or(0).wrapping_add(self.wake.local().wrapping_mul(1 << 32)))
    }
    fn wake(&self) {
        self.wake.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wake.bump()
    }
    fn wake_count(&self) -> u64 {
        self.wake.wakes.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn wait_for_change(&self, token: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let mark = self.wake.mark();
            if self.change_token()? != token {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Without a subscription (still connecting, or reconnecting)
            // no message comes: look at `P:chg` more often meanwhile.
            let poll = if self.wake.listening() || !self.cfg.notify {
                self.cfg.poll_interval
            } else {
                self.cfg.poll_interval.min(UNSUBSCRIBED_POLL)
            };
            self.wake.wait_since(mark, (deadline - now).min(poll));
        }
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    fn events(&self, p: &crate::store::EventsParams) -> Result<crate::store::EventsPage> {
        admin::events(self, p)
    }
    fn events_head(&self) -> Result<String> {
        admin::events_head(self)
    }
    fn event_cursor_set(&self, consumer: &str, cursor: &str) -> Result<()> {
        admin::cursor_set(self, &crate::store::events::event_cursor_key(consumer), consumer, cursor)
    }
    fn event_cursor_get(&self, consumer: &str) -> Result<Option<String>> {
        admin::cursor_get(self, &crate::store::events::event_cursor_key(consumer), consumer)
    }
    fn ack_callbacks(&self, ids: &[i64]) -> Result<Vec<Result<()>>> {
        admin::ack_callbacks(self, ids)
    }
    fn listen_keys(&self) -> Result<Vec<ListenChange>> {
        admin::listen_keys(self)
    }
    fn listen_cursor_set(&self, consumer: &str, version: i64) -> Result<()> {
        crate::store::events::check_listen_version(version)?;
        admin::cursor_set(self, &crate::store::events::listen_cursor_key(consumer), consumer, &version.to_string())
    }
    fn listen_cursor_get(&self, consumer: &str) -> Result<Option<i64>> {
        admin::cursor_get(self, &crate::store::events::listen_cursor_key(consumer), consumer)?
            .map(|v| crate::store::events::parse_listen_version(&v))
            .transpose()
    }
    fn describe(&self) -> String {
        format!(
            "redis store {} prefix {} (pool {}, {})",
            self.cfg.redacted(),
            self.cfg.prefix,
            self.cfg.pool_size,
            if self.cfg.notify { "pub/sub" } else { "polling" }
        )
    }
}
