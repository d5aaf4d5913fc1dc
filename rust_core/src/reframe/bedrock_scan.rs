//! The Bedrock reframer's fast path for `contentBlockDelta` (one per token): one scan of its
//! JSON payload that validates it and reads it into the typed view of `bedrock.rs`,
//! [`BlockDelta`], without `serde_json`'s typed pass (and its `String` per `text`: serde never
//! borrows a `Cow<str>` inside an `Option`).
//!
//! **Conservative**, as the other scans (`openai_scan.rs`): [`read_delta`] answers only for a
//! payload it reads exactly as the typed view would: a JSON object whose keys have no escapes,
//! no member the view reads given twice, `contentBlockIndex` a plain integer within `u32` (not
//! `null`: the view's field is not optional), `delta` and `toolUse` objects or `null`, `text` a
//! string or `null`, `input` a string, every other value valid JSON nested at most about 64
//! deep, and no lone UTF-16 surrogate in an escape. Anything else gives `None`, and the typed
//! view decides: the same delta, or the same error, as before.
//!
//! A tool call's argument fragment in Bedrock's own compact form is read before that scan, by
//! [`tool_fragment`]: its escaped text is copied into the chunk as it came, with no unescaping
//! and escaping again.

use super::bedrock::{BlockDelta, Delta, ToolUseDelta};
use crate::json;
use crate::json_scan::{once, Scan};

