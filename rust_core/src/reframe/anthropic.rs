//! Anthropic Messages streaming → OpenAI chunks.
//!
//! Events: `message_start` (usage: input and cache tokens) → the role chunk;
//! `content_block_start` (a `tool_use` block → a tool-call start with id and name; a text block
//! with initial text → content); `content_block_delta` (`text_delta` → content,
//! `input_json_delta` → tool-call arguments); `message_delta` (stop reason → finish chunk, with
//! the matched `stop_sequence` as the choice's `stop_reason` as vLLM reports it; cumulative
//! usage); `message_stop` → usage chunk (if asked) and `[DONE]`; `error` →
//! `upstream_error`. `ping`, `content_block_stop`, unknown events and unknown delta types
//! (`thinking_delta`, `signature_delta`, `citations_delta`) are dropped: thinking is not content.
//!
//! An event's data is read by one validating scan (`anthropic_scan.rs`) into the typed view
//! below; an event the scan cannot read exactly as `serde_json` would (escaped keys,
//! duplicates, unexpected types, invalid JSON) is read by `serde_json`, which decides, errors
//! included. The Anthropic pass-through reads its events the same way.

use std::borrow::Cow;

use serde::Deserialize;

use super::{anthropic_scan, parse, ChunkWriter, Options, Reframe, StreamState};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::{AnthropicUsage, Usage};

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct AnthropicEvent<'a> {
    #[serde(borrow, default, rename = "type")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) index: Option<u64>,
    #[serde(default)]
    pub(super) message: Option<Message>,
    #[serde(borrow, default)]
    pub(super) content_block: Option<ContentBlock<'a>>,
    #[serde(borrow, default)]
    pub(super) delta: Option<Delta<'a>>,
    #[serde(default)]
    pub(super) usage: Option<AnthropicUsage>,
    #[serde(borrow, default)]
    pub(super) error: Option<ErrorBody<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Message {
    #[serde(default)]
    pub(super) usage: Option<AnthropicUsage>,
}

#[derive(Debug, PartialEq, Deserialize)]
pub(super) struct ContentBlock<'a> {
    #[serde(borrow, rename = "type")]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
}

/// `content_block_delta.delta` and `message_delta.delta` share the key: one struct for both.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Delta<'a> {
    #[serde(borrow, default, rename = "type")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) stop_reason: Option<Cow<'a, str>>,
    /// `message_delta`: the stop string that matched, with `stop_reason: stop_sequence`.
    #[serde(borrow, default)]
    pub(super) stop_sequence: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct ErrorBody<'a> {
    #[serde(borrow, default, rename = "type")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) message: Option<Cow<'a, str>>,
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn map_stop_reason(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// Reframer for Anthropic upstreams.
#[derive(Debug)]
pub struct AnthropicReframer {
    writer: ChunkWriter,
    include_usage: bool,
    role_sent: bool,
    usage: AnthropicUsage,
    /// `(content block index, tool-call index)` of each `tool_use` block.
    tool_blocks: Vec<(u64, u32)>,
    /// The bytes text deltas repeat (the scan resumes after them).
    delta_prefix: anthropic_scan::DeltaPrefix,
    /// The bytes a tool call's argument fragments repeat (their fragments copied as they came).
    fragment_prefix: anthropic_scan::FragmentPrefix,
}

impl AnthropicReframer {
    /// A reframer writing chunks with `opts`' id, created and model.
    pub fn new(opts: &Options) -> Self {
        Self {
            writer: ChunkWriter::new(opts),
            include_usage: opts.include_usage,
            role_sent: false,
            usage: AnthropicUsage::default(),
            tool_blocks: Vec::new(),
            delta_prefix: anthropic_scan::DeltaPrefix::default(),
            fragment_prefix: anthropic_scan::FragmentPrefix::default(),
        }
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.role_sent = true;
            self.writer.role(out);
        }
    }

    /// A `text_delta`'s text: content, unless empty.
    fn text_delta(&mut self, text: Cow<'_, str>, st: &mut StreamState, out: &mut Vec<u8>) {
        if !text.is_empty() {
            self.ensure_role(out);
            st.content_chars += json::char_count(&text);
            self.writer.content_read(out, text);
        }
    }

    fn tool_index(&self, block: u64) -> Option<u32> {
        self.tool_blocks
            .iter()
            .rev()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }
}

