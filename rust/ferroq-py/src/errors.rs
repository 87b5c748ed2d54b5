//! The single mapping from core errors to Python exceptions, and the checks
//! that turn Python numbers into core values. The classes live in
//! `ferroq/_errors.py` (so they can subclass two builtins at once); this
//! module looks them up by name. Every error the binding raises goes
//! through [`to_py`], so Python only ever sees `FerroqError` subclasses.

use ferroq_core::Error;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::time::Duration;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The Python class of each core error. The match is exhaustive on
/// purpose: a new core variant does not compile until it has a class.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::NotFound(_) => "TaskNotFoundError",
        Error::LeaseLost { .. } => "LeaseLostError",
        Error::AlreadyFinished { .. } => "AlreadyFinishedError",
        Error::InvalidTransition { .. } => "InvalidTransitionError",
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::PayloadTooLarge { .. } => "PayloadTooLargeError",
        Error::QueueFull { .. } => "QueueFullError",
        Error::QueuePaused { .. } => "QueuePausedError",
        Error::DuplicateKey { .. } => "DuplicateKeyError",
        Error::Unavailable(_) => "StoreUnavailableError",
        Error::PermissionDenied(_) => "StorePermissionError",
        Error::NotAStore(_) => "NotAStoreError",
        Error::Corrupt(_) => "CorruptStoreError",
        Error::ShardMismatch { .. } => "ShardMismatchError",
        Error::StoreInUse(_) => "StoreInUseError",
        Error::Storage(_) => "StoreError",
    }
}

/// Builds the Python exception for a core error (with `task_id` and
/// `status` attributes where the error names a task). Should the class
/// lookup itself fail (a broken install), the error still carries the
/// original message.
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
        if let Error::DuplicateKey { queue, key, id } = &e {
            exc.setattr("queue", queue)?;
            exc.setattr("key", key)?;
            if let Some(id) = id {
                exc.setattr("task_id", *id)?;
            }
        }
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|lookup| {
        PyRuntimeError::new_err(format!("{e} (and ferroq._errors could not be loaded: {lookup})"))
    })
}

/// An `InvalidArgumentError` with this message.
pub fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    to_py(py, Error::InvalidArgument(msg.into()))
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

/// A span of seconds from Python: `None` means "forever" (infinity, or a
/// number of seconds no clock can reach); a negative span is zero; NaN is
/// an `InvalidArgumentError` naming `what`.
pub fn seconds(py: Python<'_>, secs: f64, what: &str) -> PyResult<Option<Duration>> {
    if secs.is_nan() {
        return Err(invalid(py, format!("{what} must be a number of seconds, got nan")));
    }
    if secs <= 0.0 {
        return Ok(Some(Duration::ZERO));
    }
    // try_from_secs_f64 fails only on overflow here (NaN and negatives are
    // handled above): a wait past ~584 billion years is a wait forever.
    Ok(Duration::try_from_secs_f64(secs).ok())
}

/// An integer argument that must fit the core's type: a Python int too
/// large (or too small) becomes an `InvalidArgumentError`, not the bare
/// `OverflowError` PyO3 would raise.
#[derive(Clone, Copy)]
pub struct Int<T>(pub T);

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl<'py> FromPyObject<'py> for Int<$t> {
            fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
                match ob.extract::<$t>() {
                    Ok(v) => Ok(Int(v)),
                    Err(e) if e.is_instance_of::<PyOverflowError>(ob.py()) => Err(invalid(
                        ob.py(),
                        format!(
                            "{} is out of range ({}..={})",
                            ob.str().map(|s| s.to_string()).unwrap_or_default(),
                            <$t>::MIN,
                            <$t>::MAX
                        ),
                    )),
                    Err(e) => Err(e),
                }
            }
        }
    )*};
}

int_arg!(i32, i64, u32, u64);

/// Every core error variant with one sample value and its class name, for
/// the test that checks each reaches Python as its own class
/// (`tests/test_errors.py`). A variant missing here fails that test, and
/// one missing from [`class_name`] does not compile.
fn samples() -> Vec<(&'static str, Error)> {
    use ferroq_core::Status;
    vec![
        ("NotFound", Error::NotFound("task 7".into())),
        ("LeaseLost", Error::LeaseLost { id: 7, status: Status::Queued, worker: "w".into() }),
        ("AlreadyFinished", Error::AlreadyFinished { id: 7, status: Status::Done }),
        ("InvalidTransition", Error::InvalidTransition { id: 7, status: Status::Done, action: "retry" }),
        ("InvalidArgument", Error::InvalidArgument("bad".into())),
        ("PayloadTooLarge", Error::PayloadTooLarge { what: "payload", size: 2, limit: 1 }),
        ("QueueFull", Error::QueueFull { queue: "q".into(), limit: 1 }),
        ("QueuePaused", Error::QueuePaused { queue: "q".into() }),
        ("DuplicateKey", Error::DuplicateKey { queue: "q".into(), key: "k".into(), id: Some(7) }),
        ("Unavailable", Error::Unavailable("down".into())),
        ("PermissionDenied", Error::PermissionDenied("no".into())),
        ("NotAStore", Error::NotAStore("file".into())),
        ("Corrupt", Error::Corrupt("bits".into())),
        ("ShardMismatch", Error::ShardMismatch { path: "p".into(), existing: 1, requested: 2 }),
        ("StoreInUse", Error::StoreInUse("running".into())),
        ("Storage", Error::Storage("disk".into())),
    ]
}

/// `[(variant, exception)]` for every core error variant: the exception
/// each becomes in Python. For ferroq's own tests.
#[pyfunction]
pub fn _error_samples(py: Python<'_>) -> Vec<(&'static str, Py<PyAny>)> {
    samples().into_iter().map(|(name, e)| (name, to_py(py, e).into_value(py).into_any())).collect()
}

/// Text from Python: a `str` that cannot be UTF-8 (a lone surrogate, as
/// `os.fsdecode` makes of undecodable bytes) becomes an
/// `InvalidArgumentError`, not PyO3's bare `UnicodeEncodeError`.
#[derive(Clone)]
pub struct Text(pub String);

impl<'py> FromPyObject<'py> for Text {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        match ob.extract::<String>() {
            Ok(s) => Ok(Text(s)),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyUnicodeEncodeError>(ob.py()) => {
                let shown = ob.repr().map(|r| r.to_string()).unwrap_or_default();
                Err(invalid(ob.py(), format!("{shown} is not valid Unicode text: {e}")))
            }
            Err(e) => Err(e),
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}
