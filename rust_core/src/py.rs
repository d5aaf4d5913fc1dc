//! The only files that import pyo3 (this one and its submodule `py/spans.rs`, the trace span
//! recorder): every `#[pyclass]` and `#[pyfunction]` lives here.
//!
//! Bytes policy: `feed` borrows the upstream chunk (`&[u8]` from `bytes`, no copy) and returns
//! one `bytes` holding zero or more complete events; no Python object is made per event. The
//! GIL (or the thread state, on free-threaded builds) is released only for inputs larger than
//! [`DETACH_ABOVE`], since per-chunk work is microseconds.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyList};
use smallvec::SmallVec;

use crate::bucket::BucketSpec;
use crate::chunked::Dechunker;
use crate::errors::CoreError;
use crate::head::{self, Body};
use crate::limiter::{BucketLimit, Decision, Limiter, QuotaLimit};
use crate::reframe::{Options, Stream};
use crate::usage::Usage;

mod admission;
mod bodies;
mod histogram;
mod ids;
mod spans;
mod totals;

/// Inputs above this size are processed with the interpreter detached.
const DETACH_ABOVE: usize = 64 * 1024;

/// `Reframer.feed_chunked`'s answer when the chunked body has ended (0: it goes on, the
/// stream open; 1: it goes on, the reframer closed).
const BODY_ENDED: u8 = 2;

create_exception!(
    _core,
    SseError,
    PyValueError,
    "Malformed or oversized upstream stream (an event larger than max_event_bytes)."
);
create_exception!(
    _core,
    EventStreamError,
    SseError,
    "Corrupted AWS event stream (Bedrock): a CRC mismatch, bad lengths or headers."
);
create_exception!(
    _core,
    TranslationError,
    SseError,
    "A chained reframer's second stage could not translate the first one's output."
);
create_exception!(
    _core,
    UpstreamStreamError,
    PyException,
    "The upstream stream ended without its terminator (cut off)."
);

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Sse(m) => SseError::new_err(m),
            CoreError::EventStream(m) => EventStreamError::new_err(m),
            CoreError::StreamCutOff(m) => UpstreamStreamError::new_err(m),
            CoreError::InvalidArgument(m) => PyValueError::new_err(m),
            CoreError::Translation(m) => TranslationError::new_err(m),
        }
    }
}

/// Token usage in OpenAI's vocabulary.
#[pyclass(module = "gateway._core", name = "Usage", frozen, eq, get_all)]
#[derive(Clone, PartialEq, Eq)]
#[allow(clippy::struct_field_names)] // the names are the OpenAI wire's
struct PyUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cached_tokens: u64,
    cache_write_tokens: u64,
}

impl From<Usage> for PyUsage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cached_tokens: u.cached_tokens,
            cache_write_tokens: u.cache_write_tokens,
        }
    }
}

#[pymethods]
impl PyUsage {
    fn __repr__(&self) -> String {
        format!(
            "Usage(prompt_tokens={}, completion_tokens={}, total_tokens={}, cached_tokens={}, \
             cache_write_tokens={})",
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cached_tokens,
            self.cache_write_tokens
        )
    }
}

/// One upstream stream reframed to OpenAI chunk events.
#[pyclass(module = "gateway._core", name = "Reframer")]
struct PyReframer {
    inner: Stream,
    out: Vec<u8>,
}

