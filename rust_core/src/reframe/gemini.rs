//! Gemini `streamGenerateContent?alt=sse` → OpenAI chunks.
//!
//! Every SSE event is one `GenerateContentResponse`. Only `candidates[0]` is relayed. Text parts
//! of one response become one content delta (parts with `thought: true` are not content);
//! each `functionCall` becomes one complete tool call (id `call_<response_id>_<index>`,
//! arguments = compact JSON of `args`). A `finishReason` → the finish chunk; `usageMetadata`
//! → usage (last one wins). Gemini has no terminator event: the stream is complete when a finish
//! reason was seen and EOF arrives, so the usage chunk and `[DONE]` are written by `finish()`.
//! A prompt blocked before any candidate (`promptFeedback.blockReason`) finishes with
//! `content_filter`. `{"error": {...}}` → `upstream_error` (status, message).
//!
//! A response is read by one validating scan (`gemini_scan.rs`) into a [`Reading`], or from
//! the values that differ from the last text response's (`gemini_shape.rs`); one the scan
//! cannot read exactly as the typed `serde_json` view below would (escaped keys, duplicates,
//! unexpected types, an `error` member, invalid JSON) is read by that view, which decides,
//! errors included.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{gemini_shape, parse, ChunkWriter, Options, Reframe, StreamState};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::{GeminiUsage, Usage};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<GeminiUsage>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(default)]
    code: Option<i64>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
}

/// What the reframer reads of a response: by the scan (`gemini_scan.rs`), or by the typed view
/// when the scan cannot tell.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reading<'a> {
    /// `(status or code, message)` of an `error` member (the rest is then not read).
    pub(super) error: Option<(String, String)>,
    pub(super) usage: Option<Usage>,
    /// `candidates[0]` (the others are validated, not kept).
    pub(super) first: Option<First<'a>>,
    /// `promptFeedback.blockReason` is given.
    pub(super) blocked: bool,
}

/// The first candidate, as relayed.
#[derive(Debug, Default, PartialEq)]
pub(super) struct First<'a> {
    /// The text of its parts that are not thoughts, one after the other.
    pub(super) text: Cow<'a, str>,
    /// Each `functionCall`: its name and the raw text of its `args`.
    pub(super) calls: Vec<(Option<Cow<'a, str>>, Option<&'a str>)>,
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

impl<'a> First<'a> {
    /// Appends a part's text (borrowed while it is the only one).
    pub(super) fn push_text(&mut self, text: Cow<'a, str>) {
        if self.text.is_empty() {
            self.text = text;
        } else {
            self.text.to_mut().push_str(&text);
        }
    }
}

impl<'a> Reading<'a> {
    /// The response read by the typed view (`serde_json`): the reference, and the path of every
    /// response the scan leaves to it, errors included.
    pub(super) fn typed(data: &'a str) -> Result<Self, CoreError> {
        let r: Response<'a> = parse("gemini", data)?;
        if let Some(err) = r.error {
            let kind = match (err.status, err.code) {
                (Some(status), _) => status.into_owned(),
                (None, Some(code)) => code.to_string(),
                (None, None) => "error".to_owned(),
            };
            let message = err.message.map(Cow::into_owned).unwrap_or_default();
            return Ok(Self {
                error: Some((kind, message)),
                ..Self::default()
            });
        }
        let first = r.candidates.into_iter().next().map(|candidate| {
            let mut first = First {
                finish_reason: candidate.finish_reason,
                ..First::default()
            };
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if let (Some(text), false) = (part.text, part.thought.unwrap_or(false)) {
                    first.push_text(text);
                }
                if let Some(call) = part.function_call {
                    first.calls.push((call.name, call.args.map(RawValue::get)));
                }
            }
            first
        });
        Ok(Self {
            error: None,
            usage: r.usage_metadata.as_ref().map(Usage::from),
            first,
            blocked: r.prompt_feedback.and_then(|f| f.block_reason).is_some(),
        })
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason` (before the tool-call rule).
pub fn map_finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ => "stop",
    }
}

/// Reframer for Gemini upstreams.
#[derive(Debug)]
pub struct GeminiReframer {
    writer: ChunkWriter,
    response_id: String,
    include_usage: bool,
    role_sent: bool,
    tool_calls: u32,
    /// A finish reason was seen: EOF now completes the stream.
    finished: bool,
    args: Vec<u8>,
    /// The last text response read whole (`gemini_shape::read_with`).
    shape: gemini_shape::Shape,
}

impl GeminiReframer {
    /// A reframer writing chunks with `opts`' id, created and model.
    pub fn new(opts: &Options) -> Self {
        Self {
            writer: ChunkWriter::new(opts),
            response_id: opts.response_id.clone(),
            include_usage: opts.include_usage,
            role_sent: false,
            tool_calls: 0,
            finished: false,
            args: Vec::new(),
            shape: gemini_shape::Shape::default(),
        }
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.role_sent = true;
            self.writer.role(out);
        }
    }

    fn finish_with(&mut self, st: &mut StreamState, out: &mut Vec<u8>, reason: &'static str) {
        if self.finished {
            return;
        }
        self.finished = true;
        st.finish_reason = Some(reason.to_owned());
        self.ensure_role(out);
        self.writer.finish(out, reason);
    }
}

impl Reframe for GeminiReframer {
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError> {
        let r = match gemini_shape::read_with(&ev.data, &mut self.shape) {
            Some(r) => r,
            None => Reading::typed(&ev.data)?,
        };
        if let Some(err) = r.error {
            st.upstream_error = Some(err);
            return Ok(());
        }
        if let Some(u) = r.usage {
            st.usage = Some(u);
        }
        let Some(candidate) = r.first else {
            if r.blocked {
                self.finish_with(st, out, "content_filter");
            }
            return Ok(());
        };
        if !candidate.text.is_empty() {
            self.ensure_role(out);
            st.content_chars += json::char_count(&candidate.text);
            self.writer.content_read(out, candidate.text);
        }
        for (name, args) in candidate.calls {
            self.args.clear();
            match args {
                Some(raw) => json::write_compact(&mut self.args, raw),
                None => self.args.extend_from_slice(b"{}"),
            }
            let args =
                std::str::from_utf8(&self.args).map_err(|e| CoreError::Sse(e.to_string()))?;
            let index = self.tool_calls;
            self.tool_calls += 1;
            let id = format!("call_{}_{index}", self.response_id);
            if !self.role_sent {
                self.role_sent = true;
                self.writer.role(out);
            }
            st.content_chars += json::char_count(args);
            self.writer
                .tool_call_start(out, index, &id, name.as_deref().unwrap_or(""), args);
        }
        if let Some(reason) = candidate.finish_reason {
            let mapped = match map_finish_reason(&reason) {
                "stop" if self.tool_calls > 0 => "tool_calls",
                other => other,
            };
            self.finish_with(st, out, mapped);
        }
        Ok(())
    }

    fn on_eof(&mut self, st: &mut StreamState, out: &mut Vec<u8>) -> Result<(), CoreError> {
        if st.closed() {
            return Ok(());
        }
        if !self.finished {
            return Err(CoreError::StreamCutOff(
                "gemini stream ended before a finishReason".to_owned(),
            ));
        }
        self.writer.end(out, st, self.include_usage);
        Ok(())
    }
}
