//! The Gemini reframer's fast path: one scan of a response's JSON that validates it and reads
//! what the reframer relays into a [`Reading`], without `serde_json`'s typed pass (its visitors,
//! a `Vec` per response and per candidate's parts, a `String` per text).
//!
//! **Conservative**, as the OpenAI chunk's scan (`openai_scan.rs`): [`read_marked`] answers only
//! for a response it reads exactly as the typed view of `gemini.rs` would: a JSON object whose
//! keys have no escapes, no member the view reads given twice, `candidates` and `parts` arrays of
//! objects, `content`, `functionCall` and `promptFeedback` objects or `null`, the strings the
//! view reads strings or `null`, `thought` a boolean or `null`, every other value valid JSON
//! nested at most about 64 deep, no lone UTF-16 surrogate in an escape, and no `error` member
//! but `null` (errors are rare: the typed view reads them). Anything else gives `None`, and the
//! typed view decides: the same reading, or the same error, as before. `usageMetadata`'s counts
//! are read as plain non-negative integers (a fraction, an exponent or a sign: left to the typed
//! view); every candidate is validated, the first one kept. The scan notes where the values that
//! change from one response to the next are ([`Marks`]), for `gemini_shape.rs`.

use std::borrow::Cow;

use super::gemini::{First, Reading};
use crate::json_scan::{once, Scan};
use crate::usage::{GeminiUsage, Usage};

/// The response as the typed view reads it, or `None` when the scan cannot tell (see the module
/// docs). `data` is the event's data.
#[cfg(test)]
pub fn read(data: &str) -> Option<Reading<'_>> {
    read_marked(data, &mut Marks::default())
}

/// Where the whole scan found the values that change from one response to the next.
#[derive(Default)]
pub(super) struct Marks {
    /// The span of the first candidate's last text part (quotes included).
    pub(super) text: Option<(usize, usize)>,
    /// How many parts the first candidate's text is made of.
    pub(super) texts: u32,
    /// Each usage count given as a number: its span.
    pub(super) counts: [Option<(usize, usize)>; COUNTS],
    /// `usageMetadata`'s counts, as read.
    pub(super) usage: Option<GeminiUsage>,
}

/// The response as [`read`] reads it, and where its changing values are in `marks`.
pub(super) fn read_marked<'a>(data: &'a str, marks: &mut Marks) -> Option<Reading<'a>> {
    let mut scan = Scan::new(data);
    let mut r = Reading::default();
    let mut seen = [false; 4];
    scan.members(|scan, key| {
        match key {
            b"candidates" => {
                once(&mut seen[0])?;
                candidates(scan, &mut r.first, marks)?;
            }
            b"usageMetadata" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    let u = usage(scan, &mut marks.counts)?;
                    r.usage = Some(Usage::from(&u));
                    marks.usage = Some(u);
                }
            }
            b"promptFeedback" => {
                once(&mut seen[2])?;
                if !scan.null()? {
                    r.blocked = block_reason(scan)?;
                }
            }
            b"error" => {
                once(&mut seen[3])?;
                if !scan.null()? {
                    return None;
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    scan.at_end().then_some(r)
}

const COUNTS: usize = 6;

/// A usage count by its place in `usageMetadata`'s reading.
pub(super) fn count_slot(u: &mut GeminiUsage, k: usize) -> &mut Option<u64> {
    match k {
        0 => &mut u.prompt_token_count,
        1 => &mut u.candidates_token_count,
        2 => &mut u.total_token_count,
        3 => &mut u.cached_content_token_count,
        4 => &mut u.thoughts_token_count,
        _ => &mut u.tool_use_prompt_token_count,
    }
}

/// `usageMetadata` (not `null`): its counts, each a plain non-negative integer or `null`; the
/// span of each number in `spans`.
fn usage(scan: &mut Scan<'_>, spans: &mut [Option<(usize, usize)>; COUNTS]) -> Option<GeminiUsage> {
    let mut u = GeminiUsage::default();
    let mut seen = [false; COUNTS];
    scan.members(|scan, key| {
        let at = match key {
            b"promptTokenCount" => 0,
            b"candidatesTokenCount" => 1,
            b"totalTokenCount" => 2,
            b"cachedContentTokenCount" => 3,
            b"thoughtsTokenCount" => 4,
            b"toolUsePromptTokenCount" => 5,
            _ => return Some(false),
        };
        once(&mut seen[at])?;
        scan.ws();
        let start = scan.i;
        let slot = count_slot(&mut u, at);
        scan.opt_u64(slot)?;
        spans[at] = slot.is_some().then_some((start, scan.i));
        Some(true)
    })?;
    Some(u)
}

/// `candidates` (an array, not `null`): the first one kept in `first`, where its text is in
/// `marks`.
fn candidates<'a>(
    scan: &mut Scan<'a>,
    first: &mut Option<First<'a>>,
    marks: &mut Marks,
) -> Option<()> {
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(());
    }
    loop {
        let mut texts = (None, 0);
        let candidate = candidate(scan, &mut texts)?;
        if first.is_none() {
            *first = Some(candidate);
            (marks.text, marks.texts) = texts;
        }
        if scan.next(b']')? {
            return Some(());
        }
    }
}

