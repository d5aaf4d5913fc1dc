//! The span recorder's PyO3 shell (gateway/tracing/otel.py): spans as small frozen objects, and
//! each ended span's row written into the frame in one call, from the request's raw values.
//!
//! A row is the tuple gateway/tracing/rows.py describes (`HEAD`, then `SERVER` or `CLIENT`),
//! written in msgpack as msgspec writes that tuple (`crate::spans`), so the exporter child reads
//! the same frames. A value the writer has no form for (a type other than None, bool, int,
//! float, str, bytes, list, tuple, dict; an int beyond 64 bits) raises `TypeError` /
//! `OverflowError` with nothing written: the caller then sends the row through msgspec, as
//! before (gateway/tracing/pipe.py `SpanPipe.add`), which casts or drops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::spans::{self as mp, Frame, IdPool, SAMPLED, SLOT};

/// `SpanKind.SERVER.value` and `SpanKind.CLIENT.value` (OpenTelemetry's API).
const SERVER: u64 = 1;
const CLIENT: u64 = 2;
/// Random bytes read at a time for ids: 128 requests' slots.
const RANDOM_READ: usize = SLOT * 128;
/// Lists and dicts nested deeper than this go through msgspec instead.
const MAX_DEPTH: u32 = 32;

fn id<const N: usize>(bytes: &[u8], what: &str) -> PyResult<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be {N} bytes")))
}

fn hex_string(py: Python<'_>, bytes: &[u8]) -> Py<PyString> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    mp::hex_into(&mut out, bytes);
    PyString::new(py, std::str::from_utf8(&out).unwrap_or_default()).unbind()
}

/// The request's server span being recorded: ids, W3C flags, its parent (None: a root), the
/// trace state header, the start time; `trace_hex` is the trace id's hex (the log line's
/// `trace_id`). Its first client span takes `spare`, the third id of the request's slot.
#[pyclass(module = "gateway._core", name = "ServerSpan", frozen)]
pub struct PyServerSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    parent_id: Option<[u8; 8]>,
    parent_remote: bool,
    parent_flags: u8,
    state: Option<String>,
    start_ns: i64,
    spare: Option<[u8; 8]>,
    spare_taken: AtomicBool,
    trace_hex: Py<PyString>,
}

impl PyServerSpan {
    fn root(py: Python<'_>, ids: &[u8; SLOT], bound: u128) -> Self {
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&ids[..16]);
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&ids[16..24]);
        let mut spare = [0u8; 8];
        spare.copy_from_slice(&ids[24..]);
        Self {
            trace_hex: hex_string(py, &trace_id),
            flags: mp::root_flags(&trace_id, bound),
            trace_id,
            span_id,
            parent_id: None,
            parent_remote: false,
            parent_flags: 0,
            state: None,
            start_ns: mp::now_ns(),
            spare: Some(spare),
            spare_taken: AtomicBool::new(false),
        }
    }
}

#[pymethods]
impl PyServerSpan {
    /// A span under a parent from the request's trace context (the SDK's propagator read it
    /// and its sampler decided the flags: gateway/tracing/otel.py).
    #[new]
    #[pyo3(signature = (trace_id, span_id, flags, parent_id, parent_remote, parent_flags, state, spare))]
    #[allow(clippy::too_many_arguments)] // the span's fields, by name
    fn new(
        py: Python<'_>,
        trace_id: &[u8],
        span_id: &[u8],
        flags: u8,
        parent_id: Option<&[u8]>,
        parent_remote: bool,
        parent_flags: u8,
        state: Option<String>,
        spare: Option<&[u8]>,
    ) -> PyResult<Self> {
        let trace_id: [u8; 16] = id(trace_id, "trace_id")?;
        Ok(Self {
            trace_hex: hex_string(py, &trace_id),
            trace_id,
            span_id: id(span_id, "span_id")?,
            flags,
            parent_id: parent_id.map(|p| id(p, "parent_id")).transpose()?,
            parent_remote,
            parent_flags,
            state,
            start_ns: mp::now_ns(),
            spare: spare.map(|s| id(s, "spare")).transpose()?,
            spare_taken: AtomicBool::new(false),
        })
    }

    #[getter]
    fn trace_hex(&self, py: Python<'_>) -> Py<PyString> {
        self.trace_hex.clone_ref(py)
    }

