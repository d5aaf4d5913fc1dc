//! OpenAI chunks → Anthropic Messages events, for `POST /v1/messages` on non-Anthropic models.
//!
//! The input is the gateway's own OpenAI chunk stream (what the `openai` and `gemini` reframers
//! emit), so every upstream kind reaches the Messages API through one translation. Output, one
//! `event: <name>\ndata: <one-line JSON>\n\n` per event:
//!
//! - the first chunk → `message_start` (empty content, usage zero: OpenAI reports usage last);
//! - `delta.content` → a `text` block (`content_block_start`, then `text_delta`s);
//! - `delta.tool_calls[i]` with a new index → a `tool_use` block (id, name, `input: {}`), and its
//!   `function.arguments` fragments → `input_json_delta`s;
//! - a new block closes the open one with `content_block_stop`;
//! - `finish_reason` → the `stop_reason` (stop → `end_turn`, length → `max_tokens`,
//!   `tool_calls` → `tool_use`, `content_filter` → `refusal`); stop with a string
//!   `stop_reason` in the choice (vLLM's report of the stop string that ended the text) →
//!   `stop_sequence`, that string as `stop_sequence`;
//! - the usage chunk → usage; `[DONE]` → `content_block_stop` of the open block,
//!   `message_delta` (stop reason + usage) and `message_stop`.
//!
//! Parallel tool calls may arrive interleaved by `index` (OpenAI-shaped servers may send
//! fragments of calls 0 and 1 alternately), while Anthropic's blocks are sequential and an
//! OpenAI stream never says that a call is complete. So once a `tool_use` block is open it
//! stays open until the finish: its own fragments stream at once, and everything else (other
//! calls, text) is buffered in arrival order and written, fragment for fragment, as blocks of
//! its own after it. Only choice 0 is read (the route never asks for `n` > 1). A delta after
//! the finish for a call already written is a malformed stream (`CoreError::Sse`).
//!
//! A chunk is read by one validating scan (`chunk_scan.rs`) into the typed view below; one the
//! scan cannot read exactly as `serde_json` would is read by `serde_json`, which decides, errors
//! included. The Responses API reframer reads its chunks the same way.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{chunk_scan, parse, Options, Reframe, StreamState};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::{OpenAiUsage, Usage};

#[derive(Debug, Deserialize)]
pub(super) struct ChunkView<'a> {
    #[serde(borrow, default)]
    pub(super) choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    pub(super) usage: Option<OpenAiUsage>,
    #[serde(borrow, default)]
    pub(super) error: Option<&'a RawValue>,
}

impl<'a> ChunkView<'a> {
    /// A chunk read by the scan (`chunk_scan.rs`), or by the typed `serde_json` view when the
    /// scan cannot tell: the reference, errors included.
    pub(super) fn read(data: &'a str, prefix: &mut chunk_scan::Prefix) -> Result<Self, CoreError> {
        match chunk_scan::read_with(data, prefix) {
            Some(chunk) => Ok(chunk),
            None => parse("openai", data),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(default)]
    pub(super) index: Option<u64>,
    #[serde(borrow, default)]
    pub(super) delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
    /// vLLM: the stop string (or stop token id, a number) that ended the text.
    #[serde(borrow, default)]
    pub(super) stop_reason: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Delta<'a> {
    #[serde(borrow, default)]
    pub(super) content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ToolCall<'a> {
    #[serde(default)]
    pub(super) index: Option<u32>,
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) function: Option<Function<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Function<'a> {
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<Arguments<'a>>,
}

/// A tool call's `arguments` fragment, as the writers need it: escaped JSON text in a JSON
/// string, which they write into a string again. The scan (`chunk_scan.rs`) keeps a fragment
/// that `json::write_str` writes back as it came (`json::as_written`) as that text, copied
/// rather than unescaped and escaped again; the typed view reads its value.
pub(super) enum Arguments<'a> {
    /// The JSON string's text between its quotes, as `json::write_str` writes it, and the
    /// characters of its value.
    Written(&'a str, u64),
    /// The string's value.
    Value(Cow<'a, str>),
}

impl Arguments<'_> {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Self::Written(text, _) => text.is_empty(),
            Self::Value(value) => value.is_empty(),
        }
    }

    /// The characters of the value, as relayed text is counted.
    pub(super) fn chars(&self) -> u64 {
        match self {
            Self::Written(_, chars) => *chars,
            Self::Value(value) => json::char_count(value),
        }
    }

    /// Appends the text `json::write_str` writes between the quotes.
    pub(super) fn write_escaped(&self, out: &mut Vec<u8>) {
        match self {
            Self::Written(text, _) => out.extend_from_slice(text.as_bytes()),
            Self::Value(value) => json::write_escaped(out, value),
        }
    }
}

