//! OpenAI (and OpenAI-compatible) upstream → OpenAI chunks: rewrite `model`, keep the rest.
//!
//! Each chunk is relayed byte for byte except the value of its top-level `model` member, which
//! is replaced by the gateway's id (so field order, number formatting and escapes are kept);
//! a chunk without `model` gets one appended. What the reframer reads of a chunk (`choices`,
//! `usage`, `error`, where the value of `model` is) is read by one validating scan
//! (`openai_scan.rs`); a chunk the scan cannot read exactly as the typed `serde_json` view
//! below would (escaped keys, duplicates, unexpected types, invalid JSON) goes through that view,
//! which decides, errors included. The gateway always asks upstream for usage; when the client
//! did not, the usage-only chunk (`choices: []` with a usage) is dropped from the output, and so
//! is a chunk with neither choices nor usage (Azure's leading `prompt_filter_results` chunk).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{openai_scan, parse, Options, Reframe, StreamState, DONE_EVENT};
use crate::errors::CoreError;
use crate::json;
use crate::sse::Event;
use crate::usage::{OpenAiUsage, Usage};

/// The members of a chunk that the gateway needs; the rest is skipped.
#[derive(Deserialize)]
struct ChunkView<'a> {
    /// Where the value of `model` is in the event (replaced by the gateway's id).
    #[serde(borrow, default)]
    model: Span<'a>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    /// vLLM (older versions) streams errors as a top-level `{"object":"error","message":…}`.
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
}

/// A member's raw value as it is in the event, `null` included (an `Option<&RawValue>` reads
/// `null` as `None`, which would lose where a `"model": null` is).
#[derive(Default)]
struct Span<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Span<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(|raw| Span(Some(raw)))
    }
}

impl Span<'_> {
    /// The byte range of the value in `data`, the text it was parsed from.
    fn range_in(&self, data: &str) -> Option<(usize, usize)> {
        let raw = self.0?.get();
        let start = (raw.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        let end = start.checked_add(raw.len())?;
        // Always so for a value parsed from `data`; checked rather than assumed.
        data.get(start..end)
            .filter(|found| std::ptr::eq(found.as_ptr(), raw.as_ptr()))
            .map(|_| (start, end))
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<&'a RawValue>,
}

/// Reframer for OpenAI-shaped upstreams.
#[derive(Debug)]
pub struct OpenAiReframer {
    /// The gateway model id as a JSON string literal.
    model_json: Vec<u8>,
    include_usage: bool,
    /// Scratch buffer for events whose data spans several lines.
    compact: Vec<u8>,
    /// What the scan keeps of the upstream's chunks to read the next one (`openai_scan::Memo`).
    memo: openai_scan::Memo,
    /// A text chunk's output up to its text's opening quote (`data: `, the `model` rewritten),
    /// the same for every chunk read from its text until the memo's last text chunk changes
    /// (in `read_with`: emptied before it); empty: not written yet.
    text_head: Vec<u8>,
}

impl OpenAiReframer {
    /// A reframer that writes `opts.model` into every chunk.
    pub fn new(opts: &Options) -> Self {
        let mut model_json = Vec::new();
        json::write_str(&mut model_json, &opts.model);
        Self {
            model_json,
            include_usage: opts.include_usage,
            compact: Vec::new(),
            memo: openai_scan::Memo::default(),
            text_head: Vec::new(),
        }
    }
}

fn upstream_error(raw: &str) -> (String, String) {
    match serde_json::from_str::<ErrorBody<'_>>(raw) {
        Ok(e) => {
            let kind = e.kind.map(Cow::into_owned).or_else(|| {
                e.code.filter(|c| !json::is_null(c)).map(|c| {
                    serde_json::from_str::<String>(c.get()).unwrap_or_else(|_| c.get().to_owned())
                })
            });
            (
                kind.unwrap_or_else(|| "error".to_owned()),
                e.message.map(Cow::into_owned).unwrap_or_default(),
            )
        }
        // `"error": "some text"` and other shapes.
        Err(_) => (
            "error".to_owned(),
            serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned()),
        ),
    }
}

impl OpenAiReframer {
    /// A chunk read from its text, written as `rewrite` writes it: its head (made once while
    /// the memo's text chunk stays the same), then its text and the rest as they came.
    fn write_text(&mut self, data: &str, text: openai_scan::Text, out: &mut Vec<u8>) {
        // (Without `model`, the rewrite inserts one at the end: not the same tail.)
        let (Some((start, end)), Some((head, rest))) =
            (text.model, data.as_bytes().split_at_checked(text.open + 1))
        else {
            return rewrite(data, text.model, &self.model_json, out);
        };
        if self.text_head.is_empty() {
            self.text_head
                .reserve(6 + head.len() + self.model_json.len() - (end - start));
            self.text_head.extend_from_slice(b"data: ");
            self.text_head.extend_from_slice(&head[..start]);
            self.text_head.extend_from_slice(&self.model_json);
            self.text_head.extend_from_slice(&head[end..]);
        }
        out.extend_from_slice(&self.text_head);
        out.extend_from_slice(rest);
        out.extend_from_slice(b"\n\n");
    }
}