#[pymethods]
impl PyReframer {
    #[new]
    #[pyo3(signature = (
        kind, model, response_id, created, include_usage, max_event_bytes = 1_048_576,
        response_fields = None, then = None
    ))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        kind: &str,
        model: String,
        response_id: String,
        created: i64,
        include_usage: bool,
        max_event_bytes: usize,
        response_fields: Option<String>,
        then: Option<&str>,
    ) -> PyResult<Self> {
        let opts = Options {
            model,
            response_id,
            created,
            include_usage,
            response_fields: response_fields.unwrap_or_else(|| "{}".to_owned()),
        };
        // A chained reframer's opening events wait in `out` for `opening()`.
        let mut out = Vec::new();
        let inner = match then {
            None => Stream::new(kind, &opts, max_event_bytes)?,
            Some(then) => Stream::chained(kind, then, &opts, max_event_bytes, &mut out)?,
        };
        Ok(Self { inner, out })
    }

    /// A chained reframer's opening events (its second stage's, before any input: the first
    /// piece of the stream); b"" for any other, and after any other call.
    fn opening<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.take(py)
    }

    /// `start`: where the stream's bytes begin in `data` (a read whose first bytes are the
    /// HTTP head that came with the body: fed from the body on, with no `bytes` sliced off).
    #[pyo3(signature = (data, start = 0))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        start: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = data
            .get(start..)
            .ok_or_else(|| PyValueError::new_err("start is past the data's end"))?;
        self.out.clear();
        let Self { inner, out } = self;
        let result = if data.len() > DETACH_ABOVE {
            py.detach(|| inner.feed(data, out))
        } else {
            inner.feed(data, out)
        };
        result?;
        Ok(self.take(py))
    }

    /// `feed` of the body bytes that `dechunker` reads out of `data` (one read of an HTTP
    /// chunked body): the two in one crossing, with no `bytes` of the body between them,
    /// and what the caller asks after every read, answered here rather than by more
    /// crossings: `BODY_ENDED` (2) when the body has ended (the Dechunker's `done`), else 1
    /// once the reframer read its terminator or an upstream error (`done` or
    /// `upstream_error`), else 0. A malformed chunked body is `Dechunker.feed`'s
    /// `ValueError`, the reframer not fed.
    fn feed_chunked<'py>(
        &mut self,
        py: Python<'py>,
        mut dechunker: PyRefMut<'py, PyDechunker>,
        data: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, u8)> {
        let PyDechunker {
            inner: chunked,
            out: body,
            leftover,
        } = &mut *dechunker;
        body.clear();
        let used = chunked
            .feed(data, body)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        *leftover = data.len() - used;
        self.out.clear();
        if !body.is_empty() {
            let Self { inner, out } = self;
            let body: &[u8] = body;
            let result = if body.len() > DETACH_ABOVE {
                py.detach(|| inner.feed(body, out))
            } else {
                inner.feed(body, out)
            };
            result?;
        }
        let after = if chunked.done() {
            BODY_ENDED
        } else {
            u8::from(self.inner.state().closed())
        };
        Ok((self.take(py), after))
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.out.clear();
        self.inner.finish(&mut self.out)?;
        Ok(self.take(py))
    }

    /// The whole events that the `feed`, `feed_chunked` or `finish` which just raised made
    /// before its failure (b"" after any call that did not raise): they go out before the
    /// error, as they would had the error come in a later read.
    fn before_error<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.take(py)
    }

    #[getter]
    fn done(&self) -> bool {
        self.inner.state().done
    }

    /// Whether the stream has ended whole: the terminator read, no upstream error after it and
    /// no failure (a chained reframer's translation)
    /// (a method, so that a relay can be handed it as its "was that the last piece" check).
    fn finished(&self) -> bool {
        self.inner.finished()
    }

    #[getter]
    fn usage(&self) -> Option<PyUsage> {
        self.inner.state().usage.map(PyUsage::from)
    }

    #[getter]
    fn finish_reason(&self) -> Option<String> {
        self.inner.state().finish_reason.clone()
    }

    #[getter]
    fn upstream_error(&self) -> Option<(String, String)> {
        self.inner.state().upstream_error.clone()
    }

    #[getter]
    fn content_chars(&self) -> u64 {
        self.inner.state().content_chars
    }

    /// Responses API events in the output returned so far (`openai_to_responses`, alone or
    /// as a chain's second stage): the next `sequence_number`; None for other kinds.
    #[getter]
    fn events(&self) -> Option<u64> {
        self.inner.events_written()
    }

    /// The response object of the `response.completed` / `response.incomplete` event, once
    /// written (JSON); None before, and for other kinds.
    #[getter]
    fn final_response<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.final_response().map(|r| PyBytes::new(py, r))
    }
}

impl PyReframer {
    /// The output as a `bytes`, the buffer emptied (so `before_error` has nothing after a
    /// call that returned it).
    fn take<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let out = PyBytes::new(py, &self.out);
        self.out.clear();
        out
    }
}

