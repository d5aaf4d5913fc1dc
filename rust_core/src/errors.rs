//! The one error type of the core. `py.rs` turns each variant into a typed Python exception.

use std::fmt;

/// Every failure the core reports. No variant carries upstream secrets: messages name sizes,
/// positions and JSON errors only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// The upstream stream is malformed (not SSE, not JSON where JSON is required) or one event is
    /// larger than the configured bound. Python: `SseError` (a `ValueError`).
    Sse(String),
    /// The binary AWS event stream is corrupted (a prelude or message CRC mismatch, impossible
    /// lengths, a malformed header). Python: `EventStreamError` (an `SseError`).
    EventStream(String),
    /// The upstream stream ended before its terminator. Python: `UpstreamStreamError`.
    StreamCutOff(String),
    /// A caller-supplied argument is invalid (unknown reframer kind). Python: `ValueError`.
    InvalidArgument(String),
    /// A chained reframer's second stage could not translate what the first one wrote (e.g. a
    /// tool call continued after another output item began). Python: `TranslationError` (an
    /// `SseError`).
    Translation(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sse(m)
            | Self::EventStream(m)
            | Self::StreamCutOff(m)
            | Self::InvalidArgument(m)
            | Self::Translation(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CoreError {}
