//! OpenAI chunks → OpenAI Responses API events, for `POST /v1/responses` with `stream: true`.
//!
//! The input is the gateway's own OpenAI chunk stream (what the `openai`, `anthropic` and
//! `gemini` reframers emit), so every upstream kind reaches the Responses API through one
//! translation. Output, one `event: <type>\ndata: <one-line JSON>\n\n` per event, each data
//! carrying `type` and a `sequence_number` that counts from 0:
//!
//! - the first chunk → `response.created` and `response.in_progress` (the response object with
//!   `status: in_progress`, no output, usage null);
//! - `delta.content` → a `message` output item (`response.output_item.added`,
//!   `response.content_part.added` of an `output_text` part, then `response.output_text.delta`s);
//! - `delta.tool_calls[i]` with a new index → a `function_call` output item (call id, name,
//!   empty arguments), and its `function.arguments` fragments →
//!   `response.function_call_arguments.delta`s;
//! - a new item closes the open one: for a message `response.output_text.done`,
//!   `response.content_part.done`, `response.output_item.done`; for a function call
//!   `response.function_call_arguments.done`, `response.output_item.done` (whole texts);
//! - `[DONE]` closes the open item and ends with `response.completed` (or `response.incomplete`
//!   when the finish reason was `length` or `content_filter`): the response object with every
//!   output item and the usage.
//!
//! Item ids derive from the response id (`resp_X` → `msg_X_<output index>`, `fc_X_<index>`), so
//! the non-streamed answer (gateway/responses/answer.py) names its items the same way. Only
//! choice 0 is read. Arguments for a tool call whose item was already closed are a malformed
//! stream (`CoreError::Sse`), as for the Anthropic translation.

use std::fmt::Write as _;

use super::to_anthropic::{upstream_error, ChunkView, ToolCall};
use super::{chunk_scan, Options, Reframe, StreamState};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::Usage;

/// The output item being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Message,
    /// A `function_call` item for this OpenAI tool-call index.
    Tool(u32),
}

/// Reframer from the gateway's OpenAI chunks to Responses API events.
#[derive(Debug)]
pub struct ToResponsesReframer {
    /// `"id":…,"object":"response","created_at":…,"model":…` (members, no braces).
    head: Vec<u8>,
    /// The request's echoed fields as members with a leading comma (or empty).
    fields: Vec<u8>,
    /// The response id without its `resp_` prefix: the stem of every item id.
    stem: String,
    sequence: u64,
    started: bool,
    open: Open,
    /// Output index of the open item (= items closed so far).
    index: u32,
    item_id: String,
    call_id: String,
    name: String,
    /// The open message's text, or the open call's arguments, so far, as `json::write_str`
    /// writes them between the quotes: written once, as their deltas are, and copied into the
    /// item's `.done` events and the response (each character is escaped on its own, so the
    /// deltas' texts add up to the whole's).
    text: Vec<u8>,
    /// OpenAI tool-call indices whose item was opened (in order).
    tools_seen: Vec<u32>,
    /// The JSON of every closed item, comma separated.
    output: Vec<u8>,
    /// The chunks' shared first members, scanned once (`chunk_scan::Prefix`).
    prefix: chunk_scan::Prefix,
    /// The response object of the final event, once written (what the route keeps).
    final_response: Option<Vec<u8>>,
}

/// Writes `event: <kind>\ndata: {"type":"<kind>","sequence_number":N<members>}\n\n`.
fn write_event(
    out: &mut Vec<u8>,
    sequence: &mut u64,
    kind: &str,
    members: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: {\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"sequence_number\":");
    out.extend_from_slice(sequence.to_string().as_bytes());
    members(out);
    out.extend_from_slice(b"}\n\n");
    *sequence += 1;
}