impl Reframe for AnthropicReframer {
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError> {
        // A text delta like the last one: its text written out at once, with no typed event
        // built and moved (what `on_parsed` does with `read_with`'s reading of it).
        if let Some(text) = self.delta_prefix.text(&ev.data) {
            self.text_delta(text, st, out);
            return Ok(());
        }
        // An argument fragment like the last one: its escaped text copied into the chunk (what
        // `on_parsed` writes for it, with no unescaping and escaping again).
        if let Some((block, written, chars)) = self.fragment_prefix.fragment(&ev.data) {
            if let (Some(tool), false) = (self.tool_index(block), written.is_empty()) {
                self.ensure_role(out);
                st.content_chars += chars;
                self.writer.tool_call_arguments_written(out, tool, written);
            }
            return Ok(());
        }
        let e = match anthropic_scan::read_with(&ev.data, &mut self.delta_prefix) {
            Some(e) => {
                self.fragment_prefix.remember(&ev.data, &e);
                e
            }
            None => parse("anthropic", &ev.data)?,
        };
        self.on_parsed(e, &ev.event, st, out);
        Ok(())
    }

    fn on_eof(&mut self, st: &mut StreamState, _out: &mut Vec<u8>) -> Result<(), CoreError> {
        if st.closed() {
            Ok(())
        } else {
            Err(CoreError::StreamCutOff(
                "anthropic stream ended without message_stop".to_owned(),
            ))
        }
    }
}

impl AnthropicReframer {
    /// Handles an event read from its data; `name` is the SSE event's name.
    pub(super) fn on_parsed(
        &mut self,
        e: AnthropicEvent<'_>,
        name: &str,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) {
        let kind = e.kind.as_deref().unwrap_or(name);
        match kind {
            "message_start" => {
                if let Some(u) = e.message.and_then(|m| m.usage) {
                    self.usage.merge(&u);
                    st.usage = Some(Usage::from(&self.usage));
                }
                self.ensure_role(out);
            }
            "content_block_start" => {
                let Some(block) = e.content_block else {
                    return;
                };
                match block.kind.as_ref() {
                    "text" => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            self.ensure_role(out);
                            st.content_chars += json::char_count(&text);
                            self.writer.content_read(out, text);
                        }
                    }
                    "tool_use" => {
                        let index = self.tool_blocks.len() as u32;
                        self.tool_blocks.push((e.index.unwrap_or(0), index));
                        self.ensure_role(out);
                        self.writer.tool_call_start(
                            out,
                            index,
                            block.id.as_deref().unwrap_or(""),
                            block.name.as_deref().unwrap_or(""),
                            "",
                        );
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(delta) = e.delta else { return };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(text) = delta.text {
                            self.text_delta(text, st, out);
                        }
                    }
                    Some("input_json_delta") => {
                        let fragment = delta.partial_json.unwrap_or_default();
                        let tool = self.tool_index(e.index.unwrap_or(0));
                        if let (Some(tool), false) = (tool, fragment.is_empty()) {
                            self.ensure_role(out);
                            st.content_chars += json::char_count(&fragment);
                            self.writer.tool_call_arguments(out, tool, &fragment);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = &e.usage {
                    self.usage.merge(u);
                    st.usage = Some(Usage::from(&self.usage));
                }
                if let Some(delta) = e.delta {
                    if let Some(reason) = delta.stop_reason {
                        let mapped = map_stop_reason(&reason);
                        st.finish_reason = Some(mapped.to_owned());
                        self.ensure_role(out);
                        match (reason.as_ref(), delta.stop_sequence) {
                            // OpenAI has no field for the matched string: vLLM's `stop_reason`.
                            ("stop_sequence", Some(seq)) => {
                                self.writer.finish_on_stop_string(out, &seq);
                            }
                            _ => self.writer.finish(out, mapped),
                        }
                    }
                }
            }
            "message_stop" => {
                self.ensure_role(out);
                self.writer.end(out, st, self.include_usage);
            }
            "error" => {
                let (kind, message) = e.error.map_or((None, None), |b| (b.kind, b.message));
                st.upstream_error = Some((
                    kind.map_or_else(|| "error".to_owned(), Cow::into_owned),
                    message.map(Cow::into_owned).unwrap_or_default(),
                ));
            }
            // ping, content_block_stop and event types added later.
            _ => {}
        }
    }
}
