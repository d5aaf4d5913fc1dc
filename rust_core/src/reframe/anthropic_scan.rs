//! The Anthropic reframers' fast path: one scan of an event's JSON that validates it and reads
//! the members the typed view of `anthropic.rs` reads, into that same [`AnthropicEvent`],
//! without `serde_json`'s typed pass (its visitors, and a `String` per string member: serde
//! never borrows a `Cow<str>` inside an `Option`).
//!
//! **Conservative**, as the OpenAI chunk's scan (`openai_scan.rs`): [`read`] answers only for
//! an event it reads exactly as the typed view would: a JSON object whose keys have no escapes,
//! no member the view reads given twice (at the top, in `message`, `content_block`, `delta` and
//! `error`), `message`, `content_block`, `delta` and `error` objects or `null`,
//! `content_block.type` present and a string, the other members the view reads strings or
//! `null` (`index` a plain non-negative integer or `null`), every other value valid JSON nested
//! at most 64 deep, and no lone UTF-16 surrogate in an escape. Anything else gives `None`, and
//! the typed view decides: the same event, or the same error, as before. Strings with escapes
//! are unescaped as `serde_json` unescapes them; `usage` is read by `serde_json` from its own
//! span (twice per stream).
//!
//! A stream's text deltas repeat everything but their text (`{"type":"content_block_delta",
//! "index":0,"delta":{"type":"text_delta","text":` … `"}}`): [`read_with`] remembers those
//! bytes of the last plain text delta ([`DeltaPrefix`]) and, when the next event starts with
//! them, reads only its text and its end. The scan's state after those bytes depends on them
//! alone, so the answer is the one the whole scan gives (a proptest compares the two).

use std::borrow::Cow;

use super::anthropic::{AnthropicEvent, ContentBlock, Delta, ErrorBody, Message};
use crate::json;
use crate::json_scan::{once, Scan};
use crate::usage::AnthropicUsage;

/// The event as the typed view reads it, or `None` when the scan cannot tell (see the module
/// docs). `data` is the event's data.
pub fn read(data: &str) -> Option<AnthropicEvent<'_>> {
    let mut scan = Scan::new(data);
    let mut e = AnthropicEvent::default();
    let mut seen = [false; 7];
    scan.open(b'{')?;
    if !scan.empty(b'}') {
        loop {
            match scan.key()? {
                b"type" => {
                    once(&mut seen[0])?;
                    scan.opt_str(&mut e.kind)?;
                }
                b"index" => {
                    once(&mut seen[1])?;
                    scan.opt_u64(&mut e.index)?;
                }
                b"message" => {
                    once(&mut seen[2])?;
                    if !scan.null()? {
                        e.message = Some(message(&mut scan)?);
                    }
                }
                b"content_block" => {
                    once(&mut seen[3])?;
                    if !scan.null()? {
                        e.content_block = Some(content_block(&mut scan)?);
                    }
                }
                b"delta" => {
                    once(&mut seen[4])?;
                    if !scan.null()? {
                        e.delta = Some(delta(&mut scan)?);
                    }
                }
                b"usage" => {
                    once(&mut seen[5])?;
                    usage(&mut scan, &mut e.usage)?;
                }
                b"error" => {
                    once(&mut seen[6])?;
                    if !scan.null()? {
                        e.error = Some(error(&mut scan)?);
                    }
                }
                _ => scan.value(1)?,
            }
            if scan.next(b'}')? {
                break;
            }
        }
    }
    scan.at_end().then_some(e)
}

/// The last plain text delta's bytes before its text (and the index they give): an event with
/// nothing but `type`, `index` and a `delta` of `type` and `text`, the text last in both objects.
#[derive(Debug, Default)]
pub struct DeltaPrefix {
    bytes: String,
    index: Option<u64>,
}

/// [`read`], reading a text delta that starts with `prefix`'s bytes from its text on; `prefix`
/// then remembers the event's own bytes if it is a plain text delta.
pub fn read_with<'a>(data: &'a str, prefix: &mut DeltaPrefix) -> Option<AnthropicEvent<'a>> {
    if let Some(text) = prefix.text(data) {
        return Some(AnthropicEvent {
            kind: Some(Cow::Borrowed("content_block_delta")),
            index: prefix.index,
            delta: Some(Delta {
                kind: Some(Cow::Borrowed("text_delta")),
                text: Some(text),
                ..Delta::default()
            }),
            ..AnthropicEvent::default()
        });
    }
    let e = read(data)?;
    prefix.remember(data, &e);
    Some(e)
}