/// The Responses API usage object.
fn write_usage(o: &mut Vec<u8>, u: &Usage) {
    let numbers = [
        (&b"{\"input_tokens\":"[..], u.prompt_tokens),
        (
            b",\"input_tokens_details\":{\"cached_tokens\":",
            u.cached_tokens,
        ),
        (b",\"cache_write_tokens\":", u.cache_write_tokens),
        (b"},\"output_tokens\":", u.completion_tokens),
        (
            b",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":",
            u.prompt_tokens + u.completion_tokens,
        ),
    ];
    for (text, number) in numbers {
        o.extend_from_slice(text);
        o.extend_from_slice(number.to_string().as_bytes());
    }
    o.push(b'}');
}

/// `completed`, or `incomplete` with its reason, from the OpenAI finish reason.
fn outcome(finish_reason: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish_reason {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

impl ToResponsesReframer {
    /// `opts.response_id` is the response id, `opts.model` its model, `opts.created` its
    /// `created_at`; `opts.response_fields` (a JSON object) is merged into every response object.
    pub fn new(opts: &Options) -> Result<Self, CoreError> {
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"\"id\":");
        json::write_str(&mut head, &opts.response_id);
        head.extend_from_slice(b",\"object\":\"response\",\"created_at\":");
        head.extend_from_slice(opts.created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        json::write_str(&mut head, &opts.model);
        let raw = opts.response_fields.trim();
        let members = raw
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| {
                CoreError::InvalidArgument("response_fields must be a JSON object".to_owned())
            })?
            .trim();
        let mut fields = Vec::with_capacity(members.len() + 1);
        if !members.is_empty() {
            fields.push(b',');
            fields.extend_from_slice(members.as_bytes());
        }
        let stem = opts
            .response_id
            .split_once('_')
            .map_or(opts.response_id.as_str(), |(_, rest)| rest)
            .to_owned();
        Ok(Self {
            head,
            fields,
            stem,
            sequence: 0,
            started: false,
            open: Open::None,
            index: 0,
            item_id: String::new(),
            call_id: String::new(),
            name: String::new(),
            text: Vec::new(),
            tools_seen: Vec::new(),
            output: Vec::new(),
            prefix: chunk_scan::Prefix::default(),
            final_response: None,
        })
    }

    /// Events written so far (the next `sequence_number`).
    pub fn events_written(&self) -> u64 {
        self.sequence
    }

    /// The response object of `response.completed` / `response.incomplete`, once written.
    pub fn final_response(&self) -> Option<&[u8]> {
        self.final_response.as_deref()
    }

    /// The response object: `output` is the closed items' JSON, `usage` null when `None`.
    fn write_response(
        &self,
        o: &mut Vec<u8>,
        status: &str,
        incomplete: Option<&str>,
        output: &[u8],
        usage: Option<&Usage>,
    ) {
        o.push(b'{');
        o.extend_from_slice(&self.head);
        o.extend_from_slice(b",\"status\":");
        json::write_str(o, status);
        o.extend_from_slice(b",\"error\":null,\"incomplete_details\":");
        match incomplete {
            Some(reason) => {
                o.extend_from_slice(b"{\"reason\":");
                json::write_str(o, reason);
                o.push(b'}');
            }
            None => o.extend_from_slice(b"null"),
        }
        o.extend_from_slice(b",\"output\":[");
        o.extend_from_slice(output);
        o.extend_from_slice(b"],\"usage\":");
        match usage {
            Some(u) => write_usage(o, u),
            None => o.extend_from_slice(b"null"),
        }
        o.extend_from_slice(&self.fields);
        o.push(b'}');
    }

    fn lifecycle(&mut self, out: &mut Vec<u8>, kind: &str, status: &str) {
        let mut response = Vec::with_capacity(256 + self.fields.len());
        self.write_response(&mut response, status, None, b"", None);
        write_event(out, &mut self.sequence, kind, |o| {
            o.extend_from_slice(b",\"response\":");
            o.extend_from_slice(&response);
        });
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.lifecycle(out, "response.created", "in_progress");
            self.lifecycle(out, "response.in_progress", "in_progress");
        }
    }

    /// The open item as JSON: `in_progress` (when added) or `completed` (when done).
    fn write_item(&self, o: &mut Vec<u8>, done: bool) {
        let status = if done { "completed" } else { "in_progress" };
        o.extend_from_slice(b"{\"id\":");
        json::write_str(o, &self.item_id);
        match self.open {
            Open::Message => {
                o.extend_from_slice(b",\"type\":\"message\",\"status\":");
                json::write_str(o, status);
                o.extend_from_slice(b",\"content\":[");
                if done {
                    self.write_part(o);
                }
                o.extend_from_slice(b"],\"role\":\"assistant\"}");
            }
            Open::Tool(_) => {
                o.extend_from_slice(b",\"type\":\"function_call\",\"status\":");
                json::write_str(o, status);
                o.extend_from_slice(b",\"arguments\":\"");
                if done {
                    o.extend_from_slice(&self.text);
                }
                o.extend_from_slice(b"\",\"call_id\":");
                json::write_str(o, &self.call_id);
                o.extend_from_slice(b",\"name\":");
                json::write_str(o, &self.name);
                o.push(b'}');
            }
            Open::None => o.push(b'}'),
        }
    }

    /// The message's `output_text` part with the text so far.
    fn write_part(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(
            b"{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"",
        );
        o.extend_from_slice(&self.text);
        o.extend_from_slice(b"\"}");
    }

    /// `,"item_id":…,"output_index":N` of the open item.
    fn write_item_ref(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(b",\"item_id\":");
        json::write_str(o, &self.item_id);
        o.extend_from_slice(b",\"output_index\":");
        o.extend_from_slice(self.index.to_string().as_bytes());
    }

    fn open_item(&mut self, out: &mut Vec<u8>, open: Open, call_id: &str, name: &str) {
        self.close_item(out);
        self.open = open;
        let prefix = if open == Open::Message { "msg" } else { "fc" };
        self.item_id = format!("{prefix}_{}_{}", self.stem, self.index);
        self.text.clear();
        self.call_id.clear();
        self.name.clear();
        if let Open::Tool(_) = open {
            if call_id.is_empty() {
                let _ = write!(self.call_id, "call_{}_{}", self.stem, self.index);
            } else {
                self.call_id.push_str(call_id);
            }
            self.name.push_str(name);
        }
        let mut item = Vec::with_capacity(128);
        self.write_item(&mut item, false);
        let index = self.index;
        write_event(out, &mut self.sequence, "response.output_item.added", |o| {
            o.extend_from_slice(b",\"output_index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"item\":");
            o.extend_from_slice(&item);
        });
        if open == Open::Message {
            let mut head = Vec::with_capacity(64);
            self.write_item_ref(&mut head);
            write_event(
                out,
                &mut self.sequence,
                "response.content_part.added",
                |o| {
                    o.extend_from_slice(&head);
                    o.extend_from_slice(
                        b",\"content_index\":0,\"part\":{\"type\":\"output_text\",\
                      \"annotations\":[],\"logprobs\":[],\"text\":\"\"}",
                    );
                },
            );
        }
    }

    fn close_item(&mut self, out: &mut Vec<u8>) {
        if self.open == Open::None {
            return;
        }
        let mut reference = Vec::with_capacity(64);
        self.write_item_ref(&mut reference);
        match self.open {
            Open::Message => {
                let mut part = Vec::with_capacity(self.text.len() + 96);
                self.write_part(&mut part);
                let text = &self.text;
                write_event(out, &mut self.sequence, "response.output_text.done", |o| {
                    o.extend_from_slice(&reference);
                    o.extend_from_slice(b",\"content_index\":0,\"text\":\"");
                    o.extend_from_slice(text);
                    o.extend_from_slice(b"\",\"logprobs\":[]");
                });
                write_event(out, &mut self.sequence, "response.content_part.done", |o| {
                    o.extend_from_slice(&reference);
                    o.extend_from_slice(b",\"content_index\":0,\"part\":");
                    o.extend_from_slice(&part);
                });
            }
            Open::Tool(_) | Open::None => {
                let arguments = &self.text;
                write_event(
                    out,
                    &mut self.sequence,
                    "response.function_call_arguments.done",
                    |o| {
                        o.extend_from_slice(&reference);
                        o.extend_from_slice(b",\"arguments\":\"");
                        o.extend_from_slice(arguments);
                        o.push(b'"');
                    },
                );
            }
        }
        let mut item = Vec::with_capacity(self.text.len() + 160);
        self.write_item(&mut item, true);
        let index = self.index;
        write_event(out, &mut self.sequence, "response.output_item.done", |o| {
            o.extend_from_slice(b",\"output_index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"item\":");
            o.extend_from_slice(&item);
        });
        if !self.output.is_empty() {
            self.output.push(b',');
        }
        self.output.extend_from_slice(&item);
        self.open = Open::None;
        self.index += 1;
    }

    fn text_delta(&mut self, out: &mut Vec<u8>, st: &mut StreamState, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.open != Open::Message {
            self.open_item(out, Open::Message, "", "");
        }
        st.content_chars += json::char_count(text);
        let at = self.text.len();
        json::write_escaped(&mut self.text, text);
        let mut reference = Vec::with_capacity(64);
        self.write_item_ref(&mut reference);
        let delta = &self.text[at..];
        write_event(out, &mut self.sequence, "response.output_text.delta", |o| {
            o.extend_from_slice(&reference);
            o.extend_from_slice(b",\"content_index\":0,\"delta\":\"");
            o.extend_from_slice(delta);
            o.extend_from_slice(b"\",\"logprobs\":[]");
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
        if self.open != Open::Tool(index) {
            if self.tools_seen.contains(&index) {
                return Err(CoreError::Sse(format!(
                    "tool call {index} continued after another output item started"
                )));
            }
            self.tools_seen.push(index);
            let id = call.id.as_deref().unwrap_or("");
            let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
            self.open_item(out, Open::Tool(index), id, name);
        }
        if let Some(args) = function.and_then(|f| f.arguments.as_ref()) {
            if !args.is_empty() {
                st.content_chars += args.chars();
                let at = self.text.len();
                args.write_escaped(&mut self.text);
                let mut reference = Vec::with_capacity(64);
                self.write_item_ref(&mut reference);
                let delta = &self.text[at..];
                write_event(
                    out,
                    &mut self.sequence,
                    "response.function_call_arguments.delta",
                    |o| {
                        o.extend_from_slice(&reference);
                        o.extend_from_slice(b",\"delta\":\"");
                        o.extend_from_slice(delta);
                        o.push(b'"');
                    },
                );
            }
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>, st: &mut StreamState) {
        self.ensure_started(out);
        self.close_item(out);
        let (status, incomplete) = outcome(st.finish_reason.as_deref());
        let usage = st.usage.unwrap_or_default();
        let mut response = Vec::with_capacity(self.output.len() + 512 + self.fields.len());
        self.write_response(
            &mut response,
            status,
            incomplete,
            &self.output,
            Some(&usage),
        );
        let kind = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        write_event(out, &mut self.sequence, kind, |o| {
            o.extend_from_slice(b",\"response\":");
            o.extend_from_slice(&response);
        });
        self.final_response = Some(response);
        st.done = true;
    }
}

impl Reframe for ToResponsesReframer {
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
                    self.text_delta(out, st, text);
                }
                for call in delta.tool_calls.iter().flatten() {
                    self.tool_call(out, st, call)?;
                }
            }
            if let Some(reason) = &choice.finish_reason {
                st.finish_reason = Some(reason.clone().into_owned());
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
