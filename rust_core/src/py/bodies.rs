//! The OpenAI chat bodies' one-scan rewrites (`crate::openai_body`) for the providers.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::DETACH_ABOVE;
use crate::{anthropic_body, chat_request, gemini_body, json_depth, openai_body};

/// `work` on `body`, with the interpreter detached when the body is large enough for that to
/// pay (`DETACH_ABOVE`).
fn scan<T: Send>(py: Python<'_>, body: &[u8], work: impl FnOnce() -> T + Send) -> T {
    if body.len() > DETACH_ABOVE {
        py.detach(work)
    } else {
        work()
    }
}

/// The client's chat body for an OpenAI-shaped upstream, or `None`: the caller parses it then.
#[pyfunction]
pub fn openai_chat_request<'py>(
    py: Python<'py>,
    body: &[u8],
    model: &str,
    default_max_tokens: u64,
    stream: bool,
) -> Option<Bound<'py, PyBytes>> {
    let out = scan(py, body, || {
        openai_body::request(body, model, default_max_tokens, stream)
    })?;
    Some(PyBytes::new(py, &out))
}

/// The client's chat body translated for an Anthropic upstream, or `None`: the caller
/// translates it in Python then.
#[pyfunction]
pub fn anthropic_chat_request<'py>(
    py: Python<'py>,
    body: &[u8],
    model: &str,
    default_max_tokens: u64,
    stream: bool,
) -> Option<Bound<'py, PyBytes>> {
    let out = scan(py, body, || {
        anthropic_body::request(body, model, default_max_tokens, stream)
    })?;
    Some(PyBytes::new(py, &out))
}

/// The client's chat body translated for a Gemini upstream, or `None`: the caller translates
/// it in Python then.
#[pyfunction]
pub fn gemini_chat_request<'py>(
    py: Python<'py>,
    body: &[u8],
    default_max_tokens: u64,
) -> Option<Bound<'py, PyBytes>> {
    let out = scan(py, body, || gemini_body::request(body, default_max_tokens))?;
    Some(PyBytes::new(py, &out))
}

/// The upstream's chat answer with `model` renamed, and its four token counts; or `None`: the
/// caller parses it then.
#[pyfunction]
#[allow(clippy::type_complexity)] // the tuple Python unpacks
pub fn openai_chat_answer<'py>(
    py: Python<'py>,
    body: &[u8],
    model: &str,
) -> Option<(Bound<'py, PyBytes>, u64, u64, u64, u64)> {
    let read = scan(py, body, || openai_body::answer(body, model))?;
    let [prompt, completion, cached, written] = read.usage;
    Some((
        PyBytes::new(py, &read.body),
        prompt,
        completion,
        cached,
        written,
    ))
}

/// How deep `body`'s objects and arrays nest, counted up to `limit + 1` (`crate::json_depth`).
#[pyfunction]
pub fn json_nesting_depth(py: Python<'_>, body: &[u8], limit: usize) -> usize {
    scan(py, body, || json_depth::nesting_depth(body, limit))
}

/// Where `body`'s messages are and the prompt's counts over them, or `None`
/// (`crate::chat_request`): `(start, end, chars, images, parts, messages, tool chars)`.
#[pyfunction]
#[allow(clippy::type_complexity)] // (the tuple Python unpacks)
pub fn chat_request_messages(
    py: Python<'_>,
    body: &[u8],
) -> Option<(usize, usize, u64, u64, u64, u64, Option<u64>)> {
    let read = scan(py, body, || chat_request::read(body))?;
    let (start, end) = read.messages;
    Some((
        start,
        end,
        read.chars,
        read.images,
        read.parts,
        read.count,
        read.tool_chars,
    ))
}
