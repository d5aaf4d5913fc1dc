//! The Messages and Responses reframers' fast path: one scan of an OpenAI chunk (the gateway's
//! own, as the `openai` and `gemini` reframers write them) that validates it and reads it into
//! the typed view of `to_anthropic.rs`, [`ChunkView`], without `serde_json`'s typed pass (its
//! visitors, and a `String` per string member: serde never borrows a `Cow<str>` inside an
//! `Option`).
//!
//! **Conservative**, as the OpenAI reframer's scan (`openai_scan.rs`): [`read`] answers only
//! for a chunk it reads exactly as the typed view would: a JSON object whose keys have no
//! escapes, no member the view reads given twice, `choices` and `tool_calls` arrays of objects
//! or `null`, `delta` and `function` objects or `null`, the strings the view reads strings or
//! `null`, the indexes plain non-negative integers (a tool call's within `u32`) or `null`,
//! every other value valid JSON nested at most about 64 deep, and no lone UTF-16 surrogate in an
//! escape. Anything else gives `None`, and the typed view decides: the same chunk, or the same
//! error, as before. `usage`, `error` and a choice's `stop_reason` (vLLM's) are read by
//! `serde_json` from their own spans (once per stream, or rarely).
//!
//! A stream's chunks start alike (`{"id":…,"object":…,"created":…,"model":…,`, members the view
//! does not read): [`read_with`] scans those bytes once ([`Prefix`]), as the OpenAI reframer's
//! scan does its own (`openai_scan.rs`).

use serde_json::value::RawValue;

use super::to_anthropic::{Arguments, Choice, ChunkView, Delta, Function, ToolCall};
use crate::json;
use crate::json_scan::{once, Scan};
use crate::usage::OpenAiUsage;

/// The chunk as the typed view reads it, or `None` when the scan cannot tell (see the module
/// docs). `data` is the event's data, trimmed of whitespace. (The reframers read through
/// [`read_with`]; this whole scan is the reference its tests compare with.)
#[cfg(test)]
pub fn read(data: &str) -> Option<ChunkView<'_>> {
    whole(data, None)
}

/// A chunk's bytes up to and with a comma of its top level before any member the view reads:
/// the scan is in the same state there whatever follows, so the next chunk that starts with
/// them is scanned from there. Empty: none yet.
#[derive(Debug, Default)]
pub struct Prefix {
    bytes: Vec<u8>,
}

/// [`read`], resuming after `prefix` when `data` starts with its bytes (the same answer);
/// otherwise a whole scan, whose last such comma makes the prefix.
pub fn read_with<'a>(data: &'a str, prefix: &mut Prefix) -> Option<ChunkView<'a>> {
    if !prefix.bytes.is_empty() && data.as_bytes().starts_with(&prefix.bytes) {
        let mut scan = Scan::new(data);
        scan.i = prefix.bytes.len();
        return members(scan, None);
    }
    let mut cut = 0;
    let view = whole(data, Some(&mut cut))?;
    prefix.bytes.clear();
    prefix.bytes.extend_from_slice(&data.as_bytes()[..cut]);
    Some(view)
}

/// The scan from the chunk's start; `cut`: where to note the last cut met (see [`Prefix`]).
fn whole<'a>(data: &'a str, cut: Option<&mut usize>) -> Option<ChunkView<'a>> {
    let mut scan = Scan::new(data);
    scan.open(b'{')?;
    if scan.empty(b'}') {
        return scan.at_end().then_some(ChunkView {
            choices: None,
            usage: None,
            error: None,
        });
    }
    members(scan, cut)
}

