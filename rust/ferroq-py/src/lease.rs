//! `LeaseKeeper` for Python: heartbeats that do not need the GIL.
//!
//! A task that holds the GIL (a long C call) past its lease would stop a
//! Python heartbeat thread, the lease would expire, and another worker
//! would run the task a second time while it still runs here. The keeper
//! renews leases from a Rust thread that never takes the GIL; Python only
//! tells it which tasks to keep and reads what it saw.

use crate::errors::{invalid, to_py, Int, IntoPyResult, Text};
use crate::store::PyStore;
use ferroq_core::store::HeartbeatParams;
use ferroq_core::{Error, Store};
use pyo3::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Store errors kept for `errors()`; older ones are dropped first.
const MAX_ERRORS: usize = 100;

/// What the keeper thread and Python share.
struct Shared {
    worker: String,
    lease_ms: i64,
    interval: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Tasks whose leases are renewed, each with the generation of its
    /// last `add` (a task claimed again is a new generation).
    ids: BTreeMap<i64, u64>,
    /// The last generation handed out.
    generation: u64,
    /// Kept tasks someone asked to cancel.
    cancel: BTreeSet<i64>,
    /// Tasks whose lease was found lost (no longer renewed).
    lost: BTreeSet<i64>,
    /// Store errors not yet read.
    errors: Vec<String>,
    /// Set by `close()` and on drop.
    stop: bool,
}

impl Shared {
    /// The state; a panic elsewhere while it was held leaves it usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stop(&self) {
        self.state().stop = true;
        self.wake.notify_all();
    }

    /// The keeper thread: one heartbeat of every kept task per interval,
    /// until stopped or the store is gone. Store errors are recorded and
    /// the next beat tries again.
    fn run(&self, store: &Weak<dyn Store>) {
        let mut next = Instant::now() + self.interval;
        loop {
            {
                let mut st = self.state();
                while !st.stop && Instant::now() < next {
                    let left = next.saturating_duration_since(Instant::now());
                    st = self.wake.wait_timeout(st, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
                }
                if st.stop {
                    return;
                }
            }
            next = Instant::now() + self.interval;
            let snapshot: Vec<(i64, u64)> = self.state().ids.iter().map(|(id, g)| (*id, *g)).collect();
            // Held only for the call: closing the store closes it (and
            // stops the keeper, kept tasks or not).
            let Some(store) = store.upgrade() else {
                let mut st = self.state();
                st.errors.push(Error::Unavailable("the store was closed; the keeper stopped".into()).to_string());
                st.stop = true;
                return;
            };
            if snapshot.is_empty() {
                continue;
            }
            let ids = snapshot.iter().map(|(id, _)| *id).collect();
            let p = HeartbeatParams { ids, worker: self.worker.clone(), lease_ms: self.lease_ms, force: false };
            let out = store.heartbeat(&p);
            drop(store);
            let mut st = self.state();
            match out {
                Ok(beats) => {
                    for b in beats {
                        // Removed, or removed and added again (claimed anew),
                        // while the beat was on its way: what it saw is of an
                        // earlier attempt, not ours to report.
                        let then = snapshot.iter().find(|(id, _)| *id == b.id).map(|(_, g)| *g);
                        if st.ids.get(&b.id).copied() != then {
                            continue;
                        }
                        if !b.held {
                            st.ids.remove(&b.id);
                            st.cancel.remove(&b.id);
                            st.lost.insert(b.id);
                        } else if b.cancel_requested {
                            st.cancel.insert(b.id);
                        }
                    }
                }
                Err(e) => {
                    if st.errors.len() >= MAX_ERRORS {
                        st.errors.remove(0);
                    }
                    st.errors.push(e.to_string());
                }
            }
        }
    }
}