fn rewrite(data: &str, model: Option<(usize, usize)>, model_json: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    if let Some((start, end)) = model {
        out.extend_from_slice(&data.as_bytes()[..start]);
        out.extend_from_slice(model_json);
        out.extend_from_slice(&data.as_bytes()[end..]);
    } else {
        // Valid JSON object without "model": insert it before the closing brace.
        let body = data.trim_end_matches([' ', '\t', '\n', '\r']);
        let body = body.strip_suffix('}').unwrap_or(body);
        out.extend_from_slice(body.as_bytes());
        if body
            .trim_end_matches([' ', '\t', '\n', '\r'])
            .ends_with('{')
        {
            out.extend_from_slice(b"\"model\":");
        } else {
            out.extend_from_slice(b",\"model\":");
        }
        out.extend_from_slice(model_json);
        out.push(b'}');
    }
    out.extend_from_slice(b"\n\n");
}

/// What the reframer reads of a chunk: by the scan (`openai_scan.rs`), or by the typed view
/// when the scan cannot tell.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    /// Where the value of the top-level `model` is in the event.
    pub(crate) model: Option<(usize, usize)>,
    /// How many choices (0 for none, `null` or `[]`).
    pub(crate) choices: usize,
    /// The last choice's non-null `finish_reason`.
    pub(crate) finish_reason: Option<Cow<'a, str>>,
    /// The characters of every choice's `content` and tool call `arguments`.
    pub(crate) content_chars: u64,
    pub(crate) usage: Option<Usage>,
    /// A non-null `error` member's raw value.
    pub(crate) error: Option<&'a str>,
    /// `"object": "error"` (vLLM's error event).
    pub(crate) object_error: bool,
}

impl<'a> Chunk<'a> {
    /// The chunk read by the typed view (`serde_json`): the reference, and the path of every
    /// chunk the scan leaves to it, errors included.
    pub(crate) fn typed(data: &'a str) -> Result<Self, CoreError> {
        let view: ChunkView<'a> = parse("openai", data)?;
        let mut chunk = Chunk {
            model: view
                .model
                .range_in(data)
                .or_else(|| view.model.0.and_then(|_| json::find_member(data, "model"))),
            usage: view.usage.as_ref().map(Usage::from),
            error: view.error.map(RawValue::get),
            object_error: view.object.as_deref() == Some("error"),
            ..Chunk::default()
        };
        for choice in view.choices.unwrap_or_default() {
            chunk.choices += 1;
            if let Some(reason) = choice.finish_reason {
                chunk.finish_reason = Some(reason);
            }
            let Some(delta) = &choice.delta else { continue };
            if let Some(text) = &delta.content {
                chunk.content_chars += json::char_count(text);
            }
            for call in delta.tool_calls.iter().flatten() {
                if let Some(args) = call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                    chunk.content_chars += json::char_count(args);
                }
            }
        }
        Ok(chunk)
    }
}

impl Reframe for OpenAiReframer {
    fn on_event(
        &mut self,
        ev: &Event<'_>,
        st: &mut StreamState,
        out: &mut Vec<u8>,
    ) -> Result<(), CoreError> {
        let data = json::trim_ws(&ev.data);
        if data == "[DONE]" {
            out.extend_from_slice(DONE_EVENT);
            st.done = true;
            return Ok(());
        }
        // A text chunk like the last one, read from its text alone, is one line as that one
        // was, and has nothing for the state but its characters.
        if let Some(text) = openai_scan::read_text(data, &self.memo) {
            st.content_chars += text.chars;
            self.write_text(data, text, out);
            return Ok(());
        }
        // Pretty-printed JSON over several data lines would break the one-line output.
        let data = if !ev.one_line && memchr::memchr2(b'\n', b'\r', data.as_bytes()).is_some() {
            self.compact.clear();
            json::write_compact(&mut self.compact, data);
            std::str::from_utf8(&self.compact).map_err(|e| CoreError::Sse(e.to_string()))?
        } else {
            data
        };
        self.text_head.clear(); // (the memo's last text chunk may change)
        let chunk = match openai_scan::read_with(data, &mut self.memo) {
            Some(chunk) => chunk,
            None => Chunk::typed(data)?,
        };
        if let Some(err) = chunk.error {
            st.upstream_error = Some(upstream_error(err));
            return Ok(());
        }
        if chunk.object_error {
            st.upstream_error = Some(upstream_error(data));
            return Ok(());
        }
        if let Some(reason) = chunk.finish_reason {
            st.finish_reason = Some(reason.into_owned());
        }
        st.content_chars += chunk.content_chars;
        if let Some(usage) = chunk.usage {
            st.usage = Some(usage);
            if chunk.choices == 0 && !self.include_usage {
                return Ok(());
            }
        } else if chunk.choices == 0 {
            // Nothing for the client: Azure's first chunk (`choices: []`, empty id and model,
            // only `prompt_filter_results`).
            return Ok(());
        }
        rewrite(data, chunk.model, &self.model_json, out);
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
