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

use super::bedrock::{BlockDelta, Delta, ToolUseDelta};
use crate::json_scan::{once, Scan};

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

    fn seeds() -> Vec<String> {
        [
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"ab"}"#,
            r#"{"contentBlockIndex":0,"delta":{"text":" w\u00f6rld \"\u2713\"\n\ud83d\ude00"}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"city\": \"Pa"}}}"#,
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"ris\"}"}}}"#,
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
            edits in crate::reframe::stream_edits::edits(4),
        ) {
            let events: Vec<String> = crate::reframe::stream_edits::edited(seeds(), edits);
            for data in &events {
                agrees(data);
            }
            same_output(&events);
        }
    }
}