/// An HTTP/1.1 chunked body read incrementally (`chunked.rs`): one `bytes` of body per read,
/// however many HTTP chunks the read holds.
#[pyclass(module = "gateway._core", name = "Dechunker")]
struct PyDechunker {
    inner: Dechunker,
    out: Vec<u8>,
    leftover: usize,
}

#[pymethods]
impl PyDechunker {
    #[new]
    fn new() -> Self {
        Self {
            inner: Dechunker::new(),
            out: Vec::new(),
            leftover: 0,
        }
    }

    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        self.out.clear();
        let used = self
            .inner
            .feed(data, &mut self.out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.leftover = data.len() - used;
        Ok(PyBytes::new(py, &self.out))
    }

    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }

    #[getter]
    fn leftover(&self) -> usize {
        self.leftover
    }
}

/// An answer's plain head at the start of `data` (`head::read_head`): `(status, end, length,
/// keep_alive)`, `length` -1 for an event stream's chunked body; `None` when the head is not
/// whole or not plain (httptools reads it then).
#[pyfunction]
fn read_head(data: &[u8]) -> Option<(u16, usize, i64, bool)> {
    let head = head::read_head(data)?;
    let length = match head.body {
        Body::Length(n) => i64::try_from(n).ok()?,
        Body::ChunkedEvents => -1,
    };
    Some((head.status, head.end, length, head.keep_alive))
}

/// The header fields of a head `read_head` read: name, value, name, value, ... as `bytes`.
#[pyfunction]
fn head_fields<'py>(py: Python<'py>, head: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let fields = head::fields(head).ok_or_else(|| PyValueError::new_err("not a plain head"))?;
    let items: Vec<Bound<'py, PyBytes>> = fields
        .into_iter()
        .flat_map(|(name, value)| [PyBytes::new(py, name), PyBytes::new(py, value)])
        .collect();
    PyList::new(py, items)
}

/// The answer of `Limiter.acquire` / `Limiter.peek`.
#[pyclass(module = "gateway._core", name = "Decision", frozen, get_all)]
struct PyDecision {
    allowed: bool,
    retry_after_s: f64,
    remaining: Vec<i64>,
    reset_s: Vec<f64>,
}

impl From<Decision> for PyDecision {
    fn from(d: Decision) -> Self {
        Self {
            allowed: d.allowed,
            retry_after_s: d.retry_after_s,
            remaining: d.remaining,
            reset_s: d.reset_s,
        }
    }
}

#[pymethods]
impl PyDecision {
    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, retry_after_s={}, remaining={:?}, reset_s={:?})",
            if self.allowed { "True" } else { "False" },
            self.retry_after_s,
            self.remaining,
            self.reset_s
        )
    }
}

// Keys are borrowed from the Python `str` (its cached UTF-8), not copied into a `String`, and
// a call's few limits live on the stack: the limiter call is dominated by allocations otherwise.
type BucketArg = (PyBackedStr, f64, f64, f64);
type QuotaArg = (PyBackedStr, u64, u64);
type Args<T> = SmallVec<[T; 2]>;

/// Indexed access to the list (no Python iterator object per call).
fn extract_list<'py, T: FromPyObjectOwned<'py>>(list: &Bound<'py, PyList>) -> PyResult<Vec<T>> {
    let mut out = Vec::with_capacity(list.len());
    for item in list.iter() {
        out.push(item.extract::<T>().map_err(Into::into)?);
    }
    Ok(out)
}

fn limits<'a>(
    buckets: &'a [BucketArg],
    quotas: &'a [QuotaArg],
) -> (Args<BucketLimit<'a>>, Args<QuotaLimit<'a>>) {
    (
        buckets
            .iter()
            .map(|(key, capacity, rate, cost)| BucketLimit {
                key,
                spec: BucketSpec {
                    capacity: *capacity,
                    rate: *rate,
                },
                cost: *cost,
            })
            .collect(),
        quotas
            .iter()
            .map(|(key, limit, cost)| QuotaLimit {
                key,
                limit: *limit,
                cost: *cost,
            })
            .collect(),
    )
}

