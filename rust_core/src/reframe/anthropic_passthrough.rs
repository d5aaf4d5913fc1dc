//! Anthropic Messages events relayed as Anthropic events (`POST /v1/messages` on `anthropic/…`).
//!
//! Event for event: each upstream event goes out as `event: <name>\ndata: <data>\n\n`, its data
//! compacted to one line when the upstream spread it over several, and `message_start`'s
//! `message.model` replaced by the gateway's catalog id (the request's model was rewritten the
//! other way). Usage (`message_start` + cumulative `message_delta`), the stop reason and the
//! relayed text are read on the way for billing. `message_stop` ends the stream; an `error`
//! event is not relayed but reported as `upstream_error` (the gateway writes its own, mapped
//! error event, as on every route). Events are read as the Anthropic reframer reads them: a text
//! delta that repeats the last one's bytes from its text on (`anthropic_scan::read_with`).

use std::borrow::Cow;

use super::anthropic::map_stop_reason;
use super::{anthropic_scan, parse, Options, Reframe, StreamState};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::{AnthropicUsage, Usage};

/// Relays an Anthropic stream, extracting usage.
#[derive(Debug)]
pub struct AnthropicPassthrough {
    model_json: Vec<u8>,
    usage: AnthropicUsage,
    compact: Vec<u8>,
    /// The bytes text deltas repeat (the scan resumes after them).
    delta_prefix: anthropic_scan::DeltaPrefix,
}

impl AnthropicPassthrough {
    /// `opts.model` replaces `message.model` in `message_start`.
    pub fn new(opts: &Options) -> Self {
        let mut model_json = Vec::new();
        json::write_str(&mut model_json, &opts.model);
        Self {
            model_json,
            usage: AnthropicUsage::default(),
            compact: Vec::new(),
            delta_prefix: anthropic_scan::DeltaPrefix::default(),
        }
    }
}

/// Writes `data` with the value of `message.model` replaced (exact on valid JSON, which the
/// caller has parsed already); unchanged when there is no such member.
fn write_with_model(out: &mut Vec<u8>, data: &str, model_json: &[u8]) {
    if let Some((ms, me)) = json::find_member(data, "message") {
        if let Some((s, e)) = json::find_member(&data[ms..me], "model") {
            out.extend_from_slice(&data.as_bytes()[..ms + s]);
            out.extend_from_slice(model_json);
            out.extend_from_slice(&data.as_bytes()[ms + e..]);
            return;
        }
    }
    out.extend_from_slice(data.as_bytes());
}

impl Reframe for AnthropicPassthrough {
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError> {
        let data = json::trim_ws(&ev.data);
        let data = if !ev.one_line && memchr::memchr2(b'\n', b'\r', data.as_bytes()).is_some() {
            self.compact.clear();
            json::write_compact(&mut self.compact, data);
            std::str::from_utf8(&self.compact).map_err(|e| CoreError::Sse(e.to_string()))?
        } else {
            data
        };
        let e = match anthropic_scan::read_with(data, &mut self.delta_prefix) {
            Some(e) => e,
            None => parse("anthropic", data)?,
        };
        let kind = e.kind.as_deref().unwrap_or(&ev.event);
        if kind.contains(['\n', '\r']) {
            return Err(CoreError::Sse(
                "anthropic event type with a line break".to_owned(),
            ));
        }
        match kind {
            "message_start" => {
                if let Some(u) = e.message.and_then(|m| m.usage) {
                    self.usage.merge(&u);
                    st.usage = Some(Usage::from(&self.usage));
                }
            }
            "content_block_delta" => {
                if let Some(d) = &e.delta {
                    for text in [&d.text, &d.partial_json].into_iter().flatten() {
                        st.content_chars += json::char_count(text);
                    }
                }
            }
            "message_delta" => {
                if let Some(u) = &e.usage {
                    self.usage.merge(u);
                    st.usage = Some(Usage::from(&self.usage));
                }
                if let Some(reason) = e.delta.and_then(|d| d.stop_reason) {
                    st.finish_reason = Some(map_stop_reason(&reason).to_owned());
                }
            }
            "error" => {
                let (kind, message) = e.error.map_or((None, None), |b| (b.kind, b.message));
                st.upstream_error = Some((
                    kind.map_or_else(|| "error".to_owned(), Cow::into_owned),
                    message.map(Cow::into_owned).unwrap_or_default(),
                ));
                return Ok(());
            }
            _ => {}
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        if kind == "message_start" {
            write_with_model(out, data, &self.model_json);
        } else {
            out.extend_from_slice(data.as_bytes());
        }
        out.extend_from_slice(b"\n\n");
        if kind == "message_stop" {
            st.done = true;
        }
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
