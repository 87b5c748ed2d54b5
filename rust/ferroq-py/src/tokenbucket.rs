//! `TokenBucket` for Python: the core's limiter, waiting with the GIL released.

use crate::errors::{seconds, IntoPyResult};
use crate::store::sliced;
use ferroq_core::TokenBucket;
use pyo3::prelude::*;

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
    /// `timeout` seconds pass (None or `inf`: no limit); returns whether
    /// they were taken.
    #[pyo3(signature = (n=1.0, timeout=None))]
    fn acquire(&self, py: Python<'_>, n: f64, timeout: Option<f64>) -> PyResult<bool> {
        let total = match timeout {
            Some(t) => seconds(py, t, "timeout")?,
            None => None,
        };
        let got = sliced(py, total, |slice| Ok(self.inner.acquire(n, Some(slice))?.then_some(())))?;
        Ok(got.is_some())
    }
}