/// The top level's members from a member's start (`scan.i`) to the chunk's end (as
/// `Scan::members` reads an object's).
fn members<'a>(mut scan: Scan<'a>, mut cut: Option<&mut usize>) -> Option<ChunkView<'a>> {
    let mut view = ChunkView {
        choices: None,
        usage: None,
        error: None,
    };
    let mut seen = [false; 3];
    loop {
        match scan.key()? {
            b"choices" => {
                once(&mut seen[0])?;
                if !scan.null()? {
                    view.choices = Some(list(&mut scan, choice)?);
                }
            }
            b"usage" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    view.usage = Some(OpenAiUsage::read(&mut scan)?);
                }
            }
            b"error" => {
                once(&mut seen[2])?;
                raw(&mut scan, &mut view.error)?;
            }
            _ => scan.value(2)?,
        }
        if scan.next(b'}')? {
            break;
        }
        if let Some(cut) = cut.as_deref_mut() {
            if seen == [false; 3] {
                *cut = scan.i;
            }
        }
    }
    scan.at_end().then_some(view)
}

/// A value or `null` into `slot`, as an `Option<&RawValue>` member reads it (`serde_json` checks
/// the span once more: rare members only).
fn raw<'a>(scan: &mut Scan<'a>, slot: &mut Option<&'a RawValue>) -> Option<()> {
    *slot = if scan.null()? {
        None
    } else {
        Some(serde_json::from_str(scan.span(3)?).ok()?)
    };
    Some(())
}

/// An array (not `null`) of the items `item` reads.
fn list<'a, T>(scan: &mut Scan<'a>, item: fn(&mut Scan<'a>) -> Option<T>) -> Option<Vec<T>> {
    scan.open(b'[')?;
    let mut items = Vec::new();
    if scan.empty(b']') {
        return Some(items);
    }
    loop {
        items.push(item(scan)?);
        if scan.next(b']')? {
            return Some(items);
        }
    }
}

fn choice<'a>(scan: &mut Scan<'a>) -> Option<Choice<'a>> {
    let mut c = Choice {
        index: None,
        delta: None,
        finish_reason: None,
        stop_reason: None,
    };
    let mut seen = [false; 4];
    scan.members(|scan, key| {
        match key {
            b"index" => {
                once(&mut seen[0])?;
                scan.opt_u64(&mut c.index)?;
            }
            b"delta" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    c.delta = Some(delta(scan)?);
                }
            }
            b"finish_reason" => {
                once(&mut seen[2])?;
                scan.opt_str(&mut c.finish_reason)?;
            }
            b"stop_reason" => {
                once(&mut seen[3])?;
                raw(scan, &mut c.stop_reason)?;
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some(c)
}

fn delta<'a>(scan: &mut Scan<'a>) -> Option<Delta<'a>> {
    let mut d = Delta {
        content: None,
        tool_calls: None,
    };
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"content" => {
                once(&mut seen[0])?;
                scan.opt_str(&mut d.content)?;
            }
            b"tool_calls" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    d.tool_calls = Some(list(scan, tool_call)?);
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some(d)
}