/// A string (the text), then the end of `delta` and of the event, as the whole scan reads them.
fn text_and_end(rest: &str) -> Option<Cow<'_, str>> {
    // The common end, `"…"}}` with nothing to unescape and nothing after: the whole string is
    // between the first and the last quote when no byte between them ends it early (a quote),
    // starts an escape or is a raw control character (which the scan refuses).
    if let Some(text) = rest
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix("\"}}"))
        .filter(|t| t.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'))
    {
        return Some(Cow::Borrowed(text));
    }
    scanned_text_and_end(rest)
}

/// [`text_and_end`] by the scan alone.
fn scanned_text_and_end(rest: &str) -> Option<Cow<'_, str>> {
    let mut scan = Scan::new(rest);
    let text = scan.str_cow()?;
    (scan.next(b'}')? && scan.next(b'}')? && scan.at_end()).then_some(text)
}

impl DeltaPrefix {
    /// The text of `data` when it starts with the remembered bytes and reads from there as a
    /// plain text delta's text and end: then [`read_with`] reads it as a `text_delta` of the
    /// remembered index with this text. `None` otherwise (nothing remembered yet included).
    pub fn text<'a>(&self, data: &'a str) -> Option<Cow<'a, str>> {
        if self.bytes.is_empty() {
            return None;
        }
        data.strip_prefix(self.bytes.as_str())
            .and_then(text_and_end)
    }

    /// Keeps `data`'s bytes before the text if `e` (its reading) is a plain text delta whose
    /// text, unescaped, is followed by nothing but `}}`; otherwise keeps what it had.
    fn remember(&mut self, data: &str, e: &AnthropicEvent<'_>) {
        let plain = e.kind.as_deref() == Some("content_block_delta")
            && e.message.is_none()
            && e.content_block.is_none()
            && e.usage.is_none()
            && e.error.is_none();
        let Some(d) = e.delta.as_ref().filter(|_| plain) else {
            return;
        };
        let Some(Cow::Borrowed(text)) = &d.text else {
            return;
        };
        if d.kind.as_deref() != Some("text_delta")
            || d.partial_json.is_some()
            || d.stop_reason.is_some()
            || d.stop_sequence.is_some()
        {
            return;
        }
        // where the (borrowed) text lies in `data`: its quote before, `"}}` after it
        let start = (text.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let Some(quote) = start.checked_sub(1) else {
            return;
        };
        let end = start + text.len();
        if data.as_bytes().get(quote) != Some(&b'"') || data.get(end..) != Some("\"}}") {
            return;
        }
        self.bytes.clear();
        self.bytes.push_str(&data[..quote]);
        self.index = e.index;
    }
}

/// A tool call's argument fragments relayed as they came. An `input_json_delta`'s
/// `partial_json` is JSON inside a JSON string: read, it is unescaped, and written into the
/// chunk's `arguments` it is escaped again, the same bytes in most fragments. This remembers
/// the bytes before the fragment of the last plain `input_json_delta` (an event of nothing but
/// `type`, `index` and a `delta` of `type` and `partial_json`, the fragment last in both
/// objects), and a next event that starts with them and ends as `"…"}}`, its fragment written
/// by [`json::as_written`] exactly as it came, is that fragment's delta: the reframer copies
/// the escaped bytes into its chunk. Anything else is read by the scan, as before.
#[derive(Debug, Default)]
pub struct FragmentPrefix {
    bytes: String,
    index: u64,
}

