//! `Store` for Python: each method extracts its arguments, releases the GIL
//! for the core call, and converts the answer back.

use crate::clock::PyManualClock;
use crate::errors::{invalid, seconds, to_py, Int, IntoPyResult, Text};
use crate::task::PyTask;
use ferroq_core::columns::{first_page, read_page, ResultColumns, ResultQuery, TextColumn};
use ferroq_core::store::{
    ActiveParams, Dep, EnqueueParams, FlowTask, OnDuplicate, OnTimeout, PauseParams, QueueOptions, RequeueParams,
    SetMetadataParams, SetPriorityParams, SetRunAtParams, StartParams,
};
use ferroq_core::store::{
    BackupParams, CancelParams, CapacityParams, ClaimParams, CompleteParams, FailParams, FunctionLimit, GetByKeyParams,
    HeartbeatParams, ListParams, ListenChangesParams, ListenSetParams, ProgressParams, PurgeParams, RecoverParams,
    ReleaseParams, Retry, RetryParams, WorkerInfo,
};
use ferroq_core::{Backoff, BackoffStrategy, Error, NewTask, Status, Store};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One listen change as Python sees it: (version, key, value, at_ms).
type ListenRow<'py> = (i64, String, Bound<'py, PyBytes>, i64);
/// An event as Python sees it: (cursor, at, task_id, queue, name, kind,
/// from_status, to_status, worker, error_type).
type EventTuple = (
    String,
    i64,
    i64,
    String,
    String,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<String>,
    Option<String>,
);

fn event_tuple(e: ferroq_core::store::Event) -> EventTuple {
    (
        e.cursor,
        e.at,
        e.task_id,
        e.queue,
        e.name,
        e.kind.as_str(),
        e.from.map(|s| s.as_str()),
        e.to.map(|s| s.as_str()),
        e.worker,
        e.error_type,
    )
}

/// A worker as Python sees it: (id, host, pid, started_at, heartbeat_at, queues).
type WorkerRow = (String, String, u32, i64, i64, Vec<String>);
/// A function limit as Python sees it: (name, max_running, rate_per_s, burst).
type LimitRow = (String, Option<u32>, Option<f64>, Option<f64>);
/// A queue's options as Python sees them: (queue, serial,
/// answer_timeout_ms, on_timeout, retention_ms, paused, aging_ms,
/// dead_letter, dead_retention_ms).
type OptionsRow =
    (String, bool, Option<i64>, &'static str, Option<i64>, bool, Option<i64>, Option<String>, Option<i64>);

fn options_row(o: QueueOptions) -> OptionsRow {
    (
        o.queue,
        o.serial,
        o.answer_timeout_ms,
        o.on_timeout.as_str(),
        o.retention_ms,
        o.paused,
        o.aging_ms,
        o.dead_letter,
        o.dead_retention_ms,
    )
}

/// What an enqueue does with a taken key: 'existing' (return the existing
/// task, the default) or 'error' (raise `DuplicateKeyError`, store nothing).
fn parse_on_duplicate(py: Python<'_>, on_duplicate: Option<&str>) -> PyResult<OnDuplicate> {
    match on_duplicate {
        None | Some("existing") => Ok(OnDuplicate::Existing),
        Some("error") => Ok(OnDuplicate::Error),
        Some(other) => Err(invalid(py, format!("on_duplicate must be 'existing' or 'error', got {other:?}"))),
    }
}

/// How long one GIL-free wait slice lasts before Ctrl+C is checked.
const SLICE: Duration = Duration::from_millis(100);

/// The slice of a wait on any other thread than the main one, where
/// Python delivers no signals and there is no Ctrl+C to check: long, so
/// that an idle worker thread does not wake ten times a second for nothing.
/// (`close()` and `wake()` end such waits at once.)
const OTHER_THREAD_SLICE: Duration = Duration::from_secs(1);

/// True on Python's main thread (the one signal handlers run on).
fn on_main_thread(py: Python<'_>) -> bool {
    let Ok(threading) = py.import("threading") else { return true };
    match (threading.call_method0("current_thread"), threading.call_method0("main_thread")) {
        (Ok(current), Ok(main)) => current.is(&main),
        _ => true,
    }
}

/// A ferroq store opened from a URL (`memory://`, a path, `sqlite:///...`).
#[pyclass(name = "Store", module = "ferroq._core", frozen)]
pub struct PyStore {
    inner: RwLock<Option<Arc<dyn Store>>>,
    url: String,
    /// Threads now inside a wait (see `waiting`).
    waits: AtomicUsize,
}

/// Counts a thread in a wait for as long as it lives.
struct InWait<'a>(&'a AtomicUsize);

impl<'a> InWait<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        InWait(n)
    }
}

impl Drop for InWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes from Python. `bytes` and `bytearray` are copied in one piece;
/// extracting a `Vec<u8>` directly would convert them element by element,
/// which costs a send more than its payload is worth.
struct Blob(Vec<u8>);

impl<'py> FromPyObject<'py> for Blob {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = ob.downcast::<PyBytes>() {
            return Ok(Blob(b.as_bytes().to_vec()));
        }
        if let Ok(b) = ob.downcast::<PyByteArray>() {
            return Ok(Blob(b.to_vec()));
        }
        Ok(Blob(ob.extract()?))
    }
}

/// A value given once for all rows, or one per row (any sequence but a
/// string).
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<'py, T: FromPyObject<'py>> FromPyObject<'py> for OneOrMany<T> {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if ob.is_instance_of::<PyString>() || ob.is_instance_of::<PyInt>() || ob.is_instance_of::<PyFloat>() {
            return Ok(OneOrMany::One(ob.extract()?));
        }
        Ok(OneOrMany::Many(ob.extract()?))
    }
}

impl<T> OneOrMany<T> {
    fn map<U>(self, f: impl Fn(T) -> U) -> OneOrMany<U> {
        match self {
            OneOrMany::Many(v) => OneOrMany::Many(v.into_iter().map(f).collect()),
            OneOrMany::One(v) => OneOrMany::One(f(v)),
        }
    }
}

impl<T: Clone> OneOrMany<T> {
    /// The value for row `i`; `check_len` has made sure it exists.
    fn at(&self, i: usize) -> T {
        match self {
            OneOrMany::One(v) => v.clone(),
            OneOrMany::Many(v) => v[i].clone(),
        }
    }
    fn check_len(&self, py: Python<'_>, what: &str, n: usize) -> PyResult<()> {
        match self {
            OneOrMany::Many(v) if v.len() != n => {
                Err(invalid(py, format!("{what} has {} values for {n} tasks", v.len())))
            }
            _ => Ok(()),
        }
    }
}

