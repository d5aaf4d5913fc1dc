//! Non-secret ids' PyO3 shell (gateway/ids.py): one call an id, prefix included.

use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::ids::{IdBuffer, SLOT, SLOTS};

/// Ids cut from random bytes that `urandom(n)` gives (`os.urandom`), read `SLOTS` ids at a
/// time (outside the lock). Thread-safe; `forget` after a fork.
#[pyclass(module = "gateway._core", name = "IdSource", frozen)]
pub struct PyIdSource {
    urandom: Py<PyAny>,
    buffer: Mutex<IdBuffer>,
}

impl PyIdSource {
    fn buffer(&self) -> MutexGuard<'_, IdBuffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl PyIdSource {
    #[classattr]
    const SLOT_BYTES: usize = SLOT;
    #[classattr]
    const SLOTS: usize = SLOTS;

    #[new]
    fn new(urandom: Py<PyAny>) -> Self {
        Self {
            urandom,
            buffer: Mutex::new(IdBuffer::default()),
        }
    }

    /// `prefix` then `nbytes` (1 to `SLOT_BYTES`) random bytes in hex: `f"{prefix}{token_hex(nbytes)}"`.
    fn new_id<'py>(
        &self,
        py: Python<'py>,
        prefix: &str,
        nbytes: usize,
    ) -> PyResult<Bound<'py, PyString>> {
        if nbytes == 0 || nbytes > SLOT {
            return Err(PyValueError::new_err(format!("1 to {SLOT} bytes per id")));
        }
        let mut out = Vec::with_capacity(prefix.len() + 2 * nbytes);
        loop {
            if self.buffer().take_into(&mut out, prefix, nbytes) {
                // (a prefix and hex digits: text)
                let text = std::str::from_utf8(&out).unwrap_or_default();
                return Ok(PyString::new(py, text));
            }
            let random = self.urandom.bind(py).call1((SLOT * SLOTS,))?;
            let random = random.cast::<PyBytes>()?.as_bytes();
            if random.len() < SLOT {
                return Err(PyValueError::new_err("urandom gave too few bytes"));
            }
            self.buffer().refill(random);
        }
    }

    /// `nbytes` (1 to `SLOT_BYTES`) random bytes as hex, as `secrets.token_hex(nbytes)`.
    fn token_hex<'py>(&self, py: Python<'py>, nbytes: usize) -> PyResult<Bound<'py, PyString>> {
        self.new_id(py, "", nbytes)
    }

    /// Drops the buffer (a forked child must not hand out its parent's ids).
    fn forget(&self) {
        self.buffer().forget();
    }
}
