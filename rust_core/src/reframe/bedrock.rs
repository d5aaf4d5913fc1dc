//! Bedrock `ConverseStream` → OpenAI chunks.
//!
//! The stream is AWS event stream framing ([`crate::eventstream`]); `Stream` hands each message
//! over as an [`Event`] whose `event` is the `:event-type` header (or, for an exception, the
//! `:exception-type`), whose `id` is the `:message-type` (`event` or `exception`) and whose
//! `data` is the JSON payload. Events, in Bedrock's order:
//! - `messageStart` → the role chunk;
//! - `contentBlockStart` with `start.toolUse {toolUseId, name}` → a tool call's first chunk;
//! - `contentBlockDelta`: `delta.text` → a content delta, `delta.toolUse.input` (a fragment of the
//!   input's JSON) → an arguments delta of the block's tool call;
//! - `contentBlockStop` → nothing;
//! - `messageStop {stopReason}` → the finish chunk (`end_turn`/`stop_sequence` → `stop`,
//!   `max_tokens` → `length`, `tool_use` → `tool_calls`, `guardrail_intervened`/`content_filtered`
//!   → `content_filter`);
//! - `metadata {usage}` (the last event) → usage, the usage chunk when asked for, `[DONE]`.
//!
//! An exception message (`throttlingException`, `modelStreamErrorException`, …) →
//! `upstream_error` (its type, its `message`). EOF after `messageStop` without `metadata`
//! completes the stream; EOF before it is a cut-off stream.
//!
//! `contentBlockDelta`, the event of every token, is read by one validating scan
//! (`bedrock_scan.rs`) into its typed view, `serde_json` deciding whatever the scan cannot read
//! exactly as it would; the other events (a few per stream) by `serde_json`. A tool call's
//! argument fragment in Bedrock's compact form is copied into its chunk as it came (escaped),
//! not unescaped and escaped again (`bedrock_scan::tool_fragment`).

use std::borrow::Cow;

use serde::Deserialize;

use super::{bedrock_scan, parse, ChunkWriter, Options, Reframe, StreamState};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::Usage;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart<'a> {
    #[serde(default)]
    content_block_index: u32,
    #[serde(borrow, default)]
    start: Option<Start<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Start<'a> {
    #[serde(borrow, default)]
    tool_use: Option<ToolUseStart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStart<'a> {
    #[serde(borrow, default)]
    tool_use_id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BlockDelta<'a> {
    #[serde(default)]
    pub(super) content_block_index: u32,
    #[serde(borrow, default)]
    pub(super) delta: Option<Delta<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Delta<'a> {
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) tool_use: Option<ToolUseDelta<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct ToolUseDelta<'a> {
    #[serde(borrow, default)]
    pub(super) input: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<BedrockUsage>,
}

/// Bedrock `TokenUsage`; cache reads and writes are counted in the prompt, as for Anthropic.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_field_names)] // the names are the Bedrock wire's
struct BedrockUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<&BedrockUsage> for Usage {
    fn from(u: &BedrockUsage) -> Self {
        let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens;
        Self {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt + u.output_tokens,
            cached_tokens: u.cache_read_input_tokens,
            cache_write_tokens: u.cache_write_input_tokens,
        }
    }
}

#[derive(Deserialize)]
struct ExceptionBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// Bedrock `stopReason` → OpenAI `finish_reason`.
pub fn map_stop_reason(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Reframer for Bedrock `ConverseStream` upstreams.
#[derive(Debug)]
pub struct BedrockReframer {
    writer: ChunkWriter,
    include_usage: bool,
    role_sent: bool,
    /// (contentBlockIndex, OpenAI tool call index) of the tool-use blocks seen so far.
    tool_blocks: Vec<(u32, u32)>,
    /// `messageStop` was seen: EOF or `metadata` now completes the stream.
    stopped: bool,
}

impl BedrockReframer {
    /// A reframer writing chunks with `opts`' id, created and model.
    pub fn new(opts: &Options) -> Self {
        Self {
            writer: ChunkWriter::new(opts),
            include_usage: opts.include_usage,
            role_sent: false,
            tool_blocks: Vec::new(),
            stopped: false,
        }
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.writer.role(out);
            self.role_sent = true;
        }
    }

    /// The tool call index of the tool-use block an argument fragment names.
    fn fragment_index(&self, block: u32) -> Result<u32, CoreError> {
        self.tool_blocks
            .iter()
            .find_map(|(b, i)| (*b == block).then_some(*i))
            .ok_or_else(|| {
                CoreError::Sse(
                    "bedrock stream: tool input for a block that never started".to_owned(),
                )
            })
    }
}