fn parse_retry(py: Python<'_>, retry: Option<&Bound<'_, PyAny>>) -> PyResult<Retry> {
    let Some(r) = retry else { return Ok(Retry::Backoff) };
    if r.is_none() {
        return Ok(Retry::Backoff);
    }
    if r.is_instance_of::<PyInt>() {
        return Ok(Retry::After(r.extract::<Int<i64>>()?.0));
    }
    match r.extract::<String>().ok().as_deref() {
        Some("backoff") => Ok(Retry::Backoff),
        Some("never") => Ok(Retry::Never),
        _ => Err(invalid(py, format!("retry must be 'backoff', 'never' or a delay in ms, got {r}"))),
    }
}

fn parse_backoff(text: Option<&str>) -> ferroq_core::Result<Option<Backoff>> {
    text.map(Backoff::decode).transpose()
}

/// Appends one page of result columns to the Python lists of
/// `results_columns` (in its field order).
fn append_page<'py>(
    py: Python<'py>,
    lists: &[Bound<'py, PyList>],
    page: &ResultColumns,
    names: &[(Status, Bound<'py, PyString>)],
) -> PyResult<()> {
    let [id, key, status, attempts, error, result, raw] = lists else {
        return Err(to_py(py, Error::Storage("results_columns: wrong number of columns".into())));
    };
    let text = |list: &Bound<'py, PyList>, c: &TextColumn| -> PyResult<()> {
        for t in c.iter() {
            list.append(t.map(|t| PyString::new(py, t)))?;
        }
        Ok(())
    };
    for v in &page.id {
        id.append(v)?;
    }
    text(key, &page.key)?;
    for s in &page.status {
        status.append(names.iter().find(|(n, _)| n == s).map(|(_, p)| p))?;
    }
    for v in &page.attempts {
        attempts.append(v)?;
    }
    text(error, &page.error)?;
    text(result, &page.result)?;
    for r in &page.result_raw {
        raw.append(r.as_deref().map(|b| PyBytes::new(py, b)))?;
    }
    Ok(())
}

fn tasks_to_py(py: Python<'_>, tasks: Vec<ferroq_core::Task>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(py, tasks.into_iter().map(PyTask::from))
}

fn item_errors(py: Python<'_>, results: Vec<ferroq_core::Result<()>>) -> Vec<Option<Py<PyAny>>> {
    results.into_iter().map(|r| r.err().map(|e| to_py(py, e).into_value(py).into_any())).collect()
}

/// The one answer of a single-item verb. A store that returns none breaks
/// the `Store` contract; that is reported, never papered over with an
/// invented status.
fn one<T>(py: Python<'_>, mut out: Vec<T>, verb: &str) -> PyResult<T> {
    out.pop().ok_or_else(|| to_py(py, Error::Storage(format!("{verb}: the store returned no answer"))))
}

impl PyStore {
    /// The open store (a `StoreUnavailableError` once closed).
    pub(crate) fn store(&self, py: Python<'_>) -> PyResult<Arc<dyn Store>> {
        self.inner
            .read()
            .map_err(|_| to_py(py, Error::Storage("store lock poisoned".into())))?
            .clone()
            .ok_or_else(|| to_py(py, Error::Unavailable(format!("store {} is closed", self.url))))
    }

    /// Every store call goes through here (polars' `enter_polars`): take
    /// the store, release the GIL for `f`, map its error.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&dyn Store) -> ferroq_core::Result<T> + Send,
    ) -> PyResult<T> {
        let store = self.store(py)?;
        py.detach(|| f(store.as_ref())).py(py)
    }

    /// A wait of up to `total` (`None`: no end) in slices of at most SLICE,
    /// each with the GIL released, Ctrl+C checked between them. The store
    /// is taken anew for every slice, so `close()` ends the wait (with
    /// `StoreUnavailableError`) within one slice and frees the store.
    fn wait<T: Send>(
        &self,
        py: Python<'_>,
        total: Option<Duration>,
        mut f: impl FnMut(&dyn Store, Duration) -> ferroq_core::Result<Option<T>> + Send,
    ) -> PyResult<Option<T>> {
        let _counted = InWait::enter(&self.waits);
        sliced(py, total, |slice| {
            // Taken without the GIL: the lock is a plain RwLock.
            let store = match self.inner.read() {
                Ok(guard) => guard.clone(),
                Err(_) => return Err(Error::Storage("store lock poisoned".into())),
            };
            let store = store.ok_or_else(|| Error::Unavailable(format!("store {} is closed", self.url)))?;
            f(store.as_ref(), slice)
        })
    }
}

