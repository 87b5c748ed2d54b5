//! The read-only task record handed to Python.

use ferroq_core::Task;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A stored task, as read from the store. Times are ms since the epoch.
#[pyclass(name = "Task", module = "ferroq._core", frozen)]
pub struct PyTask {
    inner: Task,
}

impl From<Task> for PyTask {
    fn from(inner: Task) -> Self {
        PyTask { inner }
    }
}

#[pymethods]
impl PyTask {
    /// Unique id in the store.
    #[getter]
    fn id(&self) -> i64 {
        self.inner.id
    }
    /// Queue name.
    #[getter]
    fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// Registered task name.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    /// Serialised arguments.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }
    /// Priority (higher runs first).
    #[getter]
    fn priority(&self) -> i64 {
        self.inner.priority
    }
    /// Status name: queued, running, done, failed, cancelled, expired.
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.as_str()
    }
    /// Earliest start (ms).
    #[getter]
    fn run_at(&self) -> i64 {
        self.inner.run_at
    }
    /// Claims so far.
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }
    /// Claims allowed.
    #[getter]
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }
    /// Lease deadline while running (ms).
    #[getter]
    fn lease_until(&self) -> Option<i64> {
        self.inner.lease_until
    }
    /// Worker holding the lease.
    #[getter]
    fn worker(&self) -> Option<&str> {
        self.inner.worker.as_deref()
    }
    /// Idempotency key.
    #[getter]
    fn key(&self) -> Option<&str> {
        self.inner.key.as_deref()
    }
    /// Batch label.
    #[getter]
    fn batch(&self) -> Option<&str> {
        self.inner.batch.as_deref()
    }
    /// Last reported progress (0..=1).
    #[getter]
    fn progress(&self) -> Option<f64> {
        self.inner.progress
    }
    /// Serialised result, once done.
    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.result.as_deref().map(|r| PyBytes::new(py, r))
    }
    /// Error of the last failed attempt.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }
    /// Enqueue time (ms).
    #[getter]
    fn created_at(&self) -> i64 {
        self.inner.created_at
    }
    /// Start of the latest attempt (ms).
    #[getter]
    fn started_at(&self) -> Option<i64> {
        self.inner.started_at
    }
    /// When it finished (ms).
    #[getter]
    fn finished_at(&self) -> Option<i64> {
        self.inner.finished_at
    }
    /// Deadline to start by (ms).
    #[getter]
    fn expires_at(&self) -> Option<i64> {
        self.inner.expires_at
    }
    /// User metadata (JSON text).
    #[getter]
    fn metadata(&self) -> Option<&str> {
        self.inner.metadata.as_deref()
    }
    /// True when cancellation was requested while it ran.
    #[getter]
    fn cancel_requested(&self) -> bool {
        self.inner.cancel_requested
    }
    /// Retry policy in text form, if the task set one.
    #[getter]
    fn backoff(&self) -> Option<String> {
        self.inner.backoff.map(|b| b.encode())
    }
    /// What a worker must have to claim it (JSON object), if anything.
    #[getter]
    fn requires(&self) -> Option<&str> {
        self.inner.requires.as_deref()
    }
    /// Retention after finishing (ms), if the task set one.
    #[getter]
    fn result_ttl_ms(&self) -> Option<i64> {
        self.inner.result_ttl_ms
    }
    fn __repr__(&self) -> String {
        format!(
            "Task(id={}, queue={:?}, name={:?}, status={}, attempts={}/{})",
            self.inner.id,
            self.inner.queue,
            self.inner.name,
            self.inner.status,
            self.inner.attempts,
            self.inner.max_attempts
        )
    }
}