impl FragmentPrefix {
    /// The content block's index and the fragment as it came (its escaped text between the
    /// quotes) with its characters, when `data` is a fragment like the remembered one's.
    pub fn fragment<'a>(&self, data: &'a str) -> Option<(u64, &'a str, u64)> {
        if self.bytes.is_empty() {
            return None;
        }
        let raw = data
            .strip_prefix(self.bytes.as_str())?
            .strip_prefix('"')?
            .strip_suffix("\"}}")?;
        Some((self.index, raw, json::as_written(raw)?))
    }

    /// Remembers `data`'s bytes before its fragment if `e` (its reading by the scan) is a plain
    /// `input_json_delta` whose fragment ends `data` as `"…"}}`; otherwise keeps what it had.
    /// Where the fragment starts is told by reading those bytes with two other fragments: both
    /// must read as the same plain delta with that fragment (the scan's state after the bytes
    /// depends on them alone, so any fragment after them is read into that slot).
    pub fn remember(&mut self, data: &str, e: &AnthropicEvent<'_>) {
        const KEY: &str = "\"partial_json\":";
        let plain = |e: &AnthropicEvent<'_>, fragment: &str| {
            e.kind.as_deref() == Some("content_block_delta")
                && e.message.is_none()
                && e.content_block.is_none()
                && e.usage.is_none()
                && e.error.is_none()
                && e.delta.as_ref().is_some_and(|d| {
                    d.kind.as_deref() == Some("input_json_delta")
                        && d.partial_json.as_deref() == Some(fragment)
                        && d.text.is_none()
                        && d.stop_reason.is_none()
                        && d.stop_sequence.is_none()
                })
        };
        let Some(fragment) = e.delta.as_ref().and_then(|d| d.partial_json.as_deref()) else {
            return;
        };
        if !plain(e, fragment) || !data.ends_with("\"}}") {
            return;
        }
        if !self.bytes.is_empty() && data.starts_with(self.bytes.as_str()) {
            return; // the same bytes (a fragment `json::as_written` refused)
        }
        let Some(at) = data.find(KEY).map(|at| at + KEY.len()) else {
            return;
        };
        let bytes = &data[..at];
        let index = e.index.unwrap_or(0);
        for probe in ["", "x"] {
            let whole = format!("{bytes}\"{probe}\"}}}}");
            match read(&whole) {
                Some(p) if plain(&p, probe) && p.index.unwrap_or(0) == index => {}
                _ => return,
            }
        }
        self.bytes.clear();
        self.bytes.push_str(bytes);
        self.index = index;
    }
}

/// `usage` or `null`, read by `serde_json` from its span (as the typed view reads it).
fn usage(scan: &mut Scan<'_>, slot: &mut Option<AnthropicUsage>) -> Option<()> {
    *slot = if scan.null()? {
        None
    } else {
        Some(serde_json::from_str(scan.span(2)?).ok()?)
    };
    Some(())
}

/// `message_start.message`: its `usage`.
fn message(scan: &mut Scan<'_>) -> Option<Message> {
    let mut m = Message { usage: None };
    let mut seen = false;
    scan.members(|scan, key| {
        if key != b"usage" {
            return Some(false);
        }
        once(&mut seen)?;
        usage(scan, &mut m.usage)?;
        Some(true)
    })?;
    Some(m)
}

/// `content_block_start.content_block`: `type` (required), `text`, `id`, `name`.
fn content_block<'a>(scan: &mut Scan<'a>) -> Option<ContentBlock<'a>> {
    let (mut kind, mut text, mut id, mut name) = (None, None, None, None);
    let mut seen = [false; 4];
    scan.members(|scan, key| {
        let (slot, at) = match key {
            b"type" => {
                once(&mut seen[0])?;
                kind = Some(scan.str_cow()?);
                return Some(true);
            }
            b"text" => (&mut text, 1),
            b"id" => (&mut id, 2),
            b"name" => (&mut name, 3),
            _ => return Some(false),
        };
        once(&mut seen[at])?;
        scan.opt_str(slot)?;
        Some(true)
    })?;
    Some(ContentBlock {
        kind: kind?,
        text,
        id,
        name,
    })
}

/// `content_block_delta.delta` or `message_delta.delta`.
fn delta<'a>(scan: &mut Scan<'a>) -> Option<Delta<'a>> {
    let mut d = Delta::default();
    let mut seen = [false; 5];
    scan.members(|scan, key| {
        let (slot, at) = match key {
            b"type" => (&mut d.kind, 0),
            b"text" => (&mut d.text, 1),
            b"partial_json" => (&mut d.partial_json, 2),
            b"stop_reason" => (&mut d.stop_reason, 3),
            b"stop_sequence" => (&mut d.stop_sequence, 4),
            _ => return Some(false),
        };
        once(&mut seen[at])?;
        scan.opt_str(slot)?;
        Some(true)
    })?;
    Some(d)
}