/// A `contentBlockDelta` written exactly as Bedrock writes a tool call's argument fragment,
/// `{"contentBlockIndex":N,"delta":{"toolUse":{"input":"…"}}}`, the padding member
/// `,"p":"…"` before the last brace or not: its block, the fragment as it came (its JSON
/// string's text) and the fragment's characters. Only when `json::as_written` takes the text
/// (so `json::write_str` writes the fragment back as exactly that text), `N` is a JSON integer
/// within `u32` and the padding a string without escapes or control characters; `None`
/// otherwise (any other spelling, spacing or member order: left to [`read_delta`]). Such a
/// payload is one JSON object the typed view reads as that block and fragment.
pub fn tool_fragment(data: &str) -> Option<(u32, &str, u64)> {
    let rest = data.strip_prefix(r#"{"contentBlockIndex":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (index, rest) = rest.split_at(digits);
    if index.is_empty() || (index.len() > 1 && index.starts_with('0')) {
        return None; // no number, or a leading zero JSON refuses
    }
    let rest = rest.strip_prefix(r#","delta":{"toolUse":{"input":""#)?;
    let block = index.parse::<u32>().ok()?;
    let raw = rest
        .strip_suffix(r#""}}}"#)
        .or_else(|| without_padding(rest))?;
    Some((block, raw, json::as_written(raw)?))
}

/// `rest` less a closing `"}},"p":"…"}` whose padding has no escape or control character.
fn without_padding(rest: &str) -> Option<&str> {
    let body = rest.strip_suffix(r#""}"#)?;
    // The padding's text has no quote: its opening quote is the last one before the end.
    let open = body.rfind('"')?;
    let padding = &body.as_bytes()[open + 1..];
    if padding.iter().any(|&c| c == b'\\' || c < 0x20) {
        return None;
    }
    body[..=open].strip_suffix(r#""}},"p":""#)
}

/// The payload as the typed view reads it, or `None` when the scan cannot tell.
pub fn read_delta(data: &str) -> Option<BlockDelta<'_>> {
    let mut scan = Scan::new(data);
    let mut d = BlockDelta::default();
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"contentBlockIndex" => {
                once(&mut seen[0])?;
                let mut index = None;
                scan.opt_u64(&mut index)?;
                d.content_block_index = u32::try_from(index?).ok()?;
            }
            b"delta" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    d.delta = Some(delta(scan)?);
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    scan.at_end().then_some(d)
}

fn delta<'a>(scan: &mut Scan<'a>) -> Option<Delta<'a>> {
    let mut d = Delta::default();
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"text" => {
                once(&mut seen[0])?;
                scan.opt_str(&mut d.text)?;
            }
            b"toolUse" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    d.tool_use = Some(tool_use(scan)?);
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some(d)
}

fn tool_use<'a>(scan: &mut Scan<'a>) -> Option<ToolUseDelta<'a>> {
    let mut t = ToolUseDelta::default();
    let mut seen = false;
    scan.members(|scan, key| {
        if key != b"input" {
            return Some(false);
        }
        once(&mut seen)?;
        t.input = scan.str_cow()?;
        Some(true)
    })?;
    Some(t)
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;
    use crate::eventstream::encode_message;
    use crate::reframe::{parse, Options, Stream};

    /// Whenever the scan answers, the typed view reads the same delta.
    fn agrees(data: &str) -> Option<BlockDelta<'_>> {
        let scanned = read_delta(data);
        if let Some(d) = &scanned {
            let typed: Option<BlockDelta<'_>> = parse("bedrock", data).ok();
            assert_eq!(Some(d), typed.as_ref(), "{data}");
        }
        scanned
    }

    #[test]
    fn a_text_delta_is_read_by_the_scan_without_a_copy() {
        let d = agrees(r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abc"}"#).unwrap();
        assert!(matches!(
            d.delta.unwrap().text,
            Some(Cow::Borrowed("Hello"))
        ));
    }

    #[test]
    fn deltas_read_as_the_typed_view_reads_them() {
        for data in seeds().iter().map(String::as_str).chain([
            r#"{"delta":null}"#,
            r#"{"contentBlockIndex":4294967295,"delta":{"text":null,"toolUse":null}}"#,
            r#"{"delta":{"toolUse":{}}}"#,
            "{}",
        ]) {
            assert!(agrees(data).is_some(), "{data}");
        }
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_the_typed_view() {
        for data in [
            r#"{"contentBlockIndex":null}"#, // not optional in the view
            r#"{"contentBlockIndex":4294967296}"#,
            r#"{"contentBlockIndex":-1}"#,
            r#"{"contentBlockIndex":1.0}"#,
            r#"{"delta":{"toolUse":{"input":null}}}"#, // not optional either
            r#"{"delta":{"text":"a","text":"b"}}"#,
            r#"{"d\u0065lta":{}}"#,
            r#"{"delta":{"text":"\ud800"}}"#,
            r#"{"delta":[]}"#,
            r#"{"delta":{}"#,
            "",
        ] {
            assert!(agrees(data).is_none(), "{data}");
        }
    }

    /// `data`, when `tool_fragment` takes it, is read by the typed view as a delta of that block
    /// with that fragment alone, which `write_str` writes back as it came, with those
    /// characters.
    fn fragment_agrees(data: &str) -> Option<(u32, &str, u64)> {
        let taken = tool_fragment(data);
        if let Some((block, raw, chars)) = taken {
            let typed: BlockDelta<'_> = parse("bedrock", data).unwrap();
            assert_eq!(typed.content_block_index, block, "{data}");
            let delta = typed.delta.unwrap();
            assert_eq!(delta.text, None, "{data}");
            let input = delta.tool_use.unwrap().input;
            let mut out = Vec::new();
            json::write_str(&mut out, &input);
            assert_eq!(&out[1..out.len() - 1], raw.as_bytes(), "{data}");
            assert_eq!(json::char_count(&input), chars, "{data}");
        }
        taken
    }

    #[test]
    fn a_tool_fragment_in_bedrock_s_form_is_taken_as_it_came() {
        for (data, taken) in [
            (
                r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\": 1"}}}"#,
                Some((1, r#"{\"a\": 1"#, 7)),
            ),
            (
                r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"x\ny"}},"p":"abcXYZ09"}"#,
                Some((0, r"x\ny", 3)),
            ),
            (
                r#"{"contentBlockIndex":4294967295,"delta":{"toolUse":{"input":""}},"p":""}"#,
                Some((u32::MAX, "", 0)),
            ),
            (
                r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"é\u001f"}}}"#,
                Some((2, r"é\u001f", 2)),
            ),
        ] {
            assert_eq!(fragment_agrees(data), taken, "{data}");
        }
        for data in [
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a\/b"}}}"#, // written `/`
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\u00e9"}}}"#, // written é
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\u001F"}}}"#,
            r#"{"contentBlockIndex":01,"delta":{"toolUse":{"input":"a"}}}"#,
            r#"{"contentBlockIndex":4294967296,"delta":{"toolUse":{"input":"a"}}}"#,
            r#"{"contentBlockIndex":-1,"delta":{"toolUse":{"input":"a"}}}"#,
            r#"{"contentBlockIndex":,"delta":{"toolUse":{"input":"a"}}}"#,
            r#"{"contentBlockIndex": 1,"delta":{"toolUse":{"input":"a"}}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a"}},"p":"a\"b"}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a"}},"q":"b"}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a"},"text":"b"}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a","input":"b"}}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a"}}} "#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a"}}"#,
            r#"{"contentBlockIndex":1,"delta":{"text":"a"}}"#,
            r#"{"delta":{"toolUse":{"input":"a"}},"contentBlockIndex":1}"#,
        ] {
            assert_eq!(fragment_agrees(data), None, "{data}");
        }
    }

    fn seeds() -> Vec<String> {
        [
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"ab"}"#,
            r#"{"contentBlockIndex":0,"delta":{"text":" w\u00f6rld \"\u2713\"\n\ud83d\ude00"}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"city\": \"Pa"}}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"ris\"}"}}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\n\u0001é"}},"p":"abcd"}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"a\/\u00e9"}}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":""}},"p":"x"}"#,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A stream with `deltas` as its `contentBlockDelta` payloads, as the reframer reads them
    /// and through the typed view alone (each payload with a member added that the scan cannot
    /// read, `"\u0078":0`): the same bytes out and the same state, or both an error.
    fn same_output(deltas: &[String]) {
        let opts = Options {
            model: "bedrock/claude".to_owned(),
            response_id: "chatcmpl-1".to_owned(),
            created: 1,
            include_usage: true,
            response_fields: "{}".to_owned(),
        };
        let event = |name: &str, payload: &str| {
            encode_message(
                &[(":event-type", name), (":message-type", "event")],
                payload.as_bytes(),
            )
        };
        let run = |typed_only: bool| {
            let mut wire = event("messageStart", r#"{"role":"assistant"}"#);
            wire.extend(event(
                "contentBlockStart",
                r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"f"}}}"#,
            ));
            for data in deltas {
                let data = match data.trim_start().strip_prefix('{') {
                    Some(rest) if typed_only && rest.trim_start().starts_with('}') => {
                        format!(r#"{{"\u0078":0{rest}"#)
                    }
                    Some(rest) if typed_only => format!(r#"{{"\u0078":0,{rest}"#),
                    _ => data.clone(),
                };
                wire.extend(event("contentBlockDelta", &data));
            }
            wire.extend(event("messageStop", r#"{"stopReason":"end_turn"}"#));
            let mut stream = Stream::new("bedrock", &opts, 1 << 20).unwrap();
            let mut out = Vec::new();
            let result = stream
                .feed(&wire, &mut out)
                .and_then(|()| stream.finish(&mut out));
            // Errors compared by kind: serde's message gives a column, moved by the added member.
            (out, format!("{:?}", stream.state()), result.is_ok())
        };
        assert_eq!(run(false), run(true), "{deltas:?}");
    }

    #[test]
    fn a_whole_stream_reframes_to_the_same_bytes_by_either_path() {
        same_output(&seeds());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Bytes changed, inserted or removed anywhere in a stream's deltas (JSON's own
        /// characters among them): whenever the scan answers, the typed view reads the same
        /// delta, and the reframer writes the same bytes.
        #[test]
        fn the_scan_never_reads_a_delta_otherwise_than_the_typed_view(
            edits in crate::reframe::stream_edits::edits(7),
        ) {
            let events: Vec<String> = crate::reframe::stream_edits::edited(seeds(), edits);
            for data in &events {
                agrees(data);
                fragment_agrees(data);
            }
            same_output(&events);
        }

        /// Every fragment `serde_json` writes in Bedrock's form (its object keys sorted, as
        /// Bedrock orders them) is taken, as `write_str` writes it, with its characters.
        #[test]
        fn a_fragment_serde_json_writes_is_taken(
            input in proptest::collection::vec(
                prop::sample::select(vec!['a', ' ', '"', '\\', '/', '\n', '\r', '\t', '\u{8}',
                    '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', 'é', '😀', '{', '}', ':', ',']),
                0..16,
            ),
            block in any::<u32>(),
            padding in proptest::option::of("[a-zA-Z0-9]{0,12}"),
        ) {
            let input: String = input.into_iter().collect();
            let mut payload = serde_json::json!(
                {"contentBlockIndex": block, "delta": {"toolUse": {"input": input}}}
            );
            if let Some(p) = padding {
                payload["p"] = serde_json::Value::String(p);
            }
            let data = payload.to_string();
            let mut out = Vec::new();
            json::write_str(&mut out, &input);
            let written = std::str::from_utf8(&out[1..out.len() - 1]).unwrap();
            prop_assert_eq!(
                fragment_agrees(&data),
                Some((block, written, json::char_count(&input)))
            );
        }
    }
}
