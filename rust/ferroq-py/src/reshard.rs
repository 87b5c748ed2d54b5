//! `reshard`: the offline copy of a SQLite store to another shard count
//! (`ferroq_core::store::sqlite::reshard`), with the GIL released.

use crate::clock::PyManualClock;
use crate::errors::{IntoPyResult, Text};
use ferroq_core::store::sqlite::{self, ReshardParams};
use ferroq_core::{Clock, SystemClock};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// What a reshard did, as `ferroq.reshard` unpacks it: (source shards,
/// shards, store id, tasks, kept ids, worker records dropped, events left)
/// and ([(old id, new id)], released ids, [(queue, status, count)], tables
/// copied, event cursors reset, consumers that were behind).
type Report = (
    (u32, u32, String, u64, u64, u64, u64),
    (Vec<(i64, i64)>, Vec<i64>, Vec<(String, &'static str, u64)>, Vec<String>, Vec<String>, Vec<String>),
);

/// Copies the SQLite store `src` (a path or `sqlite:///` URL) into the new
/// directory `dest` with `shards` shards, offline; the source is left as
/// it was. A running task or a worker record whose heartbeat is more
/// recent than `worker_stale_ms` (default 30 s) raises `StoreInUseError`, unless
/// `release_running` (the caller says those processes are gone).
#[pyfunction]
#[pyo3(signature = (src, dest, shards, release_running=false, worker_stale_ms=None, clock=None))]
pub fn reshard(
    py: Python<'_>,
    src: Text,
    dest: PathBuf,
    shards: u32,
    release_running: bool,
    worker_stale_ms: Option<i64>,
    clock: Option<PyRef<'_, PyManualClock>>,
) -> PyResult<Report> {
    let clock: Arc<dyn Clock> = match clock {
        Some(c) => c.inner.clone(),
        None => Arc::new(SystemClock::new()),
    };
    let r = py
        .detach(|| {
            let p = ReshardParams {
                release_running,
                worker_stale_ms: worker_stale_ms.unwrap_or(sqlite::DEFAULT_WORKER_STALE_MS),
                ..ReshardParams::new(sqlite::store_dir(&src.0)?, dest, shards)
            };
            sqlite::reshard(&p, clock)
        })
        .py(py)?;
    let counts = r.counts.into_iter().map(|((queue, status), n)| (queue, status.as_str(), n)).collect();
    Ok((
        (r.src_shards, r.shards, r.store_id, r.tasks, r.kept_ids, r.workers_dropped, r.events_left),
        (r.renumbered, r.released, counts, r.tables, r.event_cursors_reset, r.event_consumers_behind),
    ))
}