impl Reframe for BedrockReframer {
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError> {
        if ev.id == "exception" || ev.id == "error" {
            let body: ExceptionBody<'_> =
                parse("bedrock", &ev.data).unwrap_or(ExceptionBody { message: None });
            let message = body.message.map_or_else(String::new, Cow::into_owned);
            st.upstream_error = Some((ev.event.clone().into_owned(), message));
            return Ok(());
        }
        match ev.event.as_ref() {
            "messageStart" => self.ensure_role(out),
            "contentBlockStart" => {
                let start: BlockStart<'_> = parse("bedrock", &ev.data)?;
                if let Some(tool) = start.start.and_then(|s| s.tool_use) {
                    self.ensure_role(out);
                    let index = self.tool_blocks.len() as u32;
                    self.tool_blocks.push((start.content_block_index, index));
                    self.writer
                        .tool_call_start(out, index, &tool.tool_use_id, &tool.name, "");
                }
            }
            "contentBlockDelta" => {
                // Before any tool call the typed path decides (a text delta, or a fragment's error).
                let fragment = if self.tool_blocks.is_empty() {
                    None
                } else {
                    bedrock_scan::tool_fragment(&ev.data)
                };
                if let Some((block, written, chars)) = fragment {
                    self.ensure_role(out);
                    if !written.is_empty() {
                        let index = self.fragment_index(block)?;
                        st.content_chars += chars;
                        self.writer.tool_call_arguments_written(out, index, written);
                    }
                    return Ok(());
                }
                let delta = match bedrock_scan::read_delta(&ev.data) {
                    Some(delta) => delta,
                    None => parse("bedrock", &ev.data)?,
                };
                let Some(d) = delta.delta else { return Ok(()) };
                self.ensure_role(out);
                if let Some(text) = d.text.filter(|t| !t.is_empty()) {
                    st.content_chars += json::char_count(&text);
                    self.writer.content_read(out, text);
                }
                if let Some(tool) = d.tool_use.filter(|t| !t.input.is_empty()) {
                    let index = self.fragment_index(delta.content_block_index)?;
                    st.content_chars += json::char_count(&tool.input);
                    self.writer.tool_call_arguments(out, index, &tool.input);
                }
            }
            "messageStop" => {
                let stop: MessageStop<'_> = parse("bedrock", &ev.data)?;
                let reason = map_stop_reason(stop.stop_reason.as_deref().unwrap_or("end_turn"));
                self.ensure_role(out);
                st.finish_reason = Some(reason.to_owned());
                self.writer.finish(out, reason);
                self.stopped = true;
            }
            "metadata" => {
                let meta: Metadata = parse("bedrock", &ev.data)?;
                if let Some(u) = &meta.usage {
                    st.usage = Some(Usage::from(u));
                }
                if self.stopped {
                    self.writer.end(out, st, self.include_usage);
                }
            }
            _ => {} // contentBlockStop, and events added to the API later
        }
        Ok(())
    }

    fn on_eof(&mut self, st: &mut StreamState, out: &mut Vec<u8>) -> Result<(), CoreError> {
        if self.stopped {
            self.writer.end(out, st, self.include_usage);
            Ok(())
        } else {
            Err(CoreError::StreamCutOff(
                "bedrock stream ended before messageStop".to_owned(),
            ))
        }
    }
}
