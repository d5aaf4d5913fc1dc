//! Per-provider reframers: upstream SSE events in, OpenAI `chat.completion.chunk` events out.
//!
//! [`Stream`] owns the SSE parser, the shared [`StreamState`] and one provider's [`Reframe`]
//! implementation. Each provider module knows only its own wire format (framing lives with the
//! provider); the output side is shared through [`ChunkWriter`].

mod anthropic;
mod anthropic_passthrough;
mod anthropic_scan;
mod bedrock;
mod bedrock_scan;
mod chunk_scan;
mod gemini;
mod gemini_scan;
mod gemini_shape;
mod openai;
mod openai_scan;
#[cfg(test)]
mod stream_edits;
mod to_anthropic;
mod to_responses;

use std::borrow::Cow;

use crate::errors::CoreError;
use crate::eventstream::{EventStreamDecoder, Message};
use crate::json;
use crate::sse::{Event, Flow, SseParser};
use crate::usage::Usage;

pub use anthropic::AnthropicReframer;
pub use anthropic_passthrough::AnthropicPassthrough;
pub use bedrock::BedrockReframer;
pub use gemini::GeminiReframer;
pub use openai::OpenAiReframer;
pub use to_anthropic::{map_finish_reason, ToAnthropicReframer};
pub use to_responses::ToResponsesReframer;

/// The OpenAI terminator event.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// What every reframer reports besides its output bytes.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    /// Usage extracted from the upstream (last report wins).
    pub usage: Option<Usage>,
    /// The finish reason, in OpenAI vocabulary.
    pub finish_reason: Option<String>,
    /// `(type or status, message)` of an in-stream upstream error event.
    pub upstream_error: Option<(String, String)>,
    /// Characters of content and tool-call arguments relayed so far.
    pub content_chars: u64,
    /// The terminator was seen and `[DONE]` emitted.
    pub done: bool,
}

impl StreamState {
    /// After the terminator or an upstream error, further input is ignored.
    pub fn closed(&self) -> bool {
        self.done || self.upstream_error.is_some()
    }
}

/// Options shared by every reframer.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway's catalog id, written into every chunk's `model`.
    pub model: String,
    /// The id of every emitted chunk (providers that have no OpenAI id).
    pub response_id: String,
    /// The `created` of every emitted chunk (providers that have no OpenAI created).
    pub created: i64,
    /// Whether the client asked for the final usage chunk.
    pub include_usage: bool,
    /// A JSON object whose members every Responses API `response` object carries (the
    /// request's echoed fields); only `openai_to_responses` reads it. `{}` for none.
    pub response_fields: String,
}

/// One provider's translation of SSE events.
pub trait Reframe {
    /// Handles one upstream event, appending complete OpenAI SSE events to `out`.
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError>;

    /// Handles upstream EOF (after the parser's pending event). Errors when the stream was cut.
    fn on_eof(&mut self, st: &mut StreamState, out: &mut Vec<u8>) -> Result<(), CoreError>;
}

/// The reframer kinds, dispatched statically.
#[derive(Debug)]
enum Kind {
    OpenAi(OpenAiReframer),
    Anthropic(AnthropicReframer),
    Gemini(GeminiReframer),
    /// Bedrock `ConverseStream` (binary event stream framing, not SSE).
    Bedrock(BedrockReframer),
    /// OpenAI chunks in, Anthropic Messages events out (`/v1/messages`, translated models).
    ToAnthropic(ToAnthropicReframer),
    /// Anthropic events relayed as Anthropic events (`/v1/messages`, `anthropic/…` models).
    AnthropicPassthrough(AnthropicPassthrough),
    /// OpenAI chunks in, Responses API events out (`/v1/responses`).
    ToResponses(ToResponsesReframer),
}

impl Kind {
    fn as_reframe(&mut self) -> &mut dyn Reframe {
        match self {
            Self::OpenAi(r) => r,
            Self::Anthropic(r) => r,
            Self::Gemini(r) => r,
            Self::Bedrock(r) => r,
            Self::ToAnthropic(r) => r,
            Self::AnthropicPassthrough(r) => r,
            Self::ToResponses(r) => r,
        }
    }
}

/// How the upstream frames its events: SSE, or AWS event stream messages (Bedrock), which are
/// handed to the reframer as events (`event` = the event or exception type, `id` = the
/// `:message-type`, `data` = the payload).
#[derive(Debug)]
enum Framing {
    Sse(SseParser),
    EventStream(EventStreamDecoder),
}