    #[getter]
    fn trace_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.trace_id)
    }

    #[getter]
    fn span_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.span_id)
    }

    #[getter]
    fn parent_id<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.parent_id.map(|p| PyBytes::new(py, &p))
    }

    #[getter]
    fn parent_remote(&self) -> bool {
        self.parent_remote
    }

    #[getter]
    fn parent_flags(&self) -> u8 {
        self.parent_flags
    }

    #[getter]
    fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    #[getter]
    fn flags(&self) -> u8 {
        self.flags
    }

    #[getter]
    fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    #[getter]
    fn start_ns(&self) -> i64 {
        self.start_ns
    }

    /// The `traceparent` naming this span (the upstream's, when no attempt's span is open).
    #[getter]
    fn traceparent(&self) -> String {
        mp::traceparent(&self.trace_id, &self.span_id, self.flags)
    }
}

/// One upstream attempt's span being recorded: a child of its server span, whose flags it
/// follows (as the SDK's parent-based sampler does for a local parent); `target` and
/// `attempt` are the retry loop's, kept for the span's end.
#[pyclass(module = "gateway._core", name = "ClientSpan", frozen)]
pub struct PyClientSpan {
    server: Py<PyServerSpan>,
    span_id: [u8; 8],
    start_ns: i64,
    #[pyo3(get)]
    target: Py<PyAny>,
    #[pyo3(get)]
    attempt: u64,
}

#[pymethods]
impl PyClientSpan {
    #[getter]
    fn trace_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.server.get().trace_id)
    }

    #[getter]
    fn span_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.span_id)
    }

    #[getter]
    fn server(&self, py: Python<'_>) -> Py<PyServerSpan> {
        self.server.clone_ref(py)
    }

    #[getter]
    fn sampled(&self) -> bool {
        self.server.get().flags & SAMPLED != 0
    }

    #[getter]
    fn start_ns(&self) -> i64 {
        self.start_ns
    }

    #[getter]
    fn traceparent(&self) -> String {
        let server = self.server.get();
        mp::traceparent(&server.trace_id, &self.span_id, server.flags)
    }
}

struct State {
    ids: IdPool,
    frame: Frame,
    /// Set at fork (`forget`): the next ended span asks the caller to attend to the pipe.
    forked: bool,
}

/// Random ids, root spans, and the frame of ended spans' rows (gateway/tracing/otel.py,
/// pipe.py). `urandom(n)` gives the random bytes (`os.urandom`); `root_bound` is the SDK
/// `TraceIdRatioBased` sampler's `bound` (a root is sampled when its trace id's low 64 bits
/// are below it); `batch` the rows after which `end_server` / `end_client` / `push` answer
/// True (frame it now).
#[pyclass(module = "gateway._core", name = "SpanRecorder", frozen)]
pub struct PySpanRecorder {
    urandom: Py<PyAny>,
    root_bound: u128,
    #[pyo3(get)]
    batch: usize,
    state: Mutex<State>,
}

impl PySpanRecorder {
    fn state(&self) -> MutexGuard<'_, State> {
        // a row is written whole or truncated back before the lock is let go
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request's ids; random bytes are read (outside the lock) when the buffer is spent.
    fn slot(&self, py: Python<'_>) -> PyResult<[u8; SLOT]> {
        loop {
            if let Some(ids) = self.state().ids.take() {
                return Ok(ids);
            }
            let random = self.urandom.bind(py).call1((RANDOM_READ,))?;
            let random = random.cast::<PyBytes>()?.as_bytes();
            if random.len() < SLOT {
                return Err(PyValueError::new_err("urandom gave too few bytes"));
            }
            self.state().ids.refill(random); // refused (a zero id in it): read again
        }
    }

    /// Appends one row written by `write` (nothing of it when `write` fails); true when the
    /// frame is full or the process has forked since the last row.
    fn row(&self, write: impl FnOnce(&mut Vec<u8>) -> PyResult<()>) -> PyResult<bool> {
        let mut state = self.state();
        let mark = state.frame.rows.len();
        if let Err(err) = write(&mut state.frame.rows) {
            state.frame.rows.truncate(mark);
            return Err(err);
        }
        state.frame.count += 1;
        let forked = std::mem::take(&mut state.forked);
        Ok(forked || state.frame.count >= self.batch)
    }
}

fn head(out: &mut Vec<u8>, kind: u64, len: usize, server: &PyServerSpan, span_id: [u8; 8]) {
    mp::array(out, len);
    mp::uint(out, kind);
    mp::bin(out, &server.trace_id);
    mp::bin(out, &span_id);
}