fn tool_call<'a>(scan: &mut Scan<'a>) -> Option<ToolCall<'a>> {
    let mut t = ToolCall {
        index: None,
        id: None,
        function: None,
    };
    let mut seen = [false; 3];
    scan.members(|scan, key| {
        match key {
            b"index" => {
                once(&mut seen[0])?;
                let mut index = None;
                scan.opt_u64(&mut index)?;
                t.index = match index {
                    Some(i) => Some(u32::try_from(i).ok()?),
                    None => None,
                };
            }
            b"id" => {
                once(&mut seen[1])?;
                scan.opt_str(&mut t.id)?;
            }
            b"function" => {
                once(&mut seen[2])?;
                if !scan.null()? {
                    t.function = Some(function(scan)?);
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some(t)
}

fn function<'a>(scan: &mut Scan<'a>) -> Option<Function<'a>> {
    let mut f = Function {
        name: None,
        arguments: None,
    };
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"name" => {
                once(&mut seen[0])?;
                scan.opt_str(&mut f.name)?;
            }
            b"arguments" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    f.arguments = Some(arguments(scan)?);
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some(f)
}

/// A string at `scan.i`: its text as it came when `json::write_str` writes its value back so
/// (`json::as_written`), to be copied; otherwise its value (`\/`, `\u00e9`, a surrogate pair:
/// rare in arguments).
fn arguments<'a>(scan: &mut Scan<'a>) -> Option<Arguments<'a>> {
    let at = scan.i;
    let (start, end, _) = scan.string()?;
    let text = scan.s.get(start..end)?;
    if let Some(chars) = json::as_written(text) {
        return Some(Arguments::Written(text, chars));
    }
    scan.i = at;
    Some(Arguments::Value(scan.str_cow()?))
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;
    use crate::reframe::{parse, Options, Stream};

    /// Whenever the scan answers, the typed view reads the same chunk (compared by their debug
    /// text: `RawValue` has no `PartialEq`, and a borrowed and an owned text print alike).
    fn agrees(data: &str) -> bool {
        let Some(scanned) = read(data) else {
            return false;
        };
        let typed: ChunkView<'_> = parse("openai", data).unwrap();
        assert_eq!(format!("{scanned:?}"), format!("{typed:?}"), "{data}");
        true
    }

    /// The arguments the scan keeps as they came (`Arguments::Written`): the typed view reads
    /// a value that `json::write_str` writes as that text, with those characters. How many.
    fn written_agrees(data: &str) -> usize {
        fn calls(view: ChunkView<'_>) -> Vec<Option<Arguments<'_>>> {
            let choices = view.choices.into_iter().flatten();
            let deltas = choices.filter_map(|c| c.delta);
            let calls = deltas.flat_map(|d| d.tool_calls.into_iter().flatten());
            calls
                .map(|t| t.function.and_then(|f| f.arguments))
                .collect()
        }
        let Some(scanned) = read(data) else {
            return 0;
        };
        let typed: ChunkView<'_> = parse("openai", data).unwrap();
        let mut written = 0;
        for (scanned, typed) in calls(scanned).into_iter().zip(calls(typed)) {
            if let Some(Arguments::Written(text, chars)) = scanned {
                let Some(Arguments::Value(value)) = typed else {
                    unreachable!("{data}");
                };
                let mut out = Vec::new();
                json::write_escaped(&mut out, &value);
                assert_eq!(out, text.as_bytes(), "{data}");
                assert_eq!(json::char_count(&value), chars, "{data}");
                written += 1;
            }
        }
        written
    }

    /// A chunk of one tool call fragment whose JSON string's text is `text`.
    fn fragment(text: &str) -> String {
        format!(
            r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{text}"}}}}]}}}}]}}"#
        )
    }

    #[test]
    fn arguments_written_as_write_str_writes_them_are_kept_as_they_came() {
        for text in [
            "",
            r#"{\"path\": \"a.txt\"}"#,
            r#"\n\t\b\f\r\\\""#,
            r"\u0001\u001f",
            "é€😀\u{7f}",
        ] {
            let data = fragment(text);
            assert!(agrees(&data), "{data}");
            assert_eq!(written_agrees(&data), 1, "{data}");
        }
        // Kept as values, written by `write_str` as before: `/`, `é`, a line feed as `\n`,
        // lowercase hex, `A`, DEL and the emoji as they are.
        for text in [
            r"a\/b",
            r"\u00e9",
            r"\u000a",
            r"\u001F",
            r"\u0041",
            r"\u007f", // DEL is written as it is
            r"\ud83d\ude00",
            r"\uD83D\uDE00",
        ] {
            let data = fragment(text);
            assert!(agrees(&data), "{data}");
            assert_eq!(written_agrees(&data), 0, "{data}");
        }
    }

    #[test]
    fn every_chunk_of_a_stream_is_read_by_the_scan() {
        for data in seeds() {
            assert!(agrees(&data), "{data}");
        }
    }

    #[test]
    fn nulls_and_unknown_members_read_as_the_typed_view_reads_them() {
        for data in [
            r#"{"choices":null,"usage":null,"error":null}"#,
            r#"{"choices":[{"index":null,"delta":null,"finish_reason":null,"stop_reason":null,"logprobs":null}]}"#,
            r#"{"choices":[{"delta":{"content":null,"tool_calls":null,"role":"assistant"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":null,"id":null,"function":null,"type":"function"}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":4294967295,"function":{"name":null,"arguments":null}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":"END"}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":128009}]}"#,
            r#"{"error":{"message":"m","type":"t"}}"#,
            r#"{"error":"text"}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2.0}}"#, // counts as billing reads them
            "{}",
        ] {
            assert!(agrees(data), "{data}");
        }
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_the_typed_view() {
        for data in [
            r#"{"\u0063hoices":[]}"#,         // an escaped key
            r#"{"choices":[],"choices":[]}"#, // a duplicate member
            r#"{"choices":[{"index":0,"index":0}]}"#,
            r#"["choices"]"#,        // a struct as an array
            r#"{"choices":[null]}"#, // a choice that is not an object
            r#"{"choices":[{"delta":{"tool_calls":[{"index":4294967296}]}}]}"#, // beyond u32
            r#"{"choices":[{"index":-1}]}"#, // counts serde reads otherwise
            r#"{"choices":[{"index":0.0}]}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#, // a number for a string
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#, // a lone surrogate
            r#"{"choices":[]"#,
            r#"{"choices":[]} x"#,
            "",
        ] {
            assert!(!agrees(data), "{data}");
        }
    }

    fn seeds() -> Vec<String> {
        [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a \"b\"\n\u00e9\ud83d\ude00"},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"location\": \"Par"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is\n\u0001\u007fé\"\\"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\/\u00e9\ud83d\ude00\u001F"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a\t\"b\"\/"},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"f","arguments":"{\"q\":\"\t"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\u00e9"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":"END"}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":47,"total_tokens":59,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A stream's chunks through a reframer (`kind`): as the reframer reads them, and through the
    /// typed view alone (the same chunks, each with a member added that the scan cannot read):
    /// the same bytes out and the same state, or both an error.
    fn same_output(kind: &str, events: &[String]) {
        let opts = Options {
            model: "openai/gpt".to_owned(),
            response_id: "chatcmpl-1".to_owned(),
            created: 1,
            include_usage: true,
            response_fields: "{}".to_owned(),
        };
        let run = |typed_only: bool| {
            let mut stream = Stream::new(kind, &opts, 1 << 20).unwrap();
            let mut out = Vec::new();
            let mut result = Ok(());
            let done = "[DONE]".to_owned();
            for data in events.iter().chain([&done]) {
                // `"\u0078":0` is an unknown member the typed view skips and the scan refuses.
                let data = match data.trim_start().strip_prefix('{') {
                    Some(rest) if typed_only && rest.trim_start().starts_with('}') => {
                        format!(r#"{{"\u0078":0{rest}"#)
                    }
                    Some(rest) if typed_only => format!(r#"{{"\u0078":0,{rest}"#),
                    _ => data.clone(),
                };
                result = stream.feed(format!("data: {data}\n\n").as_bytes(), &mut out);
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
        assert_eq!(run(false), run(true), "{kind}: {events:?}");
    }

    #[test]
    fn a_whole_stream_reframes_to_the_same_bytes_by_either_path() {
        let seeds = seeds();
        for kind in ["openai_to_anthropic", "openai_to_responses"] {
            same_output(kind, &seeds);
            // Without the interleaved call's, which the Responses API refuses.
            same_output(kind, &[&seeds[..7], &seeds[10..]].concat());
        }
    }

    /// Each chunk read through one `Prefix`, in order, as the reframers read them: as the whole
    /// scan reads it (compared by their debug text, as `agrees`).
    fn resumed_agree(events: &[String]) {
        let mut prefix = Prefix::default();
        for data in events {
            let resumed = format!("{:?}", read_with(data, &mut prefix));
            assert_eq!(resumed, format!("{:?}", read(data)), "{data}");
        }
    }

    #[test]
    fn a_chunk_that_starts_as_the_last_one_did_is_read_from_there_alike() {
        let events = seeds();
        let mut prefix = Prefix::default();
        read_with(&events[0], &mut prefix).unwrap();
        assert_eq!(
            prefix.bytes,
            br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","#
        );
        resumed_agree(&events);
        let others = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"choices":[]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","error":{"message":"m"}}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","x":1 }"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",}"#,
            r#"{"choices":[],"id":"c"}"#,
        ]
        .map(str::to_owned);
        resumed_agree(&[seeds(), others.to_vec(), seeds()].concat());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Bytes changed, inserted or removed anywhere in a stream's chunks (JSON's own
        /// characters among them): whenever the scan answers, the typed view reads the same
        /// chunk, and both reframers write the same bytes; read after the chunk before it (from
        /// their shared first members), each reads as its whole scan does.
        #[test]
        fn the_scan_never_reads_a_chunk_otherwise_than_the_typed_view(
            edits in crate::reframe::stream_edits::edits(12),
        ) {
            let events: Vec<String> = crate::reframe::stream_edits::edited(seeds(), edits)
                .into_iter()
                .filter(|e| !e.contains(['\r', '\n']))
                .collect();
            for data in &events {
                agrees(data);
                written_agrees(data);
            }
            resumed_agree(&events);
            for kind in ["openai_to_anthropic", "openai_to_responses"] {
                same_output(kind, &events);
            }
        }

        /// Arguments of quotes, backslashes, slashes, controls, DEL, é and an emoji, each
        /// character written as `serde_json` writes it or escaped otherwise (`\/`, `\u00XX` in
        /// either case, `\uXXXX` and surrogate pairs), in one or two interleaved calls: a
        /// fragment is kept as it came exactly when its text is `write_str`'s, and the
        /// reframers write the same bytes as through the typed view.
        #[test]
        fn arguments_are_kept_as_they_came_exactly_when_write_str_writes_them_so(
            fragments in proptest::collection::vec(
                (
                    0u32..2,
                    proptest::collection::vec(
                        (
                            prop::sample::select(vec!['a', ' ', '"', '\\', '/', '\n', '\r',
                                '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', 'é', '😀',
                                '{', ':']),
                            0u8..4,
                        ),
                        0..8,
                    ),
                ),
                1..6,
            ),
        ) {
            let mut events = vec![seeds()[0].clone()];
            for (call, chars) in &fragments {
                let value: String = chars.iter().map(|(c, _)| *c).collect();
                let text: String = chars.iter().map(|&(c, how)| escaped(c, how)).collect();
                let mut written = Vec::new();
                json::write_escaped(&mut written, &value);
                let data = fragment(&text).replace(r#""index":0,"f"#, &format!(r#""index":{call},"f"#));
                prop_assert!(agrees(&data), "{}", data);
                let kept = written_agrees(&data) == 1;
                prop_assert_eq!(kept, written == text.as_bytes(), "{}", data);
                events.push(data);
            }
            for kind in ["openai_to_anthropic", "openai_to_responses"] {
                same_output(kind, &events);
            }
        }
    }

    /// `c` in a JSON string: `how` 0 as `serde_json` writes it, 1 `\u00XX` / `\uXXXX` (a
    /// surrogate pair beyond the BMP) in lowercase, 2 the same in uppercase, 3 `\/` for a slash.
    fn escaped(c: char, how: u8) -> String {
        match how {
            1 | 2 => {
                let mut units = [0u16; 2];
                let mut text = String::new();
                for u in c.encode_utf16(&mut units) {
                    write!(text, "\\u{u:04x}").unwrap();
                }
                if how == 2 {
                    text.to_uppercase().replace("\\U", "\\u")
                } else {
                    text
                }
            }
            3 if c == '/' => r"\/".to_owned(),
            _ => {
                let json = serde_json::to_string(&c.to_string()).unwrap();
                json[1..json.len() - 1].to_owned()
            }
        }
    }
}