type Sink<'s> = dyn FnMut(&Event<'_>) -> Result<Flow, CoreError> + 's;

impl Framing {
    fn push(&mut self, data: &[u8], sink: &mut Sink<'_>) -> Result<Flow, CoreError> {
        match self {
            Self::Sse(parser) => parser.push(data, &mut |ev: &Event<'_>| sink(ev)),
            Self::EventStream(decoder) => {
                decoder.push(data, &mut |m: &Message<'_>| sink(&message_event(m)?))
            }
        }
    }

    fn finish(&mut self, sink: &mut Sink<'_>) -> Result<Flow, CoreError> {
        match self {
            Self::Sse(parser) => parser.finish(&mut |ev: &Event<'_>| sink(ev)),
            Self::EventStream(decoder) => decoder.finish(),
        }
    }

    fn buffered_bytes(&self) -> usize {
        match self {
            Self::Sse(parser) => parser.buffered_bytes(),
            Self::EventStream(decoder) => decoder.buffered_bytes(),
        }
    }
}

fn message_event<'m>(m: &'m Message<'_>) -> Result<Event<'m>, CoreError> {
    let message_type = m.header_str(":message-type")?.unwrap_or("event");
    let name = if message_type == "event" {
        m.header_str(":event-type")?
    } else {
        match m.header_str(":exception-type")? {
            Some(kind) => Some(kind),
            None => m.header_str(":error-code")?,
        }
    };
    let data = std::str::from_utf8(m.payload)
        .map_err(|_| CoreError::EventStream("event stream payload is not UTF-8".to_owned()))?;
    Ok(Event {
        event: Cow::Borrowed(name.unwrap_or("")),
        data: Cow::Borrowed(data),
        id: Cow::Borrowed(message_type),
        one_line: false,
    })
}

/// The first chunk of choice 0, carrying nothing: it makes a reframer that reads the gateway's
/// OpenAI chunks write its opening events (`message_start`; `response.created` and
/// `response.in_progress`) before any upstream input.
pub const OPENING: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{}}]}\n\n";

/// An upstream stream being reframed: parser + state + provider reframer, and optionally a
/// second reframer that the first one's output goes through before it is returned.
#[derive(Debug)]
pub struct Stream {
    parser: Framing,
    state: StreamState,
    kind: Kind,
    /// A parse error is sticky: every later call returns it again.
    failed: Option<CoreError>,
    then: Option<Box<Chained>>,
    /// Events of a numbering reframer's (`openai_to_responses`) in the output of the calls
    /// that succeeded (a failed call's events are not counted: its caller sends none of them).
    returned: u64,
}

/// The second stage of a chained stream (`Stream::chained`): a reframer of the gateway's own
/// OpenAI chunks, fed what the first stage wrote in the same call (one crossing per upstream
/// read for both).
#[derive(Debug)]
struct Chained {
    stream: Stream,
    /// The first stage's output of the call in progress (empty between calls).
    mid: Vec<u8>,
    /// Events of this stage's in the output returned so far, if it numbers them (a call that
    /// failed in this stage returns none of its events).
    events: Option<u64>,
}

impl Chained {
    /// Feeds the first stage's output through, after `first` (the first stage's result, whose
    /// whole events before a failure are in `mid`). A failure of this stage's drops every
    /// event of the call (`out` back to `start`): it is a [`CoreError::Translation`].
    fn pass(
        &mut self,
        first: Result<(), CoreError>,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), CoreError> {
        let second = self.stream.feed(&self.mid, out);
        self.mid.clear();
        if let Err(e) = second {
            out.truncate(start);
            return Err(CoreError::Translation(e.to_string()));
        }
        self.events = self.stream.events_written();
        first
    }
}