/// Token buckets and daily quotas, keyed, thread-safe, with bounded memory.
#[pyclass(module = "gateway._core", name = "Limiter", frozen)]
struct PyLimiter {
    inner: Limiter,
}

#[pymethods]
impl PyLimiter {
    #[new]
    #[pyo3(signature = (max_keys = 1_000_000))]
    fn new(max_keys: usize) -> Self {
        Self {
            inner: Limiter::new(max_keys),
        }
    }

    fn acquire(
        &self,
        buckets: &Bound<'_, PyList>,
        quotas: &Bound<'_, PyList>,
        now_s: f64,
    ) -> PyResult<PyDecision> {
        let (buckets, quotas) = (extract_list(buckets)?, extract_list(quotas)?);
        let (b, q) = limits(&buckets, &quotas);
        Ok(self.inner.acquire(&b, &q, now_s)?.into())
    }

    fn peek(
        &self,
        buckets: &Bound<'_, PyList>,
        quotas: &Bound<'_, PyList>,
        now_s: f64,
    ) -> PyResult<PyDecision> {
        let (buckets, quotas) = (extract_list(buckets)?, extract_list(quotas)?);
        let (b, q) = limits(&buckets, &quotas);
        Ok(self.inner.peek(&b, &q, now_s)?.into())
    }

    /// The embedded store's admission in one call (`crate::admission`): an Admission of
    /// `plan`'s type, or the reads it needs first (1: the balance, 2: the key's spend, or both).
    #[pyo3(signature = (plan, book, reserve_micros, now_s, fresh = 0))]
    fn admit(
        &self,
        py: Python<'_>,
        plan: &admission::PyAdmitPlan,
        book: &admission::PyCreditBook,
        reserve_micros: i64,
        now_s: f64,
        fresh: u8,
    ) -> PyResult<Py<PyAny>> {
        admission::admit(py, &self.inner, plan, book, reserve_micros, now_s, fresh)
    }

    /// What an admission on `plan`'s limits alone would answer now, taking nothing (the
    /// account page's and `/v1/account`'s figures): an Admission of `plan`'s type.
    fn peek_admission(
        &self,
        py: Python<'_>,
        plan: &admission::PyAdmitPlan,
        now_s: f64,
    ) -> PyResult<Py<PyAny>> {
        admission::peek(py, &self.inner, plan, now_s)
    }

    fn charge(
        &self,
        key: &str,
        capacity: f64,
        refill_per_s: f64,
        amount: f64,
        now_s: f64,
    ) -> PyResult<()> {
        let spec = BucketSpec {
            capacity,
            rate: refill_per_s,
        };
        Ok(self.inner.charge(key, spec, amount, now_s)?)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

#[pymodule(gil_used = false)]
mod _core {
    use pyo3::prelude::*;

    #[allow(non_upper_case_globals)] // Python's dunder name
    #[pymodule_export]
    const __version__: &str = crate::VERSION;

    #[pymodule_export]
    use super::admission::{PyAdmitPlan, PyCreditBook};
    #[pymodule_export]
    use super::bodies::{
        anthropic_chat_request, chat_request_messages, gemini_chat_request, json_nesting_depth,
        openai_chat_answer, openai_chat_request,
    };
    #[pymodule_export]
    use super::histogram::PyPendingHistogram;
    #[pymodule_export]
    use super::ids::PyIdSource;
    #[pymodule_export]
    use super::spans::{PyClientSpan, PyServerSpan, PySpanRecorder};
    #[pymodule_export]
    use super::totals::PyRunningTotals;
    #[pymodule_export]
    use super::{head_fields, read_head, PyDechunker, PyDecision, PyLimiter, PyReframer, PyUsage};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("SseError", py.get_type::<super::SseError>())?;
        m.add("EventStreamError", py.get_type::<super::EventStreamError>())?;
        m.add("TranslationError", py.get_type::<super::TranslationError>())?;
        m.add(
            "UpstreamStreamError",
            py.get_type::<super::UpstreamStreamError>(),
        )?;
        Ok(())
    }
}