fn state_value(out: &mut Vec<u8>, state: Option<&str>) {
    match state {
        Some(s) => mp::str(out, s),
        None => mp::nil(out),
    }
}

/// A Python value as msgspec writes it; a type it would cast or refuse is an error here.
#[inline]
fn value(out: &mut Vec<u8>, v: &Bound<'_, PyAny>, depth: u32) -> PyResult<()> {
    if v.is_none() {
        mp::nil(out);
    } else if let Ok(s) = v.cast_exact::<PyString>() {
        mp::str(out, s.to_str()?);
    } else if v.is_exact_instance_of::<PyBool>() {
        mp::boolean(out, v.is_truthy()?);
    } else if v.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            mp::int(out, i);
        } else if let Ok(u) = v.extract::<u64>() {
            mp::uint(out, u);
        } else {
            return Err(PyOverflowError::new_err("an int beyond 64 bits"));
        }
    } else if let Ok(f) = v.cast_exact::<PyFloat>() {
        mp::float(out, f.value());
    } else if let Ok(b) = v.cast_exact::<PyBytes>() {
        mp::bin(out, b.as_bytes());
    } else if depth >= MAX_DEPTH {
        return Err(PyTypeError::new_err("nested too deep"));
    } else if let Ok(list) = v.cast_exact::<PyList>() {
        mp::array(out, list.len());
        for item in list.iter() {
            value(out, &item, depth + 1)?;
        }
    } else if let Ok(tuple) = v.cast_exact::<PyTuple>() {
        mp::array(out, tuple.len());
        for item in tuple.iter() {
            value(out, &item, depth + 1)?;
        }
    } else if let Ok(dict) = v.cast_exact::<PyDict>() {
        mp::map(out, dict.len());
        for (k, item) in dict.iter() {
            value(out, &k, depth + 1)?;
            value(out, &item, depth + 1)?;
        }
    } else {
        return Err(PyTypeError::new_err("no msgpack form here"));
    }
    Ok(())
}