impl Stream {
    /// `kind` is `"openai"`, `"anthropic"`, `"gemini"` or `"bedrock"` (upstream → OpenAI chunks),
    /// or `"openai_to_anthropic"` / `"anthropic_passthrough"` (→ Anthropic Messages events), or
    /// `"openai_to_responses"` (the gateway's OpenAI chunks → Responses API events).
    pub fn new(kind: &str, opts: &Options, max_event_bytes: usize) -> Result<Self, CoreError> {
        let framing = if kind == "bedrock" {
            Framing::EventStream(EventStreamDecoder::new(max_event_bytes))
        } else {
            Framing::Sse(SseParser::new(max_event_bytes))
        };
        let kind = match kind {
            "openai" => Kind::OpenAi(OpenAiReframer::new(opts)),
            "anthropic" => Kind::Anthropic(AnthropicReframer::new(opts)),
            "gemini" => Kind::Gemini(GeminiReframer::new(opts)),
            "bedrock" => Kind::Bedrock(BedrockReframer::new(opts)),
            "openai_to_anthropic" => Kind::ToAnthropic(ToAnthropicReframer::new(opts)),
            "anthropic_passthrough" => Kind::AnthropicPassthrough(AnthropicPassthrough::new(opts)),
            "openai_to_responses" => Kind::ToResponses(ToResponsesReframer::new(opts)?),
            other => {
                return Err(CoreError::InvalidArgument(format!(
                    "unknown reframer kind {other:?} (expected openai, anthropic, gemini, \
                     bedrock, openai_to_anthropic, anthropic_passthrough or openai_to_responses)"
                )))
            }
        };
        Ok(Self {
            parser: framing,
            state: StreamState::default(),
            kind,
            failed: None,
            then: None,
            returned: 0,
        })
    }

    /// A `kind` stream (upstream → OpenAI chunks) whose output goes through a `then` reframer
    /// (`"openai_to_responses"` or `"openai_to_anthropic"`: OpenAI chunks → a route's events)
    /// in the same call. State, usage and errors are the first stage's; a failure of the
    /// second's is a [`CoreError::Translation`]. `open` gets the second stage's opening events.
    pub fn chained(
        kind: &str,
        then: &str,
        opts: &Options,
        max_event_bytes: usize,
        open: &mut Vec<u8>,
    ) -> Result<Self, CoreError> {
        let readers = ["openai_to_responses", "openai_to_anthropic"];
        if !readers.contains(&then) || readers.contains(&kind) || kind == "anthropic_passthrough" {
            return Err(CoreError::InvalidArgument(format!(
                "cannot chain {kind:?} into {then:?} (expected an upstream kind into \
                 openai_to_responses or openai_to_anthropic)"
            )));
        }
        let mut second = Stream::new(then, opts, max_event_bytes)?;
        second.feed(OPENING, open)?;
        let mut first = Stream::new(kind, opts, max_event_bytes)?;
        first.then = Some(Box::new(Chained {
            events: second.events_written(),
            stream: second,
            mid: Vec::new(),
        }));
        Ok(first)
    }

    /// Events written by a reframer that numbers them (`openai_to_responses`), or, for a
    /// chained stream, those of its second stage in the output returned so far.
    pub fn events_written(&self) -> Option<u64> {
        match (&self.then, &self.kind) {
            (Some(then), _) => then.events,
            (None, Kind::ToResponses(_)) => Some(self.returned),
            (None, _) => None,
        }
    }

    /// The Responses API response object of the stream's `response.completed` (or
    /// `response.incomplete`) event, once written (the last stage's, for a chained stream).
    pub fn final_response(&self) -> Option<&[u8]> {
        match (&self.then, &self.kind) {
            (Some(then), _) => then.stream.final_response(),
            (None, Kind::ToResponses(r)) => r.final_response(),
            (None, _) => None,
        }
    }

    /// The state reported so far.
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// Whether the stream ended whole: the terminator read, no upstream error, and no failure
    /// (of a chained stream's second stage either).
    pub fn finished(&self) -> bool {
        self.state.done
            && self.state.upstream_error.is_none()
            && self.failed.is_none()
            && self.then.as_ref().is_none_or(|t| t.stream.failed.is_none())
    }

