//! `ferroq._core`: the thin PyO3 layer over `ferroq-core`. It converts
//! values, releases the GIL around every store call and wait, and maps core
//! errors onto ferroq's exception classes. No queue logic lives here.

mod clock;
mod errors;
mod lease;
mod reshard;
mod store;
mod task;
mod tokenbucket;

use pyo3::prelude::*;

/// The native module. Users import `ferroq`, never this.
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::PyStore>()?;
    m.add_class::<clock::PyManualClock>()?;
    m.add_class::<lease::PyLeaseKeeper>()?;
    m.add_class::<task::PyTask>()?;
    m.add_class::<tokenbucket::PyTokenBucket>()?;
    m.add_function(wrap_pyfunction!(store::backoff_delay_ms, m)?)?;
    m.add_function(wrap_pyfunction!(reshard::reshard, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_error_samples, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