/// The span of a candidate's last text part, and how many make its text.
type Texts = (Option<(usize, usize)>, u32);

/// A candidate: `content.parts` and `finishReason`.
fn candidate<'a>(scan: &mut Scan<'a>, texts: &mut Texts) -> Option<First<'a>> {
    let mut first = First::default();
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"content" => {
                once(&mut seen[0])?;
                if !scan.null()? {
                    parts(scan, &mut first, texts)?;
                }
            }
            b"finishReason" => {
                once(&mut seen[1])?;
                scan.opt_str(&mut first.finish_reason)?;
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some(first)
}

/// A candidate's `content`: each of its `parts` (an array, not `null`).
fn parts<'a>(scan: &mut Scan<'a>, first: &mut First<'a>, texts: &mut Texts) -> Option<()> {
    let mut seen = false;
    scan.members(|scan, key| {
        if key != b"parts" {
            return Some(false);
        }
        once(&mut seen)?;
        scan.open(b'[')?;
        if !scan.empty(b']') {
            loop {
                part(scan, first, texts)?;
                if scan.next(b']')? {
                    break;
                }
            }
        }
        Some(true)
    })
}

/// A part: its `text` unless it is a thought, its `functionCall`.
fn part<'a>(scan: &mut Scan<'a>, first: &mut First<'a>, texts: &mut Texts) -> Option<()> {
    let (mut text, mut thought, mut call) = (None, None, None);
    let mut at = (0, 0);
    let mut seen = [false; 3];
    scan.members(|scan, key| {
        match key {
            b"text" => {
                once(&mut seen[0])?;
                scan.ws();
                at.0 = scan.i;
                scan.opt_str(&mut text)?;
                at.1 = scan.i;
            }
            b"thought" => {
                once(&mut seen[1])?;
                scan.opt_bool(&mut thought)?;
            }
            b"functionCall" => {
                once(&mut seen[2])?;
                if !scan.null()? {
                    call = Some(function_call(scan)?);
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    if let (Some(text), false) = (text, thought.unwrap_or(false)) {
        first.push_text(text);
        *texts = (Some(at), texts.1 + 1);
    }
    first.calls.extend(call);
    Some(())
}

type Call<'a> = (Option<Cow<'a, str>>, Option<&'a str>);

/// A `functionCall`: its `name` and the raw text of its `args`.
fn function_call<'a>(scan: &mut Scan<'a>) -> Option<Call<'a>> {
    let (mut name, mut args) = (None, None);
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"name" => {
                once(&mut seen[0])?;
                scan.opt_str(&mut name)?;
            }
            b"args" => {
                once(&mut seen[1])?;
                args = if scan.null()? {
                    None
                } else {
                    Some(scan.span(3)?)
                };
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some((name, args))
}

/// `promptFeedback`: whether its `blockReason` is given.
fn block_reason(scan: &mut Scan<'_>) -> Option<bool> {
    let mut reason = None;
    let mut seen = false;
    scan.members(|scan, key| {
        if key != b"blockReason" {
            return Some(false);
        }
        once(&mut seen)?;
        scan.opt_str(&mut reason)?;
        Some(true)
    })?;
    Some(reason.is_some())
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;
    use crate::reframe::{Options, Stream};

    /// Whenever the scan answers, the typed view reads the same response.
    fn agrees(data: &str) -> Option<Reading<'_>> {
        let scanned = read(data);
        if let Some(r) = &scanned {
            assert_eq!(Some(r), Reading::typed(data).ok().as_ref(), "{data}");
        }
        scanned
    }

    const TEXT: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":1,"totalTokenCount":58},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

    #[test]
    fn a_text_response_is_read_by_the_scan_without_a_copy() {
        let r = agrees(TEXT).unwrap();
        let first = r.first.unwrap();
        assert!(matches!(first.text, Cow::Borrowed("Hello")));
        assert_eq!(r.usage.unwrap().total_tokens, 58);
    }

    #[test]
    fn every_response_of_a_stream_is_read_by_the_scan() {
        for data in seeds() {
            assert!(agrees(&data).is_some(), "{data}");
        }
    }

    #[test]
    fn texts_join_thoughts_are_skipped_calls_keep_their_raw_args() {
        let data = r#"{"candidates":[{"content":{"parts":[{"text":"Let me think","thought":true},{"text":"a\n"},{"text":"b","thought":false},{"functionCall":{"name":"f","args":{ "x" : [1, 2] }}},{"functionCall":{"name":null}}]},"finishReason":"STOP"},{"content":{"parts":[{"text":"second"}]}}]}"#;
        let first = agrees(data).unwrap().first.unwrap();
        assert_eq!(first.text, "a\nb");
        assert_eq!(
            first.calls,
            vec![
                (Some(Cow::Borrowed("f")), Some(r#"{ "x" : [1, 2] }"#)),
                (None, None)
            ]
        );
        assert_eq!(first.finish_reason.as_deref(), Some("STOP"));
    }

    #[test]
    fn nulls_and_unknown_members_read_as_the_typed_view_reads_them() {
        for data in [
            r#"{"usageMetadata":null,"promptFeedback":null,"error":null}"#,
            r#"{"candidates":[],"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]}}"#,
            r#"{"candidates":[{"content":null,"finishReason":null}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":null,"thought":null,"functionCall":null}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"args":null,"id":"x"}}]}}]}"#,
            r#"{"candidates":[{}],"promptFeedback":{}}"#,
            r#"{"usageMetadata":{"promptTokenCount":null,"toolUsePromptTokenCount":3,"trafficType":"ON_DEMAND","promptTokensDetails":[{"modality":"TEXT","tokenCount":57}]}}"#,
            "{}",
        ] {
            assert!(agrees(data).is_some(), "{data}");
        }
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_the_typed_view() {
        for data in [
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#, // an error
            r#"{"candidates":null}"#, // a list that is null
            r#"{"candidates":[{"content":{"parts":null}}]}"#,
            r#"{"candidates":[null]}"#, // a candidate that is not an object
            r#"{"candidates":[{"content":{"parts":[null]}}]}"#,
            r#"{"candidates":[],"candidates":[]}"#, // a duplicate member
            r#"{"candidates":[{"content":{"parts":[{"text":"a","text":"b"}]}}]}"#,
            r#"{"c\u0061ndidates":[]}"#, // an escaped key
            r#"{"candidates":[{"content":{"parts":[{"thought":"yes"}]}}]}"#, // a string for a bool
            r#"{"candidates":[{"finishReason":5}]}"#, // a number for a string
            r#"{"usageMetadata":{"promptTokenCount":-1}}"#, // a usage serde refuses
            r#"{"usageMetadata":{"promptTokenCount":1.0}}"#, // a count serde reads otherwise
            r#"{"usageMetadata":{"totalTokenCount":1,"totalTokenCount":1}}"#,
            r#"{"usageMetadata":[1,2,3]}"#, // a struct as an array
            r#"{"candidates":[{"content":{"parts":[{"text":"\ud800"}]}}]}"#, // a lone surrogate
            r#"{"candidates":[]"#,
            r#"{"candidates":[]} x"#,
            "",
        ] {
            assert!(agrees(data).is_none(), "{data}");
        }
    }

    fn seeds() -> Vec<String> {
        [
            TEXT,
            r#"{"candidates":[{"content":{"parts":[{"text":"Hello again"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":3,"totalTokenCount":60},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"\u00e9\n"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":null,"totalTokenCount":61},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":5,"totalTokenCount":62},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a \"quoted\"\n\u00e9\ud83d\ude00 text"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":2,"totalTokenCount":59,"thoughtsTokenCount":4},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"hm","thought":true},{"text":"ok"}],"role":"model"},"index":0}],"responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"location":"Paris","days":[1,2]}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":9,"totalTokenCount":66,"cachedContentTokenCount":32}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]},"finishReason":"MAX_TOKENS","safetyRatings":[{"category":"HARM","probability":"NEGLIGIBLE"}]}]}"#,
            r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":5}}"#,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A stream's responses through the reframer: each read as the reframer reads it, and by the
    /// typed view alone (the same responses, each with a member added that the scan cannot read):
    /// the same bytes out and the same state, or both an error.
    fn same_output(events: &[String]) {
        let opts = Options {
            model: "gemini/flash".to_owned(),
            response_id: "chatcmpl-1".to_owned(),
            created: 1,
            include_usage: true,
            response_fields: "{}".to_owned(),
        };
        let run = |typed_only: bool| {
            let mut stream = Stream::new("gemini", &opts, 1 << 20).unwrap();
            let mut out = Vec::new();
            let mut result = Ok(());
            for data in events {
                // `"\u0078":0` is an unknown member the typed view skips and the scan refuses.
                let data = match data.trim_start().strip_prefix('{') {
                    Some(rest) if typed_only && rest.trim_start().starts_with('}') => {
                        format!(r#"{{"\u0078":0{rest}"#)
                    }
                    Some(rest) if typed_only => format!(r#"{{"\u0078":0,{rest}"#),
                    _ => data.clone(),
                };
                result = stream.feed(format!("data: {data}\r\n\r\n").as_bytes(), &mut out);
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = stream.finish(&mut out);
            }
            // Errors compared by kind: serde's message gives a column, moved by the added member.
            (out, format!("{:?}", stream.state()), result.is_ok())
        };
        assert_eq!(run(false), run(true), "{events:?}");
    }

    #[test]
    fn a_whole_stream_reframes_to_the_same_bytes_by_either_path() {
        same_output(&seeds());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Bytes changed, inserted or removed anywhere in a stream's responses (JSON's own
        /// characters among them): whenever the scan answers, the typed view reads the same
        /// response, and the reframer writes the same bytes.
        #[test]
        fn the_scan_never_reads_a_response_otherwise_than_the_typed_view(
            edits in crate::reframe::stream_edits::edits(9),
        ) {
            let events: Vec<String> = crate::reframe::stream_edits::edited(seeds(), edits)
                .into_iter()
                .filter(|e| !e.contains(['\r', '\n']))
                .collect();
            for data in &events {
                agrees(data);
            }
            same_output(&events);
            crate::reframe::gemini_shape::same_through_the_shape(&events);
        }
    }
}