/// Renews the leases of a set of tasks from a thread of its own, without
/// the GIL: `LeaseKeeper(store, worker, lease_ms, interval_s)` extends each
/// kept task's lease to `lease_ms` from now every `interval_s` seconds.
/// Tasks whose lease was lost stop being renewed and show in `lost()`;
/// tasks someone asked to cancel show in `cancel_requested()`; store errors
/// do not stop it (see `errors()`). `close()` (or dropping it) stops the
/// thread; closing the store stops it too.
#[pyclass(name = "LeaseKeeper", module = "ferroq._core", frozen)]
pub struct PyLeaseKeeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn sorted(set: &BTreeSet<i64>) -> Vec<i64> {
    set.iter().copied().collect()
}

#[pymethods]
impl PyLeaseKeeper {
    #[new]
    fn new(py: Python<'_>, store: &PyStore, worker: Text, lease_ms: Int<i64>, interval_s: f64) -> PyResult<Self> {
        let worker = worker.0;
        if !(interval_s.is_finite() && interval_s >= 0.001) {
            return Err(invalid(py, format!("interval_s must be a number of seconds >= 0.001, got {interval_s}")));
        }
        let interval = Duration::try_from_secs_f64(interval_s)
            .map_err(|e| invalid(py, format!("interval_s {interval_s}: {e}")))?;
        let handle = store.store(py)?;
        // An empty beat checks the lease length (and the worker) now
        // rather than in the thread, where it could only be recorded.
        let check = HeartbeatParams { ids: Vec::new(), worker: worker.clone(), lease_ms: lease_ms.0, force: false };
        py.detach(|| handle.heartbeat(&check)).py(py)?;
        let weak = Arc::downgrade(&handle);
        drop(handle);
        let shared = Arc::new(Shared {
            worker,
            lease_ms: lease_ms.0,
            interval,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let mine = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ferroq-lease-keeper".into())
            .spawn(move || mine.run(&weak))
            .map_err(|e| to_py(py, Error::Unavailable(format!("cannot start the lease keeper thread: {e}"))))?;
        Ok(PyLeaseKeeper { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Starts renewing the leases of `ids` (from the next beat).
    fn add(&self, ids: Vec<Int<i64>>) {
        let mut st = self.shared.state();
        for Int(id) in ids {
            st.generation += 1;
            let g = st.generation;
            st.ids.insert(id, g);
            st.lost.remove(&id);
            st.cancel.remove(&id);
        }
    }

    /// Stops renewing `ids`, and forgets what was seen of them.
    fn remove(&self, ids: Vec<Int<i64>>) {
        let mut st = self.shared.state();
        for Int(id) in ids {
            st.ids.remove(&id);
            st.cancel.remove(&id);
            st.lost.remove(&id);
        }
    }

    /// The tasks whose leases are being renewed, in id order.
    fn ids(&self) -> Vec<i64> {
        self.shared.state().ids.keys().copied().collect()
    }

    /// Kept tasks whose cancellation was requested, in id order (until removed).
    fn cancel_requested(&self) -> Vec<i64> {
        sorted(&self.shared.state().cancel)
    }

    /// Tasks whose lease was lost (no longer renewed), in id order (until removed).
    fn lost(&self) -> Vec<i64> {
        sorted(&self.shared.state().lost)
    }

    /// Store errors met since the last call (at most the latest 100).
    fn errors(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.state().errors)
    }

    /// The worker the leases are held by.
    #[getter]
    fn worker(&self) -> &str {
        &self.shared.worker
    }

    /// True once closed, or once the store was closed.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.state().stop
    }

    /// Stops renewing and waits for the thread to end (a heartbeat in
    /// flight finishes first). Idempotent.
    fn close(&self, py: Python<'_>) {
        self.shared.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            // The thread never takes the GIL; a panic in it has nothing
            // left to report beyond the stop.
            py.detach(|| {
                let _ = t.join();
            });
        }
    }

    fn __repr__(&self) -> String {
        let st = self.shared.state();
        format!(
            "<LeaseKeeper worker={:?} keeping {} task(s){}>",
            self.shared.worker,
            st.ids.len(),
            if st.stop { " (closed)" } else { "" }
        )
    }
}

impl Drop for PyLeaseKeeper {
    /// Stops the thread without waiting for it: it ends at its next look
    /// (after a heartbeat in flight), and drop must not block on the store.
    fn drop(&mut self) {
        self.shared.stop();
    }
}