/// Runs `f` in slices of at most SLICE with the GIL released, checking
/// Ctrl+C between slices, until it yields Some or `total` passes
/// (`None`: no end).
pub(crate) fn sliced<T: Send>(
    py: Python<'_>,
    total: Option<Duration>,
    mut f: impl FnMut(Duration) -> ferroq_core::Result<Option<T>> + Send,
) -> PyResult<Option<T>> {
    let deadline = total.and_then(|t| Instant::now().checked_add(t));
    let longest = if total.is_some_and(|t| t <= SLICE) || on_main_thread(py) { SLICE } else { OTHER_THREAD_SLICE };
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(longest),
            None => longest,
        };
        if let Some(v) = py.detach(|| f(slice)).py(py)? {
            return Ok(Some(v));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

#[pymethods]
impl PyStore {
    /// Opens (creating if needed) the store at `url`. With `clock` (a
    /// `ManualClock`), the store reads its time from that clock.
    #[new]
    #[pyo3(signature = (url, clock=None))]
    fn new(py: Python<'_>, url: Text, clock: Option<PyRef<'_, PyManualClock>>) -> PyResult<Self> {
        let url: String = url.0;
        let clock = clock.map(|c| c.inner.clone());
        let store = py
            .detach(|| match clock {
                Some(c) => ferroq_core::open_with_clock(&url, c),
                None => ferroq_core::open(&url),
            })
            .py(py)?;
        Ok(PyStore { inner: RwLock::new(Some(store)), url, waits: AtomicUsize::new(0) })
    }

    /// The URL the store was opened with.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// Closes the store; later calls raise `StoreUnavailableError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.write().map_err(|_| to_py(py, Error::Storage("store lock poisoned".into())))?.take();
        if let Some(store) = &taken {
            // Threads waiting on the store end their waits now and find it
            // closed, rather than holding it open until their slice ends.
            store.wake();
        }
        // Dropping the last handle may checkpoint and close files: no GIL.
        py.detach(|| drop(taken));
        Ok(())
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().map(|g| g.is_none()).unwrap_or(true)
    }

    /// The store clock's wall time in ms.
    fn now_ms(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(self.store(py)?.clock().now_ms())
    }

    /// Enqueues one task; returns (id, inserted).
    #[pyo3(signature = (queue, name, payload, *, priority=Int(0), run_at=None, max_attempts=Int(1), key=None,
        batch=None, expires_at=None, metadata=None, backoff=None, result_ttl_ms=None, requires=None,
        on_duplicate=None),
        text_signature = "($self, queue, name, payload, *, priority=0, run_at=None, max_attempts=1, key=None, \
        batch=None, expires_at=None, metadata=None, backoff=None, result_ttl_ms=None, requires=None, \
        on_duplicate=None)")]
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        py: Python<'_>,
        queue: Text,
        name: Text,
        payload: Blob,
        priority: Int<i64>,
        run_at: Option<Int<i64>>,
        max_attempts: Int<u32>,
        key: Option<Text>,
        batch: Option<Text>,
        expires_at: Option<Int<i64>>,
        metadata: Option<Text>,
        backoff: Option<Text>,
        result_ttl_ms: Option<Int<i64>>,
        requires: Option<Text>,
        on_duplicate: Option<Text>,
    ) -> PyResult<(i64, bool)> {
        let on_duplicate = parse_on_duplicate(py, on_duplicate.as_ref().map(|t| t.0.as_str()))?;
        let queue: String = queue.0;
        let name: String = name.0;
        let key: Option<String> = key.map(String::from);
        let batch: Option<String> = batch.map(String::from);
        let metadata: Option<String> = metadata.map(String::from);
        let backoff: Option<String> = backoff.map(String::from);
        let requires: Option<String> = requires.map(String::from);
        let out = self.call(py, |store| {
            let task = NewTask {
                queue,
                name,
                payload: payload.0,
                priority: priority.0,
                run_at: run_at.map(|v| v.0),
                max_attempts: max_attempts.0,
                key,
                batch,
                expires_at: expires_at.map(|v| v.0),
                metadata,
                backoff: parse_backoff(backoff.as_deref())?,
                result_ttl_ms: result_ttl_ms.map(|v| v.0),
                requires,
            };
            store.enqueue_with(&EnqueueParams { tasks: std::slice::from_ref(&task), on_duplicate })
        })?;
        let first = one(py, out, "enqueue")?;
        Ok((first.id, first.inserted))
    }

    /// Enqueues many tasks in one call (one transaction per shard). Every
    /// per-task option is either one value for all or a list with one value
    /// per payload (`metadata`: one JSON object for all). Returns (ids,
    /// inserted flags).
    #[pyo3(signature = (queue, name, payloads, *, priority=None, run_at=None,
        max_attempts=Int(1), keys=None, batch=None, expires_at=None, backoff=None, result_ttl_ms=None,
        requires=None, on_duplicate=None, metadata=None),
        text_signature = "($self, queue, name, payloads, *, priority=None, run_at=None, max_attempts=1, \
        keys=None, batch=None, expires_at=None, backoff=None, result_ttl_ms=None, requires=None, \
        on_duplicate=None, metadata=None)")]
    #[allow(clippy::too_many_arguments)]
    fn enqueue_many(
        &self,
        py: Python<'_>,
        queue: Text,
        name: OneOrMany<Text>,
        payloads: Vec<Blob>,
        priority: Option<OneOrMany<Int<i64>>>,
        run_at: Option<OneOrMany<Int<i64>>>,
        max_attempts: Int<u32>,
        keys: Option<Vec<Option<Text>>>,
        batch: Option<Text>,
        expires_at: Option<Int<i64>>,
        backoff: Option<Text>,
        result_ttl_ms: Option<Int<i64>>,
        requires: Option<Text>,
        on_duplicate: Option<Text>,
        metadata: Option<Text>,
    ) -> PyResult<(Vec<i64>, Vec<bool>)> {
        let on_duplicate = parse_on_duplicate(py, on_duplicate.as_ref().map(|t| t.0.as_str()))?;
        let queue: String = queue.0;
        let metadata: Option<String> = metadata.map(String::from);
        let name: OneOrMany<String> = name.map(String::from);
        let keys: Option<Vec<Option<String>>> = keys.map(|v| v.into_iter().map(|k| k.map(String::from)).collect());
        let batch: Option<String> = batch.map(String::from);
        let backoff: Option<String> = backoff.map(String::from);
        let requires: Option<String> = requires.map(String::from);
        let n = payloads.len();
        name.check_len(py, "name", n)?;
        if let Some(p) = &priority {
            p.check_len(py, "priority", n)?;
        }
        if let Some(r) = &run_at {
            r.check_len(py, "run_at", n)?;
        }
        if let Some(k) = &keys {
            if k.len() != n {
                return Err(invalid(py, format!("keys has {} values for {n} tasks", k.len())));
            }
        }
        let out = self.call(py, |store| {
            let backoff = parse_backoff(backoff.as_deref())?;
            let mut keys = keys.map(|k| k.into_iter());
            let tasks: Vec<NewTask> = payloads
                .into_iter()
                .enumerate()
                .map(|(i, payload)| NewTask {
                    queue: queue.clone(),
                    name: name.at(i),
                    payload: payload.0,
                    priority: priority.as_ref().map_or(0, |p| p.at(i).0),
                    run_at: run_at.as_ref().map(|r| r.at(i).0),
                    max_attempts: max_attempts.0,
                    key: keys.as_mut().and_then(|k| k.next()).flatten(),
                    batch: batch.clone(),
                    expires_at: expires_at.as_ref().map(|v| v.0),
                    metadata: metadata.clone(),
                    backoff,
                    result_ttl_ms: result_ttl_ms.as_ref().map(|v| v.0),
                    requires: requires.clone(),
                })
                .collect();
            store.enqueue_with(&EnqueueParams { tasks: &tasks, on_duplicate })
        })?;
        Ok(out.into_iter().map(|e| (e.id, e.inserted)).unzip())
    }

    /// Claims up to `limit` ready tasks of `queue` for `worker` with a lease
    /// of `lease_ms`, waiting up to `wait` seconds for work (GIL released;
    /// `inf` waits until work comes). `home=(index, count)`: the claimer is
    /// `index` of `count` and is served from its home shards first.
    /// `gather` (seconds): after waiting, once work arrives, wait this much
    /// more before claiming, so a trickle is claimed in batches.
    #[pyo3(signature = (queue, worker, limit=Int(1), lease_ms=Int(30_000), wait=0.0, resources=None, home=None, *, gather=0.0),
        text_signature = "($self, queue, worker, limit=1, lease_ms=30000, wait=0.0, resources=None, home=None, *, gather=0.0)")]
    #[allow(clippy::too_many_arguments)]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        queue: Text,
        worker: Text,
        limit: Int<u32>,
        lease_ms: Int<i64>,
        wait: f64,
        resources: Option<Text>,
        home: Option<(Int<u32>, Int<u32>)>,
        gather: f64,
    ) -> PyResult<Bound<'py, PyList>> {
        let home = home.map(|(i, n)| (i.0, n.0));
        // At most a second (the scheduler checks its option before this).
        let gather = seconds(py, gather, "gather")?.map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1)));
        let queue: String = queue.0;
        let worker: String = worker.0;
        let resources: Option<String> = resources.map(String::from);
        let wait = seconds(py, wait, "wait")?;
        let p = ClaimParams { queue, worker, limit: limit.0, lease_ms: lease_ms.0, resources, home };
        let tasks = if wait == Some(Duration::ZERO) {
            self.call(py, |store| store.claim(&p))?
        } else {
            // A wake (a scheduler stopping) ends the wait, empty-handed.
            let mut woken: Option<u64> = None;
            self.wait(py, wait, |store, slice| {
                let before = *woken.get_or_insert_with(|| store.wake_count());
                let got = store.claim_gathering(&p, slice, gather)?;
                let stop = got.is_empty() && store.wake_count() != before;
                Ok(if got.is_empty() && !stop { None } else { Some(got) })
            })?
            .unwrap_or_default()
        };
        tasks_to_py(py, tasks)
    }

    /// Extends leases; returns [(id, held, cancel_requested)]. With
    /// `force`, extends them whoever holds them (an operator's override).
    #[pyo3(signature = (ids, worker, lease_ms, *, force=false))]
    fn heartbeat(
        &self,
        py: Python<'_>,
        ids: Vec<Int<i64>>,
        worker: Text,
        lease_ms: Int<i64>,
        force: bool,
    ) -> PyResult<Vec<(i64, bool, bool)>> {
        let ids: Vec<i64> = ids.into_iter().map(|i| i.0).collect();
        let worker: String = worker.0;
        let p = HeartbeatParams { ids, worker, lease_ms: lease_ms.0, force };
        let out = self.call(py, |store| store.heartbeat(&p))?;
        Ok(out.into_iter().map(|h| (h.id, h.held, h.cancel_requested)).collect())
    }

    /// Records progress (0..=1) of a running task (held by `worker`, or by
    /// anyone with `force`).
    #[pyo3(signature = (id, worker, progress, *, force=false))]
    fn progress(&self, py: Python<'_>, id: Int<i64>, worker: Text, progress: f64, force: bool) -> PyResult<()> {
        let id: i64 = id.0;
        let worker: String = worker.0;
        let p = [ProgressParams { id, worker, progress, force }];
        let out = self.call(py, |store| store.progress(&p))?;
        one(py, out, "progress")?.py(py)
    }

    /// Finishes a running task with its serialised result (held by
    /// `worker`, or by anyone with `force`). A task whose cancel was asked
    /// ends 'cancelled', the result kept.
    #[pyo3(signature = (id, worker, result, *, force=false))]
    fn complete(&self, py: Python<'_>, id: Int<i64>, worker: Text, result: Blob, force: bool) -> PyResult<()> {
        let id: i64 = id.0;
        let worker: String = worker.0;
        let p = [CompleteParams { id, worker, result: result.0, force }];
        let out = self.call(py, |store| store.complete(&p))?;
        one(py, out, "complete")?.py(py)
    }

    /// Finishes many running tasks in one call; returns one exception (or
    /// None) per task.
    #[pyo3(signature = (ids, worker, results, *, force=false))]
    fn complete_many(
        &self,
        py: Python<'_>,
        ids: Vec<Int<i64>>,
        worker: Text,
        results: Vec<Blob>,
        force: bool,
    ) -> PyResult<Vec<Option<Py<PyAny>>>> {
        let ids: Vec<i64> = ids.into_iter().map(|i| i.0).collect();
        let worker: String = worker.0;
        if ids.len() != results.len() {
            return Err(invalid(py, format!("{} ids but {} results", ids.len(), results.len())));
        }
        let p: Vec<CompleteParams> = ids
            .into_iter()
            .zip(results)
            .map(|(id, result)| CompleteParams { id, worker: worker.clone(), result: result.0, force })
            .collect();
        let out = self.call(py, |store| store.complete(&p))?;
        Ok(item_errors(py, out))
    }

    /// Records a failed attempt. `retry` is 'backoff' (the task's policy),
    /// 'never', or a delay in ms. Returns the new status ('queued',
    /// 'failed', or 'cancelled' when its cancel was asked).
    #[pyo3(signature = (id, worker, error, retry=None, *, force=false))]
    fn fail(
        &self,
        py: Python<'_>,
        id: Int<i64>,
        worker: Text,
        error: Text,
        retry: Option<&Bound<'_, PyAny>>,
        force: bool,
    ) -> PyResult<&'static str> {
        let id: i64 = id.0;
        let worker: String = worker.0;
        let error: String = error.0;
        let p = [FailParams { id, worker, error, retry: parse_retry(py, retry)?, force }];
        let out = self.call(py, |store| store.fail(&p))?;
        Ok(one(py, out, "fail")?.py(py)?.as_str())
    }

    /// Cancels a task: a queued one at once ('cancelled'), a running one is
    /// flagged ('running'). With `worker`, the holder acknowledges a
    /// cancellation of its running task.
    #[pyo3(signature = (id, worker=None))]
    fn cancel(&self, py: Python<'_>, id: Int<i64>, worker: Option<Text>) -> PyResult<&'static str> {
        let id: i64 = id.0;
        let worker: Option<String> = worker.map(String::from);
        let p = [CancelParams { id, worker }];
        let out = self.call(py, |store| store.cancel(&p))?;
        Ok(one(py, out, "cancel")?.py(py)?.as_str())
    }

    /// Gives claimed tasks back without counting the attempt (a task whose
    /// cancel was asked ends 'cancelled'); returns one exception (or None)
    /// per task.
    #[pyo3(signature = (ids, worker, *, force=false))]
    fn release(
        &self,
        py: Python<'_>,
        ids: Vec<Int<i64>>,
        worker: Text,
        force: bool,
    ) -> PyResult<Vec<Option<Py<PyAny>>>> {
        let ids: Vec<i64> = ids.into_iter().map(|i| i.0).collect();
        let worker: String = worker.0;
        let p: Vec<ReleaseParams> =
            ids.into_iter().map(|id| ReleaseParams { id, worker: worker.clone(), force }).collect();
        let out = self.call(py, |store| store.release(&p))?;
        Ok(item_errors(py, out))
    }

    /// Requeues a failed, cancelled or expired task with fresh attempts.
    fn retry(&self, py: Python<'_>, id: Int<i64>) -> PyResult<()> {
        let id: i64 = id.0;
        let out = self.call(py, |store| store.retry(&[RetryParams { id }]))?;
        one(py, out, "retry")?.py(py)
    }

    /// Requeues many failed, cancelled or expired tasks with fresh
    /// attempts in one call; one entry per id: None when it went back, else
    /// the error that task got (each move is guarded on its own).
    fn retry_many(&self, py: Python<'_>, ids: Vec<Int<i64>>) -> PyResult<Vec<Option<Py<PyAny>>>> {
        let p: Vec<RetryParams> = ids.into_iter().map(|id| RetryParams { id: id.0 }).collect();
        let out = self.call(py, |store| store.retry(&p))?;
        Ok(item_errors(py, out))
    }

    /// Deletes a finished task now, whatever its retention (its key is
    /// freed). An unfinished task is an invalid transition.
    fn delete(&self, py: Python<'_>, id: Int<i64>) -> PyResult<()> {
        let id: i64 = id.0;
        let out = self.call(py, |store| store.delete(&[id]))?;
        one(py, out, "delete")?.py(py)
    }

    /// Hands a chosen queued task to `worker` (marks it running, whatever
    /// its run_at) and returns it. On a serial queue, the task running
    /// there goes back to 'queued' first (its attempt not counted).
    #[pyo3(signature = (id, worker, *, lease_ms=Int(30_000)), text_signature = "($self, id, worker, *, lease_ms=30000)")]
    fn start(&self, py: Python<'_>, id: Int<i64>, worker: Text, lease_ms: Int<i64>) -> PyResult<PyTask> {
        let p = [StartParams { id: id.0, worker: worker.0, lease_ms: lease_ms.0 }];
        let out = self.call(py, |store| store.start(&p))?;
        Ok(PyTask::from(one(py, out, "start")?.py(py)?))
    }

    /// The active task of `queue`: the one running there, else the next
    /// ready one handed to `worker`, else None. Concurrent callers never
    /// get two tasks.
    #[pyo3(signature = (queue, worker, *, lease_ms=Int(30_000)), text_signature = "($self, queue, worker, *, lease_ms=30000)")]
    fn active(&self, py: Python<'_>, queue: Text, worker: Text, lease_ms: Int<i64>) -> PyResult<Option<PyTask>> {
        let p = ActiveParams { queue: queue.0, worker: worker.0, lease_ms: lease_ms.0 };
        Ok(self.call(py, |store| store.active(&p))?.map(PyTask::from))
    }

    /// Puts a finished task (done, failed, cancelled or expired) back in
    /// the queue with fresh attempts.
    fn requeue(&self, py: Python<'_>, id: Int<i64>) -> PyResult<()> {
        let p = [RequeueParams { id: id.0 }];
        let out = self.call(py, |store| store.requeue(&p))?;
        one(py, out, "requeue")?.py(py)
    }

    /// Changes the priority (any 64-bit integer) of a queued task.
    fn set_priority(&self, py: Python<'_>, id: Int<i64>, priority: Int<i64>) -> PyResult<()> {
        let p = [SetPriorityParams { id: id.0, priority: priority.0 }];
        let out = self.call(py, |store| store.set_priority(&p))?;
        one(py, out, "set_priority")?.py(py)
    }

    /// Changes when a queued task may run (ms since the epoch).
    fn set_run_at(&self, py: Python<'_>, id: Int<i64>, run_at: Int<i64>) -> PyResult<()> {
        let p = [SetRunAtParams { id: id.0, run_at: run_at.0 }];
        let out = self.call(py, |store| store.set_run_at(&p))?;
        one(py, out, "set_run_at")?.py(py)
    }

    /// Sets (None removes) a task's metadata, JSON text, in any status.
    fn set_metadata(&self, py: Python<'_>, id: Int<i64>, metadata: Option<Text>) -> PyResult<()> {
        let p = [SetMetadataParams { id: id.0, metadata: metadata.map(String::from) }];
        let out = self.call(py, |store| store.set_metadata(&p))?;
        one(py, out, "set_metadata")?.py(py)
    }

    /// Sets a queue's options (its capacity is kept): `serial` (at most one
    /// running task, store-wide), `answer_timeout_ms` (the lease of what it
    /// hands out), `on_timeout` ('requeue' or 'expire'), `retention_ms`
    /// (how long its finished tasks are kept), `aging_ms` (a waiting task
    /// gains one priority level per this many ms), `dead_letter` (the queue
    /// its failed tasks are filed in), `dead_retention_ms` (how long its
    /// failed tasks are kept). Whether it is paused is kept (`set_paused`).
    #[pyo3(signature = (
        queue, *, serial=false, answer_timeout_ms=None, on_timeout=None, retention_ms=None,
        aging_ms=None, dead_letter=None, dead_retention_ms=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn set_queue_options(
        &self,
        py: Python<'_>,
        queue: Text,
        serial: bool,
        answer_timeout_ms: Option<Int<i64>>,
        on_timeout: Option<Text>,
        retention_ms: Option<Int<i64>>,
        aging_ms: Option<Int<i64>>,
        dead_letter: Option<Text>,
        dead_retention_ms: Option<Int<i64>>,
    ) -> PyResult<()> {
        let on_timeout = on_timeout.map(|t| OnTimeout::parse(&t.0)).transpose().py(py)?.unwrap_or_default();
        let o = QueueOptions {
            queue: queue.0,
            serial,
            answer_timeout_ms: answer_timeout_ms.map(|v| v.0),
            on_timeout,
            retention_ms: retention_ms.map(|v| v.0),
            paused: false,
            aging_ms: aging_ms.map(|v| v.0),
            dead_letter: dead_letter.map(String::from),
            dead_retention_ms: dead_retention_ms.map(|v| v.0),
        };
        self.call(py, |store| store.set_queue_options(&o))
    }

    /// Pauses (`paused=True`) or resumes a queue, store-wide: a paused
    /// queue takes sends but hands nothing out; its other options are kept.
    fn set_paused(&self, py: Python<'_>, queue: Text, paused: bool) -> PyResult<()> {
        let p = PauseParams { queue: queue.0, paused };
        self.call(py, |store| store.set_paused(&p))
    }

    /// A queue's options: (queue, serial, answer_timeout_ms, on_timeout,
    /// retention_ms, paused, aging_ms, dead_letter, dead_retention_ms).
    fn queue_options(&self, py: Python<'_>, queue: Text) -> PyResult<OptionsRow> {
        let queue: String = queue.0;
        Ok(options_row(self.call(py, |store| store.queue_options(&queue))?))
    }

    /// The options of every queue that has some, by queue name.
    fn all_queue_options(&self, py: Python<'_>) -> PyResult<Vec<OptionsRow>> {
        Ok(self.call(py, |store| store.all_queue_options())?.into_iter().map(options_row).collect())
    }

    /// Recovers running tasks whose lease expired (or all of `worker`'s);
    /// returns [(id, new status)].
    #[pyo3(signature = (worker=None))]
    fn recover(&self, py: Python<'_>, worker: Option<Text>) -> PyResult<Vec<(i64, &'static str)>> {
        let worker: Option<String> = worker.map(String::from);
        let p = RecoverParams { worker };
        let out = self.call(py, |store| store.recover(&p))?;
        Ok(out.into_iter().map(|(id, s)| (id, s.as_str())).collect())
    }

    /// Enqueues the steps of a flow in one call: each step is (queue,
    /// name, payload, priority, max_attempts, key, backoff, metadata,
    /// after), where `after` lists the step's parents: a task id (>= 0),
    /// or `-(i + 1)` for step `i` of this call (an earlier one). A step
    /// with unfinished parents is 'waiting' until they are all done.
    /// Returns (ids, inserted flags).
    #[allow(clippy::type_complexity)]
    fn enqueue_flow(
        &self,
        py: Python<'_>,
        steps: Vec<(Text, Text, Blob, Int<i64>, Int<u32>, Option<Text>, Option<Text>, Option<Text>, Vec<Int<i64>>)>,
    ) -> PyResult<(Vec<i64>, Vec<bool>)> {
        let mut plain = Vec::with_capacity(steps.len());
        for (queue, name, payload, priority, max_attempts, key, backoff, metadata, after) in steps {
            let after: Vec<Dep> = after
                .into_iter()
                .map(|d| if d.0 >= 0 { Dep::Task(d.0) } else { Dep::Earlier((-(d.0 + 1)) as usize) })
                .collect();
            plain.push((
                queue.0,
                name.0,
                payload.0,
                priority.0,
                max_attempts.0,
                key.map(String::from),
                backoff.map(String::from),
                metadata.map(String::from),
                after,
            ));
        }
        let out = self.call(py, |store| {
            let mut tasks = Vec::with_capacity(plain.len());
            for (queue, name, payload, priority, max_attempts, key, backoff, metadata, after) in plain {
                let task = NewTask {
                    priority,
                    max_attempts,
                    key,
                    metadata,
                    backoff: parse_backoff(backoff.as_deref())?,
                    ..NewTask::new(queue, name, payload)
                };
                tasks.push(FlowTask { task, after });
            }
            store.enqueue_flow(&tasks)
        })?;
        Ok(out.into_iter().map(|e| (e.id, e.inserted)).unzip())
    }

    /// The parents of each task (in the order the flow gave them; empty
    /// for a task without).
    fn dependencies(&self, py: Python<'_>, ids: Vec<Int<i64>>) -> PyResult<Vec<Vec<i64>>> {
        let ids: Vec<i64> = ids.into_iter().map(|i| i.0).collect();
        self.call(py, |store| store.dependencies(&ids))
    }

    /// Moves queued tasks past their deadline to 'expired'; returns their ids.
    fn expire(&self, py: Python<'_>) -> PyResult<Vec<i64>> {
        self.call(py, |store| store.expire())
    }

    /// One task by id, or None.
    fn get(&self, py: Python<'_>, id: Int<i64>) -> PyResult<Option<PyTask>> {
        let id: i64 = id.0;
        let out = self.call(py, |store| store.get(&[id]))?;
        Ok(one(py, out, "get")?.map(PyTask::from))
    }

    /// Tasks by id (None where missing).
    fn get_many(&self, py: Python<'_>, ids: Vec<Int<i64>>) -> PyResult<Vec<Option<PyTask>>> {
        let ids: Vec<i64> = ids.into_iter().map(|i| i.0).collect();
        let out = self.call(py, |store| store.get(&ids))?;
        Ok(out.into_iter().map(|t| t.map(PyTask::from)).collect())
    }

    /// One task by key within a queue, or None.
    fn get_by_key(&self, py: Python<'_>, queue: Text, key: Text) -> PyResult<Option<PyTask>> {
        let queue: String = queue.0;
        let key: String = key.0;
        let p = GetByKeyParams { queue, keys: vec![key] };
        let out = self.call(py, |store| store.get_by_key(&p))?;
        Ok(one(py, out, "get_by_key")?.map(PyTask::from))
    }

    /// Waits up to `timeout` seconds (`inf`: until it finishes) for a task
    /// to finish; returns it as last seen.
    fn wait_finished(&self, py: Python<'_>, id: Int<i64>, timeout: f64) -> PyResult<PyTask> {
        let id: i64 = id.0;
        let total = seconds(py, timeout, "timeout")?;
        let mut last = None;
        let done = self.wait(py, total, |store, slice| {
            let t = store.wait_finished(id, slice)?;
            if t.status.is_finished() {
                return Ok(Some(t));
            }
            last = Some(t);
            Ok(None)
        })?;
        match done.or(last) {
            Some(t) => Ok(PyTask::from(t)),
            None => Err(to_py(py, Error::NotFound(format!("task {id}")))),
        }
    }

    /// A page of tasks in id order.
    #[pyo3(signature = (*, queue=None, status=None, batch=None, after_id=None, limit=Int(100), name=None, key=None),
        text_signature = "($self, *, queue=None, status=None, batch=None, after_id=None, limit=100, name=None, key=None)")]
    #[allow(clippy::too_many_arguments)]
    fn list_tasks<'py>(
        &self,
        py: Python<'py>,
        queue: Option<Text>,
        status: Option<Text>,
        batch: Option<Text>,
        after_id: Option<Int<i64>>,
        limit: Int<u32>,
        name: Option<Text>,
        key: Option<Text>,
    ) -> PyResult<Bound<'py, PyList>> {
        let name: Option<String> = name.map(String::from);
        let key: Option<String> = key.map(String::from);
        let after_id: Option<i64> = after_id.map(|i| i.0);
        let queue: Option<String> = queue.map(String::from);
        let status: Option<String> = status.map(String::from);
        let batch: Option<String> = batch.map(String::from);
        let status = status.as_deref().map(Status::parse).transpose().py(py)?;
        let p = ListParams { queue, status, batch, name, key, after_id, limit: limit.0 };
        let out = self.call(py, |store| store.list(&p))?;
        tasks_to_py(py, out)
    }

    /// The outcomes of a batch (and/or queue) as columns, in id order: a dict
    /// of lists `id`, `key`, `status`, `attempts`, `error`, `result` (the
    /// JSON text of JSON results, tag byte removed) and `result_raw` (results
    /// in any other form, tag included). `statuses` keeps only those (None:
    /// all). Pages through the store with the GIL released, checking Ctrl+C
    /// between pages.
    #[pyo3(signature = (*, batch=None, queue=None, statuses=None))]
    fn results_columns<'py>(
        &self,
        py: Python<'py>,
        batch: Option<Text>,
        queue: Option<Text>,
        statuses: Option<Vec<Text>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batch: Option<String> = batch.map(String::from);
        let queue: Option<String> = queue.map(String::from);
        let statuses: Option<Vec<String>> = statuses.map(|v| v.into_iter().map(String::from).collect());
        let statuses = statuses
            .unwrap_or_default()
            .iter()
            .map(|s| Status::parse(s))
            .collect::<ferroq_core::Result<Vec<_>>>()
            .py(py)?;
        let q = ResultQuery { batch, queue, statuses };
        // Six distinct status strings shared by every row.
        let names: Vec<(Status, Bound<'py, PyString>)> =
            Status::ALL.iter().map(|s| (*s, PyString::intern(py, s.as_str()))).collect();
        let fields = ["id", "key", "status", "attempts", "error", "result", "result_raw"];
        let lists: Vec<Bound<'py, PyList>> = fields.iter().map(|_| PyList::empty(py)).collect();
        let mut at: Option<i64> = None;
        let mut limit = first_page();
        loop {
            // Each page goes into the Python lists before the next is read,
            // so the rows are never held twice.
            let mut page = ResultColumns::default();
            let next = self.call(py, |store| read_page(store, &q, at, limit, &mut page))?;
            append_page(py, &lists, &page, &names)?;
            let Some((last, size)) = next else { break };
            at = Some(last);
            limit = size;
            py.check_signals()?;
        }
        let out = PyDict::new(py);
        for (name, list) in fields.iter().zip(lists) {
            out.set_item(name, list)?;
        }
        Ok(out)
    }

    /// Counts per queue and status: [(queue, status, count)].
    fn counts(&self, py: Python<'_>) -> PyResult<Vec<(String, &'static str, u64)>> {
        let out = self.call(py, |store| store.counts())?;
        Ok(out.into_iter().map(|c| (c.queue, c.status.as_str(), c.count)).collect())
    }

    /// Queued + running tasks in a queue.
    fn unfinished(&self, py: Python<'_>, queue: Text) -> PyResult<u64> {
        let queue: String = queue.0;
        self.call(py, |store| store.unfinished(&queue))
    }

    /// Deletes finished tasks past retention, and those finished before
    /// `finished_before` (ms) when given; returns how many.
    #[pyo3(signature = (finished_before=None))]
    fn purge(&self, py: Python<'_>, finished_before: Option<Int<i64>>) -> PyResult<u64> {
        let p = PurgeParams { finished_before: finished_before.map(|v| v.0) };
        self.call(py, |store| store.purge(&p))
    }

    /// Sets listen data; returns the change's version.
    fn listen_set(&self, py: Python<'_>, key: Text, value: Blob) -> PyResult<i64> {
        let key: String = key.0;
        let p = ListenSetParams { key, value: value.0 };
        self.call(py, |store| store.listen_set(&p))
    }

    /// Listen changes after `since`: [(version, key, value, at_ms)].
    #[pyo3(signature = (since, limit=Int(1000)), text_signature = "($self, since, limit=1000)")]
    fn listen_changes<'py>(&self, py: Python<'py>, since: Int<i64>, limit: Int<u32>) -> PyResult<Vec<ListenRow<'py>>> {
        let since: i64 = since.0;
        let out = self.call(py, |store| store.listen_changes(&ListenChangesParams { since, limit: limit.0 }))?;
        Ok(out.into_iter().map(|c| (c.version, c.key, PyBytes::new(py, &c.value), c.at)).collect())
    }

    /// The latest (version, value) of a listen key, or None.
    fn listen_get<'py>(&self, py: Python<'py>, key: Text) -> PyResult<Option<(i64, Bound<'py, PyBytes>)>> {
        let key: String = key.0;
        let out = self.call(py, |store| store.listen_get(&key))?;
        Ok(out.map(|c| (c.version, PyBytes::new(py, &c.value))))
    }

    /// The newest listen version.
    fn listen_head(&self, py: Python<'_>) -> PyResult<i64> {
        self.call(py, |store| store.listen_head())
    }

    /// Every listen key's latest change: [(version, key, value, at_ms)], by key.
    fn listen_keys<'py>(&self, py: Python<'py>) -> PyResult<Vec<ListenRow<'py>>> {
        let out = self.call(py, |store| store.listen_keys())?;
        Ok(out.into_iter().map(|c| (c.version, c.key, PyBytes::new(py, &c.value), c.at)).collect())
    }

    /// Stores the last listen version a consumer handled.
    fn listen_cursor_set(&self, py: Python<'_>, consumer: Text, version: Int<i64>) -> PyResult<()> {
        let consumer: String = consumer.0;
        let version: i64 = version.0;
        self.call(py, |store| store.listen_cursor_set(&consumer, version))
    }

    /// The last listen version a consumer stored, or None.
    fn listen_cursor_get(&self, py: Python<'_>, consumer: Text) -> PyResult<Option<i64>> {
        let consumer: String = consumer.0;
        self.call(py, |store| store.listen_cursor_get(&consumer))
    }

    /// Events after `after` (a cursor; None = the oldest kept), at most
    /// `limit`, of `queue` only when given: (events, next cursor). Each
    /// event is (cursor, at, task_id, queue, name, kind, from_status,
    /// to_status, worker, error_type).
    #[pyo3(signature = (after=None, limit=Int(1000), queue=None), text_signature = "($self, after=None, limit=1000, queue=None)")]
    fn events(
        &self,
        py: Python<'_>,
        after: Option<Text>,
        limit: Int<u32>,
        queue: Option<Text>,
    ) -> PyResult<(Vec<EventTuple>, String)> {
        let p = ferroq_core::store::EventsParams {
            after: after.map(String::from),
            limit: limit.0,
            queue: queue.map(String::from),
        };
        let page = self.call(py, |store| store.events(&p))?;
        Ok((page.events.into_iter().map(event_tuple).collect(), page.cursor))
    }

    /// The cursor after the newest event (follow from now on).
    fn events_head(&self, py: Python<'_>) -> PyResult<String> {
        self.call(py, |store| store.events_head())
    }

    /// Stores a consumer's event cursor.
    fn event_cursor_set(&self, py: Python<'_>, consumer: Text, cursor: Text) -> PyResult<()> {
        let consumer: String = consumer.0;
        let cursor: String = cursor.0;
        self.call(py, |store| store.event_cursor_set(&consumer, &cursor))
    }

    /// A consumer's stored event cursor, or None.
    fn event_cursor_get(&self, py: Python<'_>, consumer: Text) -> PyResult<Option<String>> {
        let consumer: String = consumer.0;
        self.call(py, |store| store.event_cursor_get(&consumer))
    }

    /// Records that the callbacks of finished tasks ran (a `delivered`
    /// event each); one entry per id: None, or the error for that id.
    fn ack_callbacks(&self, py: Python<'_>, ids: Vec<Int<i64>>) -> PyResult<Vec<Option<Py<PyAny>>>> {
        let ids: Vec<i64> = ids.into_iter().map(|i| i.0).collect();
        let out = self.call(py, |store| store.ack_callbacks(&ids))?;
        Ok(item_errors(py, out))
    }

    /// Records (or refreshes) a worker: (id, host, pid, queues).
    fn register_worker(&self, py: Python<'_>, id: Text, host: Text, pid: Int<u32>, queues: Vec<Text>) -> PyResult<()> {
        let pid: u32 = pid.0;
        let id: String = id.0;
        let host: String = host.0;
        let queues: Vec<String> = queues.into_iter().map(String::from).collect();
        let w = WorkerInfo { id, host, pid, started_at: 0, heartbeat_at: 0, queues };
        self.call(py, |store| store.register_worker(&w))
    }

    /// Recorded workers: [(id, host, pid, started_at, heartbeat_at, queues)].
    fn workers(&self, py: Python<'_>) -> PyResult<Vec<WorkerRow>> {
        let out = self.call(py, |store| store.workers())?;
        Ok(out.into_iter().map(|w| (w.id, w.host, w.pid, w.started_at, w.heartbeat_at, w.queues)).collect())
    }

    /// Forgets a worker; true if it was recorded.
    fn remove_worker(&self, py: Python<'_>, id: Text) -> PyResult<bool> {
        let id: String = id.0;
        self.call(py, |store| store.remove_worker(&id))
    }

    /// Sets (None removes) a queue's maximum of unfinished tasks.
    #[pyo3(signature = (queue, capacity=None))]
    fn set_capacity(&self, py: Python<'_>, queue: Text, capacity: Option<Int<u64>>) -> PyResult<()> {
        let queue: String = queue.0;
        let p = CapacityParams { queue, capacity: capacity.map(|c| c.0) };
        self.call(py, |store| store.set_capacity(&p))
    }

    /// A queue's capacity, or None.
    fn capacity(&self, py: Python<'_>, queue: Text) -> PyResult<Option<u64>> {
        let queue: String = queue.0;
        self.call(py, |store| store.capacity(&queue))
    }

    /// Sets a store-wide limit on a task function (both None removes it).
    #[pyo3(signature = (name, max_running=None, rate_per_s=None, burst=None))]
    fn set_function_limit(
        &self,
        py: Python<'_>,
        name: Text,
        max_running: Option<Int<u32>>,
        rate_per_s: Option<f64>,
        burst: Option<f64>,
    ) -> PyResult<()> {
        let name: String = name.0;
        let l = FunctionLimit { name, max_running: max_running.map(|m| m.0), rate_per_s, burst };
        self.call(py, |store| store.set_function_limit(&l))
    }

    /// Function limits: [(name, max_running, rate_per_s, burst)].
    fn function_limits(&self, py: Python<'_>) -> PyResult<Vec<LimitRow>> {
        let out = self.call(py, |store| store.function_limits())?;
        Ok(out.into_iter().map(|l| (l.name, l.max_running, l.rate_per_s, l.burst)).collect())
    }

    /// Copies the store, while it is in use, into `path` (a new or empty
    /// directory): a store of the same shard count holding every task
    /// committed before the call (SQLite's online backup, one shard file at
    /// a time). A PostgreSQL store raises `InvalidArgumentError`: back it up
    /// with `pg_dump`.
    fn backup(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let p = BackupParams { dest: path };
        self.call(py, |store| store.backup(&p))
    }

    /// Checks the store: `PRAGMA integrity_check` and the identity of each
    /// SQLite shard, every stored checksum, and whether a shard met damage.
    /// Returns `[(path, ok, messages)]`, one row per shard.
    fn check(&self, py: Python<'_>) -> PyResult<Vec<(String, bool, Vec<String>)>> {
        let out = self.call(py, |store| store.check())?;
        Ok(out.into_iter().map(|c| (c.path, c.ok, c.messages)).collect())
    }

    /// A value that changes whenever any process commits to the store.
    fn change_token(&self, py: Python<'_>) -> PyResult<u64> {
        self.call(py, |store| store.change_token())
    }

    /// Wakes every thread of this process waiting on this store, as a
    /// commit would, writing nothing (a loop told to stop sees it at once).
    fn wake(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |store| {
            store.wake();
            Ok(())
        })
    }

    /// Waits up to `timeout` seconds (`inf`: until it does) for the change
    /// token to move; true if it did.
    fn wait_for_change(&self, py: Python<'_>, token: Int<u64>, timeout: f64) -> PyResult<bool> {
        let token: u64 = token.0;
        let total = seconds(py, timeout, "timeout")?;
        let changed = self.wait(py, total, |store, slice| Ok(store.wait_for_change(token, slice)?.then_some(())))?;
        Ok(changed.is_some())
    }

    /// Waits up to `timeout` seconds (GIL released) for listen data newer
    /// than version `after`; returns the newest version (not above `after`
    /// when nothing newer came). `wake()` ends the wait.
    fn wait_listen(&self, py: Python<'_>, after: Int<i64>, timeout: f64) -> PyResult<i64> {
        let after: i64 = after.0;
        let total = seconds(py, timeout, "timeout")?;
        let mut woken: Option<u64> = None;
        let got = self.wait(py, total, |store, slice| {
            let before = *woken.get_or_insert_with(|| store.wake_count());
            let head = store.wait_listen(after, slice)?;
            Ok((head > after || store.wake_count() != before).then_some(head))
        })?;
        match got {
            Some(head) => Ok(head),
            None => self.call(py, |store| store.listen_head()),
        }
    }

    /// How many threads are inside a wait on this store right now
    /// (`claim(wait=...)`, `wait_finished`, `wait_for_change`).
    #[getter]
    fn waiting(&self) -> usize {
        self.waits.load(Ordering::SeqCst)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.store(py) {
            Ok(s) => format!("<Store {}>", s.describe()),
            Err(_) => format!("<Store {} (closed)>", self.url),
        }
    }
}

/// The delay in ms before retry `attempt` under a backoff policy, and the
/// policy's stored text form.
#[pyfunction]
#[pyo3(signature = (strategy, base_ms, multiplier, max_ms, jitter, attempt))]
pub fn backoff_delay_ms(
    py: Python<'_>,
    strategy: &str,
    base_ms: Int<i64>,
    multiplier: f64,
    max_ms: Int<i64>,
    jitter: f64,
    attempt: Int<u32>,
) -> PyResult<(i64, String)> {
    let strategy: BackoffStrategy = strategy.parse().py(py)?;
    let b = Backoff::new(strategy, base_ms.0, multiplier, max_ms.0, jitter).py(py)?;
    Ok((b.delay_ms(attempt.0), b.encode()))
}