/// The value, either way: the scan's reading and the typed view's print alike (their tests
/// compare the two by their debug text).
impl std::fmt::Debug for Arguments<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Written(text, _) => {
                let value = crate::json_scan::unescape(text).ok_or(std::fmt::Error)?;
                write!(f, "{value:?}")
            }
            Self::Value(value) => write!(f, "{value:?}"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Arguments<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Arguments<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Arguments::Value(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Arguments::Value(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// The `(type, message)` of an OpenAI-shaped chunk's `error` member, for
/// `StreamState::upstream_error` (`type` falls back to `code`, then to `"error"`).
pub(super) fn upstream_error(raw: &RawValue) -> (String, String) {
    let (kind, message) = match serde_json::from_str::<ErrorBody<'_>>(raw.get()) {
        Ok(e) => (e.kind.or(e.code), e.message),
        Err(_) => (None, None),
    };
    (
        kind.map_or_else(|| "error".to_owned(), Cow::into_owned),
        message.map(Cow::into_owned).unwrap_or_default(),
    )
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn map_finish_reason(reason: &str) -> &'static str {
    match reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        // stop and anything new. OpenAI does not say whether a stop sequence ended the text.
        _ => "end_turn",
    }
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// A `tool_use` block for this OpenAI tool-call index.
    Tool(u32),
}

/// A block held back while a `tool_use` block is open: its start and its fragments in order.
#[derive(Debug)]
struct Pending {
    /// `Open::Text` or `Open::Tool(index)`.
    kind: Open,
    id: String,
    name: String,
    /// Each fragment's text as `json::write_str` writes it between the quotes.
    fragments: Vec<Vec<u8>>,
}

/// Reframer from the gateway's OpenAI chunks to Anthropic Messages events.
#[derive(Debug)]
pub struct ToAnthropicReframer {
    /// `{"type":"message_start","message":{…}}` written once, precomputed.
    message_start: Vec<u8>,
    started: bool,
    open: Open,
    /// Index of the next content block.
    next_block: u32,
    /// OpenAI tool-call indices whose block was opened or is pending (in order).
    tools_seen: Vec<u32>,
    /// Blocks that arrived while a `tool_use` block was open, in arrival order.
    pending: Vec<Pending>,
    stop_reason: Option<&'static str>,
    /// The stop string that ended the text, when the upstream said (vLLM's `stop_reason`).
    stop_sequence: Option<String>,
    /// The chunks' shared first members, scanned once (`chunk_scan::Prefix`).
    prefix: chunk_scan::Prefix,
}

fn write_event(out: &mut Vec<u8>, name: &str, write_data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_data(out);
    out.extend_from_slice(b"\n\n");
}

impl ToAnthropicReframer {
    /// `opts.response_id` becomes the message id, `opts.model` its model.
    pub fn new(opts: &Options) -> Self {
        let mut start = Vec::with_capacity(256);
        start.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
        json::write_str(&mut start, &opts.response_id);
        start.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        json::write_str(&mut start, &opts.model);
        start.extend_from_slice(
            b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\
              \"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}",
        );
        Self {
            message_start: start,
            started: false,
            open: Open::None,
            next_block: 0,
            tools_seen: Vec::new(),
            pending: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            prefix: chunk_scan::Prefix::default(),
        }
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let start = &self.message_start;
            write_event(out, "message_start", |o| o.extend_from_slice(start));
        }
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            let index = self.next_block - 1;
            write_event(out, "content_block_stop", |o| {
                o.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
                o.extend_from_slice(index.to_string().as_bytes());
                o.push(b'}');
            });
            self.open = Open::None;
        }
    }

    /// Opens a block: closes the open one, writes `content_block_start` with `block` as the
    /// `content_block` JSON.
    fn open_block(&mut self, out: &mut Vec<u8>, open: Open, block: impl FnOnce(&mut Vec<u8>)) {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = open;
        write_event(out, "content_block_start", |o| {
            o.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"content_block\":");
            block(o);
            o.push(b'}');
        });
    }

    /// A `content_block_delta` of the open block; `delta` writes the delta's JSON.
    fn delta(&self, out: &mut Vec<u8>, delta: impl FnOnce(&mut Vec<u8>)) {
        let index = self.next_block - 1;
        write_event(out, "content_block_delta", |o| {
            o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"delta\":");
            delta(o);
            o.push(b'}');
        });
    }

    fn text(&mut self, out: &mut Vec<u8>, st: &mut StreamState, text: &str) {
        if text.is_empty() {
            return;
        }
        st.content_chars += json::char_count(text);
        if matches!(self.open, Open::Tool(_)) {
            let mut fragment = Vec::with_capacity(text.len());
            json::write_escaped(&mut fragment, text);
            match self.pending.last_mut() {
                Some(last) if last.kind == Open::Text => last.fragments.push(fragment),
                _ => self.pending.push(Pending {
                    kind: Open::Text,
                    id: String::new(),
                    name: String::new(),
                    fragments: vec![fragment],
                }),
            }
            return;
        }
        self.write_text(out, |o| json::write_escaped(o, text));
    }

    /// A `text_delta` (opening a text block if none is open); `text` appends its text as
    /// `json::write_str` writes it between the quotes.
    fn write_text(&mut self, out: &mut Vec<u8>, text: impl FnOnce(&mut Vec<u8>)) {
        if self.open != Open::Text {
            self.open_block(out, Open::Text, |o| {
                o.extend_from_slice(b"{\"type\":\"text\",\"text\":\"\"}");
            });
        }
        self.delta(out, |o| {
            o.extend_from_slice(b"{\"type\":\"text_delta\",\"text\":\"");
            text(o);
            o.extend_from_slice(b"\"}");
        });
    }

    fn tool_call(
        &mut self,
        out: &mut Vec<u8>,
        st: &mut StreamState,
        call: &ToolCall<'_>,
    ) -> Result<(), CoreError> {
        let index = call.index.unwrap_or(0);
        let function = call.function.as_ref();
        let args = function
            .and_then(|f| f.arguments.as_ref())
            .filter(|a| !a.is_empty());
        st.content_chars += args.map_or(0, Arguments::chars);
        let escaped = |args: &Arguments<'_>| {
            let mut fragment = Vec::new();
            args.write_escaped(&mut fragment);
            fragment
        };
        if self.open == Open::Tool(index) {
            if let Some(args) = args {
                self.write_arguments(out, |o| args.write_escaped(o));
            }
            return Ok(());
        }
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.kind == Open::Tool(index))
        {
            if p.id.is_empty() {
                call.id.as_deref().unwrap_or("").clone_into(&mut p.id);
            }
            if p.name.is_empty() {
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
                name.clone_into(&mut p.name);
            }
            p.fragments.extend(args.map(escaped));
            return Ok(());
        }
        if self.tools_seen.contains(&index) {
            return Err(CoreError::Sse(format!(
                "tool call {index} continued after the stream finished it"
            )));
        }
        self.tools_seen.push(index);
        let id = call.id.as_deref().unwrap_or("");
        let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
        if matches!(self.open, Open::Tool(_)) {
            self.pending.push(Pending {
                kind: Open::Tool(index),
                id: id.to_owned(),
                name: name.to_owned(),
                fragments: args.map(escaped).into_iter().collect(),
            });
            return Ok(());
        }
        self.open_tool(out, index, id, name);
        if let Some(args) = args {
            self.write_arguments(out, |o| args.write_escaped(o));
        }
        Ok(())
    }

    fn open_tool(&mut self, out: &mut Vec<u8>, index: u32, id: &str, name: &str) {
        self.open_block(out, Open::Tool(index), |o| {
            o.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
            json::write_str(o, id);
            o.extend_from_slice(b",\"name\":");
            json::write_str(o, name);
            o.extend_from_slice(b",\"input\":{}}");
        });
    }

    /// An `input_json_delta` of the open block; `args` appends the fragment's text as
    /// `json::write_str` writes it between the quotes.
    fn write_arguments(&self, out: &mut Vec<u8>, args: impl FnOnce(&mut Vec<u8>)) {
        self.delta(out, |o| {
            o.extend_from_slice(b"{\"type\":\"input_json_delta\",\"partial_json\":\"");
            args(o);
            o.extend_from_slice(b"\"}");
        });
    }

    /// The finish: closes the open block and writes the held-back blocks after it, in order.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        self.close_block(out);
        for p in std::mem::take(&mut self.pending) {
            match p.kind {
                Open::Tool(index) => {
                    self.open_tool(out, index, &p.id, &p.name);
                    for fragment in &p.fragments {
                        self.write_arguments(out, |o| o.extend_from_slice(fragment));
                    }
                    // Later text is a block of its own (the call is finished).
                    self.close_block(out);
                }
                Open::Text | Open::None => {
                    for fragment in &p.fragments {
                        self.write_text(out, |o| o.extend_from_slice(fragment));
                    }
                }
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>, st: &mut StreamState) {
        self.ensure_started(out);
        self.flush_pending(out);
        self.close_block(out);
        let usage = st.usage.unwrap_or_default();
        let reason = self.stop_reason.unwrap_or("end_turn");
        write_event(out, "message_delta", |o| {
            o.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
            json::write_str(o, reason);
            o.extend_from_slice(b",\"stop_sequence\":");
            match &self.stop_sequence {
                Some(seq) => json::write_str(o, seq),
                None => o.extend_from_slice(b"null"),
            }
            o.extend_from_slice(b"},\"usage\":{\"input_tokens\":");
            let input = usage
                .prompt_tokens
                .saturating_sub(usage.cached_tokens)
                .saturating_sub(usage.cache_write_tokens);
            o.extend_from_slice(input.to_string().as_bytes());
            if usage.cache_write_tokens > 0 {
                o.extend_from_slice(b",\"cache_creation_input_tokens\":");
                o.extend_from_slice(usage.cache_write_tokens.to_string().as_bytes());
            }
            if usage.cached_tokens > 0 {
                o.extend_from_slice(b",\"cache_read_input_tokens\":");
                o.extend_from_slice(usage.cached_tokens.to_string().as_bytes());
            }
            o.extend_from_slice(b",\"output_tokens\":");
            o.extend_from_slice(usage.completion_tokens.to_string().as_bytes());
            o.extend_from_slice(b"}}");
        });
        write_event(out, "message_stop", |o| {
            o.extend_from_slice(b"{\"type\":\"message_stop\"}");
        });
        st.done = true;
    }
}