    /// Bytes buffered by the parser (bounded by `max_event_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        self.parser.buffered_bytes()
    }

    /// Feeds one upstream chunk (any boundary); appends complete OpenAI events to `out`.
    /// On error, `out` holds the whole events of this chunk that precede the error (nothing
    /// of the failing event's): they go out before the error, as they would had the error come
    /// in a later chunk.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CoreError> {
        // About what the events take again (a stream's first piece grew an empty `out` by
        // doubling: a whole 8 KB body, a dozen reallocations and their copies).
        out.reserve(data.len() + data.len() / 8);
        let Some(mut then) = self.then.take() else {
            let result = self.run(out, false, |parser, sink| parser.push(data, sink));
            self.count_returned(&result);
            return result;
        };
        let start = out.len();
        let first = self.run(&mut then.mid, false, |parser, sink| parser.push(data, sink));
        let result = then.pass(first, out, start);
        self.then = Some(then);
        result
    }

    /// Upstream EOF: appends final events; errors when the stream was cut off.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), CoreError> {
        let Some(mut then) = self.then.take() else {
            let result = self.run(out, true, |parser, sink| parser.finish(sink));
            self.count_returned(&result);
            return result;
        };
        let start = out.len();
        let first = self.run(&mut then.mid, true, |parser, sink| parser.finish(sink));
        let mut result = then.pass(first, out, start);
        if result.is_ok() && self.state.done {
            // The second stage's own end, once the first wrote its terminator (after an
            // upstream error nothing follows: the route writes its own error events).
            // (Its failure keeps the pass's events: they go out before it, as they would
            // had the second stage's end been asked in a call of its own.)
            match then.stream.finish(out) {
                Ok(()) => then.events = then.stream.events_written(),
                Err(e) => result = Err(CoreError::Translation(e.to_string())),
            }
        }
        self.then = Some(then);
        result
    }

    fn count_returned(&mut self, result: &Result<(), CoreError>) {
        if let (Ok(()), Kind::ToResponses(r)) = (result, &self.kind) {
            self.returned = r.events_written();
        }
    }

    /// Runs the parser over `step`'s input, each event through the reframer, until the stream
    /// closes; at EOF (`at_eof`) lets the reframer finish. A failure is kept: later calls repeat it.
    fn run(
        &mut self,
        out: &mut Vec<u8>,
        at_eof: bool,
        step: impl FnOnce(&mut Framing, &mut Sink<'_>) -> Result<Flow, CoreError>,
    ) -> Result<(), CoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.state.closed() {
            return Ok(());
        }
        let Self {
            parser,
            state,
            kind,
            ..
        } = self;
        let reframe = kind.as_reframe();
        let mut sink = |ev: &Event<'_>| {
            let whole = out.len();
            if let Err(e) = reframe.on_event(ev, state, out) {
                out.truncate(whole); // (a failing event's part written: not an event)
                return Err(e);
            }
            Ok(if state.closed() {
                Flow::Stop
            } else {
                Flow::Continue
            })
        };
        let mut result = step(parser, &mut sink).map(|_| ());
        if at_eof && result.is_ok() && !state.closed() {
            let whole = out.len();
            result = reframe.on_eof(state, out);
            if result.is_err() {
                out.truncate(whole);
            }
        }
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }
}

/// Writes OpenAI chunk events with a fixed id, created and model.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…` (no closing brace).
    head: Vec<u8>,
    /// `head` and a content delta's start, up to its text: `…,"choices":[{"index":0,"delta":{"content":`.
    content_head: Vec<u8>,
}

/// A content delta's end, after its text.
const CONTENT_TAIL: &[u8] = b"},\"finish_reason\":null}]}\n\n";

impl ChunkWriter {
    /// Precomputes the common head of every chunk.
    pub fn new(opts: &Options) -> Self {
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"data: {\"id\":");
        json::write_str(&mut head, &opts.response_id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(opts.created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        json::write_str(&mut head, &opts.model);
        let mut content_head = head.clone();
        content_head.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{\"content\":");
        Self { head, content_head }
    }

    /// One chunk with choice 0: `write_delta` writes the delta object's JSON.
    pub fn chunk(
        &self,
        out: &mut Vec<u8>,
        finish_reason: Option<&str>,
        write_delta: impl FnOnce(&mut Vec<u8>),
    ) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
        write_delta(out);
        out.extend_from_slice(b",\"finish_reason\":");
        match finish_reason {
            Some(r) => json::write_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// A content delta.
    pub fn content(&self, out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&self.content_head);
        json::write_str(out, text);
        out.extend_from_slice(CONTENT_TAIL);
    }

    /// A content delta whose text a JSON reader (the scans, or `serde_json`) read from its
    /// input: borrowed only when the string had no escape, so it holds no byte that `content`
    /// would escape (no quote, backslash or control character: JSON forbids them raw) and is
    /// written as it came, between quotes. The same bytes as `content`'s.
    pub fn content_read(&self, out: &mut Vec<u8>, text: Cow<'_, str>) {
        let plain = match text {
            Cow::Borrowed(plain) => plain,
            Cow::Owned(text) => return self.content(out, &text),
        };
        debug_assert!(!plain.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        out.extend_from_slice(&self.content_head);
        out.push(b'"');
        out.extend_from_slice(plain.as_bytes());
        out.push(b'"');
        out.extend_from_slice(CONTENT_TAIL);
    }

    /// The first chunk: `{"role":"assistant","content":""}`.
    pub fn role(&self, out: &mut Vec<u8>) {
        self.chunk(out, None, |o| {
            o.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
        });
    }

    /// The start of a tool call: id, type, name and empty arguments (or `arguments` when given).
    pub fn tool_call_start(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        self.chunk(out, None, |o| {
            o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"id\":");
            json::write_str(o, id);
            o.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            json::write_str(o, name);
            o.extend_from_slice(b",\"arguments\":");
            json::write_str(o, arguments);
            o.extend_from_slice(b"}}]}");
        });
    }

    /// A fragment of a tool call's arguments.
    pub fn tool_call_arguments(&self, out: &mut Vec<u8>, index: u32, fragment: &str) {
        self.chunk(out, None, |o| {
            o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"function\":{\"arguments\":");
            json::write_str(o, fragment);
            o.extend_from_slice(b"}}]}");
        });
    }

