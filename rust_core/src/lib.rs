//! Klawd Gateway's hot path: pure Rust modules, with the PyO3 shell in `py.rs`.
//!
//! - [`sse`]: incremental SSE parser.
//! - [`head`]: an HTTP/1.1 answer's plain head read in one call (the client's).
//! - [`chunked`]: an HTTP/1.1 chunked body read incrementally (an event stream's, in the client).
//! - [`eventstream`]: incremental AWS event stream decoder (Bedrock `ConverseStream`).
//! - [`reframe`]: per-provider reframers to OpenAI chunks ([`reframe::Stream`]).
//! - [`openai_body`]: the single answer's OpenAI bodies rewritten by one scan.
//! - [`json_depth`]: how deep a request body's JSON nests (its bound's check).
//! - [`anthropic_body`]: the client's chat body translated to an Anthropic Messages body by one
//!   scan.
//! - [`gemini_body`]: the same for a Gemini `GenerateContentRequest` (both read the body with
//!   `chat_body`'s readers).
//! - [`limiter`]: token buckets and daily quotas under one keyed, bounded map.
//! - [`histogram`]: a histogram child's pending observations (the metrics buffer's).
//! - [`totals`]: the request path's running totals (counters, histograms), one update a
//!   request at its end.
//! - [`ids`]: non-secret ids (request, answer, ledger entry) cut from buffered random bytes.
//! - [`admission`]: the embedded store's admission (limits, credit, key budgets) in one call.
//! - [`spans`]: the trace span recorder's msgpack rows, ids and `traceparent`.

pub mod admission;
pub mod anthropic_body;
pub mod bucket;
mod chat_body;
pub mod chat_request;
pub mod chunked;
pub mod errors;
pub mod eventstream;
pub mod gemini_body;
pub mod head;
pub mod histogram;
pub mod ids;
mod json;
pub mod json_depth;
mod json_scan;
pub mod limiter;
pub mod openai_body;
pub mod quota;
pub mod reframe;
pub mod spans;
pub mod sse;
pub mod totals;
pub mod usage;

#[cfg(feature = "python")]
mod py;

/// Version of the core crate, exported to Python as `gateway._core.__version__`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
