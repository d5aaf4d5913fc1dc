//! The request path's running totals (`gateway/observer.py`): one call a request at its end.

use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;

use crate::totals::{self, Ending, NoSuchSlot, Settled, Totals};

impl From<NoSuchSlot> for PyErr {
    fn from(_: NoSuchSlot) -> Self {
        PyIndexError::new_err("no such running total")
    }
}

/// Counters and histograms of the request path between two flushes, by slot
/// (`rust_core/src/totals.rs`). The observer's memos hand the slots out once per label set.
#[pyclass(module = "gateway._core", name = "RunningTotals", frozen)]
pub struct PyRunningTotals {
    totals: Mutex<Totals>,
}

impl PyRunningTotals {
    fn totals(&self) -> MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl PyRunningTotals {
    #[new]
    fn new() -> Self {
        Self {
            totals: Mutex::new(Totals::new()),
        }
    }

    fn counters(&self, n: usize) -> usize {
        self.totals().counters(n)
    }

    fn histogram(&self, bounds: Vec<f64>) -> PyResult<usize> {
        self.totals()
            .histogram(bounds)
            .ok_or_else(|| PyValueError::new_err("a histogram has buckets"))
    }

    fn requests(&self, counter: usize, duration: usize, ttfb: usize) -> PyResult<usize> {
        Ok(self.totals().requests(counter, duration, ttfb)?)
    }

    fn add(&self, counter: usize, amount: f64) -> PyResult<()> {
        Ok(self.totals().add(counter, amount)?)
    }

    fn observe(&self, histogram: usize, value: f64) -> PyResult<()> {
        Ok(self.totals().observe(histogram, value)?)
    }

    fn settle(
        &self,
        counters: usize,
        prompt_tokens: f64,
        completion_tokens: f64,
        cost_usd: f64,
    ) -> PyResult<()> {
        Ok(self.totals().settle(Settled {
            base: counters,
            prompt_tokens,
            completion_tokens,
            cost_usd,
        })?)
    }

    /// A request's end (`settled`: the first slot of its settlement's counters, negative for
    /// none); returns the log line's latency and time to first byte in ms, to the microsecond
    /// (`round(ms * 1000) / 1000`; the time to first byte None without one).
    #[allow(clippy::too_many_arguments)] // one call a request: what it gathered, flat
    #[pyo3(signature = (requests, duration_s, ttfb_s, settled, prompt_tokens, completion_tokens, cost_usd))]
    fn end(
        &self,
        requests: usize,
        duration_s: f64,
        ttfb_s: Option<f64>,
        settled: i64,
        prompt_tokens: f64,
        completion_tokens: f64,
        cost_usd: f64,
    ) -> PyResult<(f64, Option<f64>)> {
        self.totals().end(&Ending {
            requests,
            duration_s,
            ttfb_s,
            settled: usize::try_from(settled).ok().map(|base| Settled {
                base,
                prompt_tokens,
                completion_tokens,
                cost_usd,
            }),
        })?;
        Ok((
            totals::to_the_microsecond(duration_s * 1000.0),
            ttfb_s.map(|ttfb_s| totals::to_the_microsecond(ttfb_s * 1000.0)),
        ))
    }

    fn take_counters(&self) -> Vec<(usize, f64)> {
        self.totals().take_counters()
    }

    fn take_histograms(&self) -> Vec<(usize, Vec<u64>, f64)> {
        self.totals().take_histograms()
    }
}