    /// [`Self::tool_call_arguments`] of a fragment given as its JSON string's text, which
    /// `json::write_str` writes as it is (`json::as_written`): copied, not escaped again.
    pub fn tool_call_arguments_written(&self, out: &mut Vec<u8>, index: u32, written: &str) {
        self.chunk(out, None, |o| {
            o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"function\":{\"arguments\":\"");
            o.extend_from_slice(written.as_bytes());
            o.extend_from_slice(b"\"}}]}");
        });
    }

    /// The finish chunk: empty delta and the finish reason.
    pub fn finish(&self, out: &mut Vec<u8>, reason: &str) {
        self.chunk(out, Some(reason), |o| o.extend_from_slice(b"{}"));
    }

    /// The finish chunk of an answer that a stop string ended: `finish_reason: "stop"` and,
    /// as vLLM reports it, the matched string as the choice's `stop_reason`.
    pub fn finish_on_stop_string(&self, out: &mut Vec<u8>, stop: &str) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(
            b",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":",
        );
        json::write_str(out, stop);
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The usage-only chunk (`choices: []`), with `prompt_tokens_details.cached_tokens` when
    /// the upstream read from a cache.
    pub fn usage(&self, out: &mut Vec<u8>, u: &Usage) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b",\"choices\":[],\"usage\":{\"prompt_tokens\":");
        out.extend_from_slice(u.prompt_tokens.to_string().as_bytes());
        out.extend_from_slice(b",\"completion_tokens\":");
        out.extend_from_slice(u.completion_tokens.to_string().as_bytes());
        out.extend_from_slice(b",\"total_tokens\":");
        out.extend_from_slice(u.total_tokens.to_string().as_bytes());
        // Cache reads as OpenAI reports them (the non-streamed answers carry them too), so that
        // a client of the stream, or the Messages API reframer after it, can see them.
        if u.cached_tokens > 0 {
            out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
            out.extend_from_slice(u.cached_tokens.to_string().as_bytes());
            out.push(b'}');
        }
        // Cache writes have no OpenAI field: named as Anthropic (and LiteLLM) name them.
        if u.cache_write_tokens > 0 {
            out.extend_from_slice(b",\"cache_creation_input_tokens\":");
            out.extend_from_slice(u.cache_write_tokens.to_string().as_bytes());
        }
        out.extend_from_slice(b"}}\n\n");
    }

    /// The end of a stream: the usage chunk when asked for, then `[DONE]`.
    pub fn end(&self, out: &mut Vec<u8>, st: &mut StreamState, include_usage: bool) {
        if include_usage {
            self.usage(out, &st.usage.unwrap_or_default());
        }
        out.extend_from_slice(DONE_EVENT);
        st.done = true;
    }
}

/// Parses an event's JSON, turning a syntax error into [`CoreError::Sse`].
pub(crate) fn parse<'a, T: serde::Deserialize<'a>>(
    provider: &str,
    data: &'a str,
) -> Result<T, CoreError> {
    serde_json::from_str(data)
        .map_err(|e| CoreError::Sse(format!("malformed {provider} stream event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::{ChunkWriter, Cow, Options};

    #[test]
    fn a_content_delta_read_from_its_input_is_written_as_content_writes_it() {
        let opts = Options {
            model: "m\"x".to_owned(),
            response_id: "id".to_owned(),
            created: 7,
            include_usage: false,
            response_fields: "{}".to_owned(),
        };
        let writer = ChunkWriter::new(&opts);
        for text in ["plain é 😀", "a \"quote\"\n\\ and \u{1}"] {
            let (mut read, mut written) = (Vec::new(), Vec::new());
            let cow: Cow<'_, str> = if text.contains(['"', '\\', '\n']) {
                Cow::Owned(text.to_owned())
            } else {
                Cow::Borrowed(text)
            };
            writer.content_read(&mut read, cow);
            writer.content(&mut written, text);
            assert_eq!(read, written);
        }
    }
}