/// An `error` event's `error`: `type` and `message`.
fn error<'a>(scan: &mut Scan<'a>) -> Option<ErrorBody<'a>> {
    let mut e = ErrorBody::default();
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        let (slot, at) = match key {
            b"type" => (&mut e.kind, 0),
            b"message" => (&mut e.message, 1),
            _ => return Some(false),
        };
        once(&mut seen[at])?;
        scan.opt_str(slot)?;
        Some(true)
    })?;
    Some(e)
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;
    use crate::errors::CoreError;
    use crate::reframe::anthropic::AnthropicReframer;
    use crate::reframe::{parse, Options, Reframe, StreamState};
    use crate::sse::Event;

    /// Whenever the scan answers, the typed view reads the same event.
    fn agrees(data: &str) -> Option<AnthropicEvent<'_>> {
        let scanned = read(data);
        if let Some(e) = &scanned {
            let typed: Option<AnthropicEvent<'_>> = parse("anthropic", data).ok();
            assert_eq!(Some(e), typed.as_ref(), "{data}");
        }
        scanned
    }

    const DELTA: &str =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#;

    #[test]
    fn a_text_delta_is_read_by_the_scan_without_a_copy() {
        let e = agrees(DELTA).unwrap();
        assert_eq!(e.kind.as_deref(), Some("content_block_delta"));
        assert_eq!(e.index, Some(0));
        let text = e.delta.unwrap().text.unwrap();
        assert!(matches!(text, Cow::Borrowed("Hello")));
    }

    #[test]
    fn every_event_of_a_stream_is_read_by_the_scan() {
        for data in seeds() {
            assert!(agrees(&data).is_some(), "{data}");
        }
    }

    #[test]
    fn escapes_are_unescaped_as_serde_json_does() {
        for (text, want) in [
            (r#""a\nb\"c\\d\/e""#, "a\nb\"c\\d/e"),
            (r#""\b\f\r\t""#, "\u{8}\u{c}\r\t"),
            (r#""\u00e9\u20AC\u0000""#, "é€\0"),
            (r#""\ud83d\ude00!""#, "😀!"),
            (r#""é€😀""#, "é€😀"),
            (r#""""#, ""),
        ] {
            let data = format!(r#"{{"type":"content_block_delta","delta":{{"text":{text}}}}}"#);
            let e = agrees(&data).unwrap();
            assert_eq!(e.delta.unwrap().text.as_deref(), Some(want), "{data}");
        }
    }

    #[test]
    fn nulls_and_unknown_members_read_as_the_typed_view_reads_them() {
        for data in [
            r#"{"type":null,"index":null,"message":null,"content_block":null,"delta":null,"usage":null,"error":null}"#,
            r#"{"type":"message_start","message":{"usage":null,"content":[{"x":[1,2.5e-3,true]}]}}"#,
            r#"{"type":"content_block_start","content_block":{"type":"tool_use","text":null,"id":null,"name":null,"input":{}}}"#,
            r#"{"type":"message_delta","delta":{},"usage":{}}"#,
            r#"{"type":"error","error":{}}"#,
            r#"{"index":18446744073709551615}"#,
            r#"{"usage":{"output_tokens":-1,"input_tokens":3.0}}"#, // counts as billing reads them
            "{}",
            " \n{ \"type\" :\t\"ping\" } \r\n",
        ] {
            assert!(agrees(data).is_some(), "{data}");
        }
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_the_typed_view() {
        for data in [
            r#"{"typ\u0065":"ping"}"#,                     // an escaped key
            r#"{"type":"ping","type":"ping"}"#,            // a duplicate member
            r#"{"delta":{"text":"a","text":"b"}}"#,        // a duplicate inside
            r#"{"message":{"usage":{},"usage":{}}}"#,      // and in message
            r#"["ping",0,null,null,null,null,null]"#,      // a struct as an array
            r#"{"content_block":["text","t",null,null]}"#, // a member struct as an array
            r#"{"content_block":{"text":"t"}}"#,           // a block without its type
            r#"{"content_block":{"type":null}}"#,          // a block type that is null
            r#"{"delta":{"text":5}}"#,                     // a number for a string
            r#"{"index":"0"}"#,                            // a string for a count
            r#"{"index":-0}"#,                             // counts serde reads otherwise
            r#"{"index":1.0}"#,
            r#"{"index":1e2}"#,
            r#"{"index":18446744073709551616}"#, // beyond u64
            r#"{"index":01}"#,
            r#"{"delta":{"text":"\ud800"}}"#, // a lone surrogate
            r#"{"delta":{"text":"\udc00\ud800"}}"#,
            r#"{"delta":{"text":"\x"}}"#, // an invalid escape
            "{\"delta\":{\"text\":\"raw\u{1}control\"}}",
            r#"{"type":"ping",}"#,  // a trailing comma
            r#"{"type":"ping"} x"#, // trailing text
            r#"{"type":"ping""#,
            "",
        ] {
            assert!(agrees(data).is_none(), "{data}");
        }
        let deep = format!(
            r#"{{"x":{}{},"type":"ping"}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(agrees(&deep).is_none());
    }

    fn seeds() -> Vec<String> {
        [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}"#,
            DELTA,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\n\"b\" \u00e9\ud83d\ude00"}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"Par"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\", \"note\": \"a\\nb\\u0001\"}"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"a\/b \u00e9"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"42"}}"#,
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"7"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json" :"x"},"y":{"partial_json":"z"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json" :"x"},"y":{"partial_json":"w"}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"thinking_delta","thinking":"Let me think"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A stream's events through three reframers, one reading each event as the reframers do
    /// (the scan through one `DeltaPrefix`, the typed view when it cannot tell), one fed as a
    /// stream feeds it (`on_event`: a text delta like the last one written from its text), one
    /// by the typed view alone: the same bytes out and the same state after every event, or
    /// the same error.
    fn same_output(events: &[String]) {
        let opts = Options {
            model: "anthropic/claude".to_owned(),
            response_id: "chatcmpl-1".to_owned(),
            created: 1,
            include_usage: true,
            response_fields: "{}".to_owned(),
        };
        let mut scanned = (
            AnthropicReframer::new(&opts),
            StreamState::default(),
            Vec::new(),
        );
        let mut typed = (
            AnthropicReframer::new(&opts),
            StreamState::default(),
            Vec::new(),
        );
        let mut fed = (
            AnthropicReframer::new(&opts),
            StreamState::default(),
            Vec::new(),
        );
        let mut prefix = DeltaPrefix::default();
        for data in events {
            let scanned_event = match read_with(data, &mut prefix) {
                Some(e) => Ok(e),
                None => parse("anthropic", data),
            };
            let (a, b) = (scanned_event, parse("anthropic", data));
            let error = |r: &Result<AnthropicEvent<'_>, CoreError>| {
                r.as_ref().err().map(ToString::to_string)
            };
            assert_eq!(error(&a), error(&b), "{data}");
            let event = Event {
                event: Cow::Borrowed(""),
                data: Cow::Borrowed(data),
                id: Cow::Borrowed(""),
                one_line: false,
            };
            let fed_result = fed.0.on_event(&event, &mut fed.1, &mut fed.2);
            assert_eq!(
                fed_result.as_ref().err().map(ToString::to_string),
                error(&b),
                "{data}"
            );
            let (Ok(a), Ok(b)) = (a, b) else { return };
            scanned.0.on_parsed(a, "", &mut scanned.1, &mut scanned.2);
            typed.0.on_parsed(b, "", &mut typed.1, &mut typed.2);
            assert_eq!(scanned.2, typed.2, "{data}");
            assert_eq!(fed.2, typed.2, "{data}");
            assert_eq!(
                format!("{:?}", scanned.1),
                format!("{:?}", typed.1),
                "{data}"
            );
            assert_eq!(format!("{:?}", fed.1), format!("{:?}", typed.1), "{data}");
        }
    }

    #[test]
    fn a_whole_stream_reframes_to_the_same_bytes_by_either_path() {
        same_output(&seeds());
    }

    /// Each event read through one `DeltaPrefix`, in order, as the reframer reads them: the
    /// same reading as the whole scan's.
    fn same_through_the_prefix(events: &[String]) {
        let mut prefix = DeltaPrefix::default();
        for data in events {
            assert_eq!(read_with(data, &mut prefix), read(data), "{data}");
        }
    }

    #[test]
    fn text_deltas_after_the_first_are_read_from_their_text() {
        let delta = |text: &str| {
            format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            )
        };
        let mut prefix = DeltaPrefix::default();
        let first = delta("Hello");
        assert_eq!(read_with(&first, &mut prefix), read(&first));
        assert_eq!(
            prefix.bytes,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#
        );
        let escaped = delta(r#" \"w\u00e9\" "#);
        let e = read_with(&escaped, &mut prefix).unwrap();
        assert_eq!(e.delta.unwrap().text.as_deref(), Some(" \"wé\" "));
        // not a plain text delta's end: the whole scan reads it
        for other in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","x":1}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"},"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}} x"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\ud800"}}"#,
        ] {
            assert_eq!(read_with(other, &mut prefix), read(other), "{other}");
        }
        let mut events = seeds();
        events.extend([delta("a"), delta("b c"), delta(""), delta("\\n")]);
        same_through_the_prefix(&events);
    }

    #[test]
    fn argument_fragments_after_the_first_are_copied_as_they_came() {
        let delta = |fragment: &str| {
            format!(
                r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":"{fragment}"}}}}"#
            )
        };
        let mut prefix = FragmentPrefix::default();
        let first = delta(r#"{\"path\": \"a"#);
        assert_eq!(prefix.fragment(&first), None); // nothing remembered yet
        prefix.remember(&first, &read(&first).unwrap());
        assert_eq!(
            prefix.bytes,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"#
        );
        let next = delta(r#".txt\", \"text\": \"x\\n\u0001"#);
        assert_eq!(
            prefix.fragment(&next),
            Some((1, r#".txt\", \"text\": \"x\\n\u0001"#, 20))
        );
        // written otherwise by `write_str`, or not a plain fragment's end: the scan reads it
        for other in [
            delta(r"a\/b"),
            delta(r"\u00e9"),
            format!("{} ", delta("a")),
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"a","x":1}}"#.to_owned(),
        ] {
            assert_eq!(prefix.fragment(&other), None, "{other}");
        }
        // The first `"partial_json":` is not always the delta's: with a space before its colon,
        // the one found is another object's, and those bytes are not remembered.
        let mut other = FragmentPrefix::default();
        let tricky = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json" :"x"},"y":{"partial_json":"z"}}"#;
        let e = read(tricky).unwrap();
        assert_eq!(e.delta.as_ref().unwrap().partial_json.as_deref(), Some("x"));
        other.remember(tricky, &e);
        assert_eq!(other.bytes, "");
    }

    #[test]
    fn a_text_delta_s_common_end_reads_as_the_scan_reads_it() {
        for rest in [
            r#""tok1 "}}"#,
            r#""""}}"#,
            r#""é€😀 'x'"}}"#,
            r#""a\nb"}}"#,   // an escape
            r#""a"b"}}"#,    // a quote: the string ends early
            "\"a\u{1}b\"}}", // a raw control character
            "\"a\u{7f}\"}}", // DEL is not one
            r#""a" }}"#,     // whitespace inside the end
            r#""a"}} "#,     // and after it
            r#""a"}}}"#,     // one brace too many
            r#""a"}"#,
            r#""}}"#,
            r#"a"}}"#,
            "",
        ] {
            assert_eq!(text_and_end(rest), scanned_text_and_end(rest), "{rest}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Any text between a quote and the end `"}}`: read as the scan reads it.
        #[test]
        fn any_text_delta_end_reads_as_the_scan_reads_it(
            text in proptest::collection::vec(
                prop::sample::select(vec!['a', ' ', '"', '\\', 'n', 'u', '0', '\u{1}', '\u{1f}', 'é', '}']),
                0..8,
            ),
            end in prop::sample::select(vec!["\"}}", "\"} }", "\"}}\n", "\"}"]),
        ) {
            let rest = format!("\"{}{end}", text.iter().collect::<String>());
            prop_assert_eq!(text_and_end(&rest), scanned_text_and_end(&rest), "{}", rest);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Bytes changed, inserted or removed anywhere in a stream's events (JSON's own
        /// characters among them): whenever the scan answers, the typed view reads the same
        /// event, and the reframer writes the same bytes.
        #[test]
        fn the_scan_never_reads_an_event_otherwise_than_the_typed_view(
            edits in crate::reframe::stream_edits::edits(12),
        ) {
            let events: Vec<String> = crate::reframe::stream_edits::edited(seeds(), edits);
            for data in &events {
                agrees(data);
            }
            same_output(&events);
            same_through_the_prefix(&events);
        }
    }
}