fn values(out: &mut Vec<u8>, items: &[&Bound<'_, PyAny>]) -> PyResult<()> {
    for item in items {
        value(out, item, 0)?;
    }
    Ok(())
}

#[pymethods]
impl PySpanRecorder {
    #[new]
    fn new(urandom: Py<PyAny>, root_bound: u128, batch: usize) -> Self {
        Self {
            urandom,
            root_bound,
            batch: batch.max(1),
            state: Mutex::new(State {
                ids: IdPool::default(),
                frame: Frame::default(),
                forked: false,
            }),
        }
    }

    /// A request's 32 random bytes: trace id, server span id, first client span id.
    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.slot(py)?))
    }

    /// The request's server span as a root (sampled by the root sampler's bound), or None when
    /// the request's headers (ASGI: a list of `(name, value)` byte pairs) carry W3C trace
    /// context, which the SDK's propagator reads (gateway/tracing/otel.py).
    fn start(&self, py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<Option<PyServerSpan>> {
        let is_context = |pair: &Bound<'_, PyAny>| -> PyResult<bool> {
            let name = match pair.cast::<PyTuple>() {
                Ok(t) => t.get_item(0)?,
                Err(_) => pair.get_item(0)?,
            };
            Ok(name
                .cast::<PyBytes>()
                .is_ok_and(|n| matches!(n.as_bytes(), b"traceparent" | b"tracestate")))
        };
        if let Ok(list) = headers.cast::<PyList>() {
            for pair in list.iter() {
                if is_context(&pair)? {
                    return Ok(None);
                }
            }
        } else {
            for pair in headers.try_iter()? {
                if is_context(&pair?)? {
                    return Ok(None);
                }
            }
        }
        let ids = self.slot(py)?;
        Ok(Some(PyServerSpan::root(py, &ids, self.root_bound)))
    }

    /// An attempt's client span: the server span's spare id for the first, a new one after.
    fn client(
        &self,
        py: Python<'_>,
        server: Py<PyServerSpan>,
        target: Py<PyAny>,
        attempt: u64,
    ) -> PyResult<PyClientSpan> {
        let span = server.get();
        let span_id = match span.spare {
            Some(spare) if !span.spare_taken.swap(true, Ordering::Relaxed) => spare,
            _ => {
                let mut fresh = [0u8; 8];
                fresh.copy_from_slice(&self.slot(py)?[24..]);
                fresh
            }
        };
        Ok(PyClientSpan {
            server,
            span_id,
            start_ns: mp::now_ns(),
            target,
            attempt,
        })
    }

    /// The server span's row (`rows.HEAD` + `rows.SERVER`, ended now), when it is sampled;
    /// true when the frame should be attended to (full, or the process forked).
    #[allow(clippy::too_many_arguments)] // one call per span, the request's raw values
    #[pyo3(signature = (span, method, route, status, operation, request_model, model,
        provider_kind, provider, account_id, cache, prompt_tokens, completion_tokens, cost_usd,
        finish_reasons))]
    fn end_server(
        &self,
        span: &Bound<'_, PyServerSpan>,
        method: &Bound<'_, PyAny>,
        route: &Bound<'_, PyAny>,
        status: &Bound<'_, PyAny>,
        operation: &Bound<'_, PyAny>,
        request_model: &Bound<'_, PyAny>,
        model: &Bound<'_, PyAny>,
        provider_kind: &Bound<'_, PyAny>,
        provider: &Bound<'_, PyAny>,
        account_id: &Bound<'_, PyAny>,
        cache: &Bound<'_, PyAny>,
        prompt_tokens: &Bound<'_, PyAny>,
        completion_tokens: &Bound<'_, PyAny>,
        cost_usd: &Bound<'_, PyAny>,
        finish_reasons: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let span = span.get();
        if span.flags & SAMPLED == 0 {
            return Ok(false);
        }
        let end_ns = mp::now_ns();
        self.row(|out| {
            head(out, SERVER, 23, span, span.span_id);
            match span.parent_id {
                Some(p) => mp::bin(out, &p),
                None => mp::nil(out),
            }
            mp::boolean(out, span.parent_remote);
            mp::uint(out, u64::from(span.parent_flags));
            state_value(out, span.state.as_deref());
            mp::int(out, span.start_ns);
            mp::int(out, end_ns);
            values(
                out,
                &[
                    method,
                    route,
                    status,
                    operation,
                    request_model,
                    model,
                    provider_kind,
                    provider,
                    account_id,
                    cache,
                    prompt_tokens,
                    completion_tokens,
                    cost_usd,
                    finish_reasons,
                ],
            )
        })
    }

    /// A client span's row (`rows.HEAD` + `rows.CLIENT`, ended now), when it is sampled; true
    /// when the frame should be attended to.
    #[allow(clippy::too_many_arguments)] // one call per span, the attempt's raw values
    fn end_client(
        &self,
        span: &Bound<'_, PyClientSpan>,
        operation: &Bound<'_, PyAny>,
        provider_kind: &Bound<'_, PyAny>,
        upstream_model: &Bound<'_, PyAny>,
        model_id: &Bound<'_, PyAny>,
        deployment: &Bound<'_, PyAny>,
        error: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let client = span.get();
        let server = client.server.get();
        if server.flags & SAMPLED == 0 {
            return Ok(false);
        }
        let end_ns = mp::now_ns();
        self.row(|out| {
            head(out, CLIENT, 16, server, client.span_id);
            mp::bin(out, &server.span_id);
            mp::boolean(out, false);
            mp::uint(out, u64::from(server.flags));
            state_value(out, server.state.as_deref());
            mp::int(out, client.start_ns);
            mp::int(out, end_ns);
            values(
                out,
                &[
                    operation,
                    provider_kind,
                    upstream_model,
                    model_id,
                    deployment,
                ],
            )?;
            mp::uint(out, client.attempt);
            value(out, error, 0)
        })
    }

    /// A row msgspec encoded (one msgpack array); true when the frame should be attended to.
    fn push(&self, row: &[u8]) -> PyResult<bool> {
        self.row(|out| {
            out.extend_from_slice(row);
            Ok(())
        })
    }

    /// The rows gathered, as one msgpack frame, with their count; the frame emptied. None when
    /// no row is gathered.
    fn take<'py>(&self, py: Python<'py>) -> Option<(usize, Bound<'py, PyBytes>)> {
        let (count, frame) = {
            let mut state = self.state();
            let count = state.frame.count;
            (count, state.frame.take()?)
        };
        Some((count, PyBytes::new(py, &frame)))
    }

    /// After a fork: the parent's ids and rows are not this process's (two workers never hand
    /// out the same ids, nor send the same rows); the next ended span says so.
    fn forget(&self) {
        let mut state = self.state();
        state.ids.forget();
        state.frame = Frame::default();
        state.forked = true;
    }

    fn __len__(&self) -> usize {
        self.state().frame.count
    }
}
