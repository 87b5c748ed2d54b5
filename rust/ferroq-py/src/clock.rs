//! `ManualClock` for Python: a store opened with one reads its time (for
//! delays, leases, retries, deadlines and retention) from this clock, which
//! moves only when told to. For tests of code that uses ferroq.

use crate::errors::{invalid, seconds as span, Int, IntoPyResult};
use ferroq_core::clock::Clock;
use pyo3::prelude::*;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A clock that stands still until `advance(seconds)` moves it.
#[pyclass(name = "ManualClock", module = "ferroq._core", frozen)]
pub struct PyManualClock {
    pub(crate) inner: Arc<ferroq_core::ManualClock>,
}

#[pymethods]
impl PyManualClock {
    /// A clock reading `now_ms` (ms since the epoch; default: the real time now).
    #[new]
    #[pyo3(signature = (now_ms=None))]
    fn new(now_ms: Option<Int<i64>>) -> Self {
        let now = now_ms
            .map(|n| n.0)
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0));
        PyManualClock { inner: Arc::new(ferroq_core::ManualClock::new(now)) }
    }

    /// The clock's time in ms since the epoch.
    #[getter]
    fn now_ms(&self) -> i64 {
        self.inner.now_ms()
    }

    /// Moves the clock forward by `seconds` (finite, >= 0).
    fn advance(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(invalid(py, format!("advance() needs a finite number of seconds >= 0, got {seconds}")));
        }
        match span(py, seconds, "advance")? {
            Some(d) => self.inner.try_advance(d).py(py),
            None => Err(invalid(py, "advance() by a span no clock can hold")),
        }
    }
}
