//! The metrics buffer's histogram children (`gateway/metrics_buffer.py`): one call an observation.

use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::histogram::Pending;

/// A histogram child's observations since the last flush: `observe(value)` as
/// `Histogram.observe` counts it (the bucket by `bisect_left` of its upper bounds, the sum),
/// `take()` the counts per bucket and the sum, zeroed (None when nothing was observed).
#[pyclass(module = "gateway._core", name = "PendingHistogram", frozen)]
pub struct PyPendingHistogram {
    pending: Mutex<Pending>,
}

impl PyPendingHistogram {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl PyPendingHistogram {
    #[new]
    fn new(bounds: Vec<f64>) -> PyResult<Self> {
        let pending =
            Pending::new(bounds).ok_or_else(|| PyValueError::new_err("a histogram has buckets"))?;
        Ok(Self {
            pending: Mutex::new(pending),
        })
    }

    fn observe(&self, value: f64) {
        self.pending().observe(value);
    }

    fn take(&self) -> Option<(Vec<u64>, f64)> {
        self.pending().take()
    }
}
