//! The only file that imports pyo3: every `#[pyclass]` and `#[pyfunction]` lives here.

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    const __version__: &str = crate::VERSION;
}