impl Reframe for ToAnthropicReframer {
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError> {
        let data = json::trim_ws(&ev.data);
        if data == "[DONE]" {
            self.end(out, st);
            return Ok(());
        }
        let chunk = ChunkView::read(data, &mut self.prefix)?;
        if let Some(raw) = chunk.error {
            st.upstream_error = Some(upstream_error(raw));
            return Ok(());
        }
        if let Some(u) = &chunk.usage {
            st.usage = Some(Usage::from(u));
        }
        for choice in chunk.choices.iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            self.ensure_started(out);
            if let Some(delta) = &choice.delta {
                if let Some(text) = &delta.content {
                    self.text(out, st, text);
                }
                for call in delta.tool_calls.iter().flatten() {
                    self.tool_call(out, st, call)?;
                }
            }
            if let Some(reason) = &choice.finish_reason {
                st.finish_reason = Some(reason.clone().into_owned());
                self.stop_reason = Some(map_finish_reason(reason));
                let matched = choice
                    .stop_reason
                    .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
                if let (Some(seq), "stop") = (matched, reason.as_ref()) {
                    self.stop_reason = Some("stop_sequence");
                    self.stop_sequence = Some(seq);
                }
                self.flush_pending(out);
            }
        }
        Ok(())
    }

    fn on_eof(&mut self, st: &mut StreamState, _out: &mut Vec<u8>) -> Result<(), CoreError> {
        if st.closed() {
            Ok(())
        } else {
            Err(CoreError::StreamCutOff(
                "openai stream ended without data: [DONE]".to_owned(),
            ))
        }
    }
}
