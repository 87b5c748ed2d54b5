//! The single mapping from core errors to Python exceptions. The classes
//! live in `ferroq/_errors.py` (so they can subclass two builtins at once);
//! this module looks them up by name.

use ferroq_core::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class_name(e: &Error) -> &'static str {
    match e {
        Error::NotFound(_) => "TaskNotFoundError",
        Error::LeaseLost { .. } => "LeaseLostError",
        Error::AlreadyFinished { .. } => "AlreadyFinishedError",
        Error::InvalidTransition { .. } => "InvalidTransitionError",
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::PayloadTooLarge { .. } => "PayloadTooLargeError",
        Error::QueueFull { .. } => "QueueFullError",
        Error::Unavailable(_) => "StoreUnavailableError",
        Error::PermissionDenied(_) => "StorePermissionError",
        Error::NotAStore(_) => "NotAStoreError",
        Error::Corrupt(_) => "CorruptStoreError",
        Error::ShardMismatch { .. } => "ShardMismatchError",
        Error::Storage(_) => "StoreError",
    }
}

/// Builds the Python exception for a core error (with `task_id` and
/// `status` attributes where the error names a task).
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let module = ERRORS.get_or_try_init(py, || py.import("ferroq._errors").map(|m| m.unbind()))?;
        let cls = module.bind(py).getattr(class_name(&e))?.cast_into::<PyType>()?;
        let exc = cls.call1((e.to_string(),))?;
        let (id, status) = match &e {
            Error::LeaseLost { id, status, .. }
            | Error::AlreadyFinished { id, status }
            | Error::InvalidTransition { id, status, .. } => (Some(*id), Some(status.as_str())),
            _ => (None, None),
        };
        if let Some(id) = id {
            exc.setattr("task_id", id)?;
        }
        if let Some(status) = status {
            exc.setattr("status", status)?;
        }
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|lookup| lookup)
}

/// Maps a core result to a Python one (GIL held).
pub trait IntoPyResult<T> {
    /// Converts the error, if any.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for ferroq_core::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
