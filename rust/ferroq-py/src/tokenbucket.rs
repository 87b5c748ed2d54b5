//! `TokenBucket` for Python: the core's limiter, waiting with the GIL released.

use crate::errors::IntoPyResult;
use ferroq_core::TokenBucket;
use pyo3::prelude::*;
use std::time::{Duration, Instant};

/// A thread-safe token bucket: `rate` tokens per second, bursts up to `burst`.
#[pyclass(name = "TokenBucket", module = "ferroq._core", frozen)]
pub struct PyTokenBucket {
    inner: TokenBucket,
}

#[pymethods]
impl PyTokenBucket {
    #[new]
    #[pyo3(signature = (rate, burst=None))]
    fn new(py: Python<'_>, rate: f64, burst: Option<f64>) -> PyResult<Self> {
        let burst = burst.unwrap_or_else(|| rate.max(1.0));
        Ok(PyTokenBucket { inner: TokenBucket::new(rate, burst).py(py)? })
    }

    /// Tokens per second.
    #[getter]
    fn rate(&self) -> f64 {
        self.inner.rate()
    }

    /// Capacity.
    #[getter]
    fn burst(&self) -> f64 {
        self.inner.burst()
    }

    /// Takes `n` tokens if available now; returns whether it did.
    #[pyo3(signature = (n=1.0))]
    fn try_acquire(&self, py: Python<'_>, n: f64) -> PyResult<bool> {
        self.inner.try_acquire(n).py(py)
    }

    /// Waits (GIL released, Ctrl+C honoured) until `n` tokens are taken or
    /// `timeout` seconds pass; returns whether they were taken.
    #[pyo3(signature = (n=1.0, timeout=None))]
    fn acquire(&self, py: Python<'_>, n: f64, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let got = py.detach(|| self.inner.acquire(n, Some(slice))).py(py)?;
            if got {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }
}
