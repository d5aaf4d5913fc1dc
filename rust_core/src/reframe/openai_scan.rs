//! The OpenAI reframer's fast path: one scan of a chunk's JSON that validates it and reads what
//! the reframer needs, without `serde_json`'s typed pass (about a third of its instructions).
//!
//! **Conservative.** [`read`] answers only for a chunk it reads exactly as the typed view of
//! `openai.rs` would: a JSON object whose keys have no escapes, no member the view reads given
//! twice, each such member of the type the view expects (`choices` an array of objects, their
//! `delta`, `tool_calls` and `function` objects or `null`, `content`, `arguments`,
//! `finish_reason` and `object` strings or `null`; escapes only in `content` and `arguments`),
//! every other value valid JSON nested at most 64 deep, and no lone UTF-16 surrogate in an
//! escape. Anything else (a top-level array, an escaped key, a duplicate, a number where a
//! string belongs, invalid JSON) gives `None`, and the typed view decides: the same answer, or
//! the same error, as before. `usage` is read by `serde_json` from its own span
//! (once per stream), and an `error` member is returned as its span, as the view's raw value.
//! The scan's building blocks are shared (`json_scan.rs`).
//!
//! A stream's chunks repeat themselves: their first members (`id`, `object`, `created`, `model`,
//! ...) are scanned once ([`Prefix`]), and a text chunk that has the last text chunk's bytes
//! around its text is read from its text alone ([`TextChunk`]). Both give the whole scan's
//! answer (proptests compare them).

use std::borrow::Cow;

use super::openai::Chunk;
use crate::json_scan::{once, Scan};
use crate::usage::OpenAiUsage;

/// The chunk as the typed view reads it, or `None` when the scan cannot tell (see the module
/// docs). `data` is the event's data, trimmed of whitespace. (The reframer reads through
/// [`read_with`]; this whole scan is the reference its tests compare with.)
#[cfg(test)]
pub fn read(data: &str) -> Option<Chunk<'_>> {
    whole(data, None, &mut None)
}

/// What the scan remembers of a stream's chunks to read the next one faster.
#[derive(Debug, Default)]
pub struct Memo {
    prefix: Prefix,
    text: TextChunk,
}

/// What the scan of a chunk knew at a comma of its top level, before any member of `choices`,
/// `usage` or `error` (the members read beyond their own bytes): the same for every chunk that
/// starts with the same bytes. An upstream's chunks share their first members (`id`, `object`,
/// `created`, `model`, `system_fingerprint`: about half of each), so the next chunk that starts
/// with `bytes` is scanned from there ([`read_with`]).
#[derive(Debug, Default)]
struct Prefix {
    /// The chunk's bytes up to and with that comma; empty: none yet.
    bytes: Vec<u8>,
    at: Cut,
}

/// The scan's state at a cut (see [`Prefix`]).
#[derive(Debug, Default, Clone, Copy)]
struct Cut {
    /// Where the scan resumes (right after the comma).
    i: usize,
    seen: Seen,
    model: Option<(usize, usize)>,
    object_error: bool,
}

/// Which of the members the typed view reads were given already (each may appear once).
// (Five independent flags, one per member, as the whole scan had them in five variables.)
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    model: bool,
    choices: bool,
    usage: bool,
    error: bool,
    object: bool,
}

/// A text (a `content` or `arguments` string) in a chunk: where its opening quote is, the index
/// just past its closing quote, and its characters.
#[derive(Debug, Default, Clone, Copy)]
struct Hole {
    open: usize,
    end: usize,
    chars: u64,
}

/// The last text chunk: its bytes and its last text ([`Hole`]), when nothing of what the scan
/// reads lies after that text or borrows from the chunk (no finish reason, usage or error,
/// `model` before the text). The next chunk with the same bytes before and after a string there
/// is that chunk with another text: a JSON string between the same bytes leaves every other
/// token where it was, so the whole scan would read it alike, but for the text's characters.
#[derive(Debug, Default)]
struct TextChunk {
    /// The chunk's bytes before its text, through the opening quote, then those after it from
    /// the closing quote (not the text: a long one is neither copied nor held); empty: none yet.
    bytes: Vec<u8>,
    /// Where the text's opening quote is.
    open: usize,
    model: Option<(usize, usize)>,
    choices: usize,
    /// The characters of the chunk's other texts.
    other_chars: u64,
}

/// A chunk read from its text ([`read_text`]): the last text chunk's, but for the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Text {
    /// Where the text's opening quote is: the bytes up to it are the last text chunk's.
    pub(crate) open: usize,
    /// Where the value of the top-level `model` is (before the text), as [`Chunk::model`].
    pub(crate) model: Option<(usize, usize)>,
    /// The characters of every text of the chunk, as [`Chunk::content_chars`].
    pub(crate) chars: u64,
    choices: usize,
}

impl Text {
    /// The chunk as the whole scan reads it.
    #[cfg(test)]
    fn chunk(self) -> Chunk<'static> {
        Chunk {
            model: self.model,
            choices: self.choices,
            content_chars: self.chars,
            ..Chunk::default()
        }
    }
}

impl TextChunk {
    /// `data` read from its text when it has the remembered bytes around a string there.
    fn read(&self, data: &str) -> Option<Text> {
        let open = self.open;
        let (head, tail) = self.bytes.split_at_checked(open + 1)?;
        let b = data.as_bytes();
        if !(b.starts_with(head) && b.ends_with(tail)) {
            return None;
        }
        let mut scan = Scan::new(data);
        scan.i = open;
        let chars = scan.counted_text()?;
        // The string's closing quote is the tail's.
        (scan.i + tail.len() == b.len() + 1).then_some(Text {
            open,
            model: self.model,
            chars: self.other_chars + chars,
            choices: self.choices,
        })
    }

    /// Remembers `data` (read as `chunk`, `hole` its last text) if it qualifies (see above);
    /// otherwise keeps what it had.
    fn remember(&mut self, data: &str, chunk: &Chunk<'_>, hole: Option<Hole>) {
        let Some(hole) = hole else { return };
        let plain = chunk.finish_reason.is_none()
            && chunk.usage.is_none()
            && chunk.error.is_none()
            && !chunk.object_error
            && chunk.model.is_none_or(|(_, end)| end <= hole.open);
        if plain {
            let b = data.as_bytes();
            self.bytes.clear();
            self.bytes.extend_from_slice(&b[..=hole.open]);
            self.bytes.extend_from_slice(&b[hole.end - 1..]);
            self.open = hole.open;
            self.model = chunk.model;
            self.choices = chunk.choices;
            self.other_chars = chunk.content_chars - hole.chars;
        }
    }
}

/// [`read`] from the text alone, when `data` has the last text chunk's bytes around it
/// ([`TextChunk`]): then it is one line, as that chunk was. The reframer tries this first, then
/// [`read_with`].
pub(crate) fn read_text(data: &str, memo: &Memo) -> Option<Text> {
    memo.text.read(data)
}

/// [`read`], resuming after `memo`'s prefix when `data` starts with its bytes (the same
/// answer: the scan of those bytes gives the same state whatever follows them); otherwise a
/// whole scan, whose last cut becomes the prefix. A text chunk is remembered ([`TextChunk`]).
pub(crate) fn read_with<'a>(data: &'a str, memo: &mut Memo) -> Option<Chunk<'a>> {
    let mut hole = None;
    let prefix = &mut memo.prefix;
    let at = prefix.at;
    let chunk = if at.i > 0 && data.as_bytes().starts_with(&prefix.bytes) {
        let mut scan = Scan::new(data);
        scan.i = at.i;
        let chunk = Chunk {
            model: at.model,
            object_error: at.object_error,
            ..Chunk::default()
        };
        members(scan, chunk, at.seen, None, &mut hole)?
    } else {
        let mut cut = Cut::default();
        let chunk = whole(data, Some(&mut cut), &mut hole)?;
        prefix.bytes.clear();
        prefix.bytes.extend_from_slice(&data.as_bytes()[..cut.i]);
        prefix.at = cut;
        chunk
    };
    memo.text.remember(data, &chunk, hole);
    Some(chunk)
}

/// The scan from the chunk's start; `cut`: where to note the last cut met; `hole`: the last text.
fn whole<'a>(data: &'a str, cut: Option<&mut Cut>, hole: &mut Option<Hole>) -> Option<Chunk<'a>> {
    let mut scan = Scan::new(data);
    scan.open(b'{')?;
    if scan.empty(b'}') {
        return scan.at_end().then(Chunk::default);
    }
    members(scan, Chunk::default(), Seen::default(), cut, hole)
}

/// The top level's members from a member's start (`scan.i`) to the end of the chunk.
fn members<'a>(
    mut scan: Scan<'a>,
    mut chunk: Chunk<'a>,
    mut seen: Seen,
    mut cut: Option<&mut Cut>,
    hole: &mut Option<Hole>,
) -> Option<Chunk<'a>> {
    let data = scan.s;
    loop {
        let key = scan.key()?;
        match key {
            b"model" => {
                once(&mut seen.model)?;
                scan.ws();
                let start = scan.i;
                scan.value(1)?;
                chunk.model = Some((start, scan.i));
            }
            b"choices" => {
                once(&mut seen.choices)?;
                if !scan.null()? {
                    scan.choices(&mut chunk, hole)?;
                }
            }
            b"usage" => {
                once(&mut seen.usage)?;
                if !scan.null()? {
                    chunk.usage = Some((&OpenAiUsage::read(&mut scan)?).into());
                }
            }
            b"error" => {
                once(&mut seen.error)?;
                if !scan.null()? {
                    let start = scan.i;
                    scan.value(1)?;
                    chunk.error = Some(&data[start..scan.i]);
                }
            }
            b"object" => {
                once(&mut seen.object)?;
                if !scan.null()? {
                    let text = scan.plain_string()?;
                    chunk.object_error = text == b"error";
                }
            }
            _ => scan.value(1)?,
        }
        if scan.next(b'}')? {
            break;
        }
        if let Some(cut) = cut.as_deref_mut() {
            if !(seen.choices || seen.usage || seen.error) {
                *cut = Cut {
                    i: scan.i,
                    seen,
                    model: chunk.model,
                    object_error: chunk.object_error,
                };
            }
        }
    }
    scan.at_end().then_some(chunk)
}

impl<'a> Scan<'a> {
    /// `choices` (not `null`): an array of choice objects. The last non-null `finish_reason`
    /// is kept, the characters of every `content` and tool call `arguments` added up.
    fn choices(&mut self, chunk: &mut Chunk<'a>, hole: &mut Option<Hole>) -> Option<()> {
        self.open(b'[')?;
        if self.empty(b']') {
            return Some(());
        }
        loop {
            chunk.choices += 1;
            self.open(b'{')?;
            let (mut delta, mut finish) = (false, false);
            if !self.empty(b'}') {
                loop {
                    match self.key()? {
                        b"delta" => {
                            once(&mut delta)?;
                            if !self.null()? {
                                self.delta(chunk, hole)?;
                            }
                        }
                        b"finish_reason" => {
                            once(&mut finish)?;
                            if !self.null()? {
                                let (start, end, escaped) = self.string()?;
                                if escaped {
                                    return None;
                                }
                                chunk.finish_reason = Some(Cow::Borrowed(self.s.get(start..end)?));
                            }
                        }
                        _ => self.value(3)?,
                    }
                    if self.next(b'}')? {
                        break;
                    }
                }
            }
            if self.next(b']')? {
                return Some(());
            }
        }
    }

    /// A choice's `delta` object: `content` and the `tool_calls`' `function.arguments`.
    fn delta(&mut self, chunk: &mut Chunk<'_>, hole: &mut Option<Hole>) -> Option<()> {
        self.open(b'{')?;
        let (mut content, mut calls) = (false, false);
        if self.empty(b'}') {
            return Some(());
        }
        loop {
            match self.key()? {
                b"content" => {
                    once(&mut content)?;
                    self.text(chunk, hole)?;
                }
                b"tool_calls" => {
                    once(&mut calls)?;
                    if !self.null()? {
                        self.tool_calls(chunk, hole)?;
                    }
                }
                _ => self.value(4)?,
            }
            if self.next(b'}')? {
                return Some(());
            }
        }
    }

    /// `tool_calls` (not `null`): an array of objects whose `function` is an object or `null`.
    fn tool_calls(&mut self, chunk: &mut Chunk<'_>, hole: &mut Option<Hole>) -> Option<()> {
        self.open(b'[')?;
        if self.empty(b']') {
            return Some(());
        }
        loop {
            self.open(b'{')?;
            let mut function = false;
            if !self.empty(b'}') {
                loop {
                    if self.key()? == b"function" {
                        once(&mut function)?;
                        if !self.null()? {
                            self.function(chunk, hole)?;
                        }
                    } else {
                        self.value(6)?;
                    }
                    if self.next(b'}')? {
                        break;
                    }
                }
            }
            if self.next(b']')? {
                return Some(());
            }
        }
    }

    /// A tool call's `function` object: the characters of its `arguments`.
    fn function(&mut self, chunk: &mut Chunk<'_>, hole: &mut Option<Hole>) -> Option<()> {
        self.open(b'{')?;
        let mut arguments = false;
        if self.empty(b'}') {
            return Some(());
        }
        loop {
            if self.key()? == b"arguments" {
                once(&mut arguments)?;
                self.text(chunk, hole)?;
            } else {
                self.value(8)?;
            }
            if self.next(b'}')? {
                return Some(());
            }
        }
    }

    /// A `content` or `arguments` string, or `null`: its characters counted, a string noted as
    /// the chunk's last text.
    fn text(&mut self, chunk: &mut Chunk<'_>, hole: &mut Option<Hole>) -> Option<()> {
        if self.null()? {
            return Some(());
        }
        let open = self.i;
        let chars = self.counted_string()?;
        chunk.content_chars += chars;
        *hole = Some(Hole {
            open,
            end: self.i,
            chars,
        });
        Some(())
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    /// Whenever the scan answers, the typed view reads the same chunk.
    fn agrees(data: &str) -> Option<Chunk<'_>> {
        let scanned = read(data);
        if let Some(chunk) = &scanned {
            assert_eq!(Some(chunk), Chunk::typed(data).ok().as_ref(), "{data}");
        }
        scanned
    }

    const PLAIN: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;

    #[test]
    fn a_plain_chunk_is_read_by_the_scan() {
        let chunk = agrees(PLAIN).unwrap();
        let at = PLAIN.find(r#""m""#).unwrap();
        assert_eq!(chunk.model, Some((at, at + 3)));
        assert_eq!((chunk.choices, chunk.content_chars), (1, 2));
    }

    #[test]
    fn escapes_in_content_count_one_character_each() {
        for (content, chars) in [
            (r#""a\nb\"c\\d\/e""#, 9),
            (r#""\u00e9\u20AC""#, 2),
            (r#""\ud83d\ude00!""#, 2),
            (r#""é€😀""#, 3),
            (r#""""#, 0),
            ("null", 0),
        ] {
            let data = format!(r#"{{"choices":[{{"delta":{{"content":{content}}}}}]}}"#);
            assert_eq!(agrees(&data).unwrap().content_chars, chars, "{data}");
        }
    }

    #[test]
    fn tool_call_arguments_are_counted_and_finish_reasons_kept() {
        let data = r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":1}"}},{"function":null},{}]},"finish_reason":"tool_calls"},{"delta":null,"finish_reason":null}],"model":null}"#;
        let chunk = agrees(data).unwrap();
        assert_eq!(chunk.content_chars, 7);
        assert_eq!(chunk.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(chunk.choices, 2);
        assert_eq!(chunk.model, Some((data.len() - 5, data.len() - 1)));
    }

    #[test]
    fn nested_values_numbers_and_whitespace_are_validated_and_skipped() {
        for data in [
            r#"{ "x" : { "a" : [ 1 , -2.5e+10 , 0 , 1E5 , true , false , null , "s" , { } , [ ] ] } , "choices" : [ ] , "usage" : { "prompt_tokens" : 3 , "completion_tokens" : 4 , "total_tokens" : 7 } }"#,
            "{\t\"choices\"\t:\t[\t{\t\"delta\"\t:\t{\t\"content\"\t:\t\"x\"\t}\t}\t]\t}",
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":null,"prompt_tokens_details":{"cached_tokens":1},"cache_creation_input_tokens":2},"choices":null}"#,
            r#"{"error":{"message":"m","type":"t"},"choices":null}"#,
            r#"{"object":"error","message":"vllm"}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2.0},"choices":[]}"#, // counts as billing reads them
            "{}",
        ] {
            assert!(agrees(data).is_some(), "{data}");
        }
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_the_typed_view() {
        for data in [
            r#"{"\u006dodel":"x","choices":[]}"#,        // an escaped key
            r#"{"model":"a","model":"b","choices":[]}"#, // a duplicate member
            r#"["m",[],null,null,null]"#,                // a struct as an array
            r#"{"choices":[{"finish_reason":"st\u006fp"}]}"#, // an escaped finish reason
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#, // a lone surrogate
            r#"{"choices":[{"delta":{"content":5}}]}"#,  // a number for a string
            r#"{"choices":[null]}"#,                     // a choice that is not an object
            r#"{"object":5}"#,                           // object not a string
            r#"{"a":01}"#,                               // invalid numbers
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1,}"#,      // a trailing comma
            r#"{"a":1 "b":2}"#, // a missing comma
            r#"{"a":"unterminated}"#,
            "{\"a\":\"raw\u{1}control\"}",
            r#"{"a":tru}"#,
            r#"{"a":1} x"#,  // trailing text
            r#"{"a":"\x"}"#, // an invalid escape
        ] {
            assert!(agrees(data).is_none(), "{data}");
        }
        let mut deep = "[".repeat(100);
        deep += &"]".repeat(100);
        assert!(agrees(&format!(r#"{{"a":{deep},"choices":[]}}"#)).is_none());
    }

    fn seeds() -> Vec<String> {
        vec![
            PLAIN.to_owned(),
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"q\":\"\u00e9\"}"}}]},"finish_reason":null}],"model":"x","usage":null}"#.to_owned(),
            r#"{ "model" : "m" , "choices" : [ { "delta" : { "content" : "a\nb" } , "finish_reason" : "stop" } ] , "x" : [ 1.5e3 , { "y" : null } ] }"#.to_owned(),
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":47,"total_tokens":59}}"#.to_owned(),
            r#"{"error":{"message":"overloaded","code":529}}"#.to_owned(),
        ]
    }

    /// A stream's chunks as one upstream sends them (the same first members), then others.
    fn stream() -> Vec<String> {
        let head = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt","system_fingerprint":"fp","#;
        vec![
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"a\nb"}},"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"c"}},"finish_reason":null}}]}}"#
            ),
            format!(r#"{head}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#),
            format!(
                r#"{head}"choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}}}"#
            ),
            format!(r#"{head}"model":"again","choices":[]}}"#),
            format!(r#"{head}"object":"error","choices":null}}"#),
            format!(r#"{head}"error":{{"message":"m"}}}}"#),
            format!(r#"{head}"choices":[{{"delta":{{"content":"d"}}}}] , "x":1}}"#),
            r#"{"choices":[{"delta":{"content":"e"}}],"model":"m","id":"x"}"#.to_owned(),
            r#"{"id":"chatcmpl-1","object":"error","model":"gpt","message":"vllm"}"#.to_owned(),
            // text chunks alike but for their text (`TextChunk`)
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"f"}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"\u00e9\ud83d\ude00 \"q\" é"}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"g","y":"z"}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":""}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"h"}},"logprobs":null,"finish_reason":"length"}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"a"}}}}]}},"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"\":1}}"}}}}]}},"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"i","role":null}},"finish_reason":null}},{{"index":1,"delta":{{"content":"j"}},"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":"i","role":null}},"finish_reason":null}},{{"index":1,"delta":{{"content":"kl"}},"finish_reason":null}}]}}"#
            ),
        ]
    }

    /// Each chunk read through one `Memo`, in order, as the reframer reads them: the same
    /// as the whole scan of each, and the typed view's whenever the scan answers.
    fn resumed_agree(events: &[String]) {
        let mut memo = Memo::default();
        for data in events {
            assert_eq!(read_memo(data, &mut memo), read(data), "{data}");
            agrees(data);
        }
    }

    /// As the reframer reads a chunk through its memo.
    fn read_memo<'a>(data: &'a str, memo: &mut Memo) -> Option<Chunk<'a>> {
        read_text(data, memo)
            .map(Text::chunk)
            .or_else(|| read_with(data, memo))
    }

    #[test]
    fn a_chunk_that_starts_as_the_last_one_did_is_read_from_there_alike() {
        let events = stream();
        let mut memo = Memo::default();
        read_with(&events[0], &mut memo).unwrap();
        let prefix = &memo.prefix;
        assert_eq!(prefix.bytes, &events[0].as_bytes()[..prefix.at.i]);
        assert!(events[0][..prefix.at.i].ends_with(r#""system_fingerprint":"fp","#));
        resumed_agree(&events);
        read_with(&events[2], &mut memo).unwrap();
        for duplicate in &events[5..7] {
            assert_eq!(
                read_with(duplicate, &mut memo),
                None,
                "the typed view's to refuse"
            );
        }
        read_with(&events[2], &mut memo).unwrap();
        assert!(read_with(&events[10], &mut memo).unwrap().object_error);
    }

    #[test]
    fn a_text_chunk_like_the_last_one_is_read_from_its_text() {
        let events = stream();
        let mut memo = Memo::default();
        let around = |data: &str, text: &str| {
            let at = data.find(&format!("\"{text}\"")).unwrap() + 1;
            [&data.as_bytes()[..at], &data.as_bytes()[at + text.len()..]].concat()
        };
        read_with(&events[11], &mut memo).unwrap();
        assert_eq!(memo.text.bytes, around(&events[11], "f"), "remembered");
        // read from its text: as the whole scan reads it
        let by_text = |data: &str, memo: &Memo| memo.text.read(data).map(Text::chunk);
        assert_eq!(by_text(&events[12], &memo), read(&events[12]));
        assert_eq!(read(&events[12]).unwrap().content_chars, 8);
        assert_eq!(by_text(&events[14], &memo), read(&events[14]));
        // not remembered: a finish reason; a text before `model`
        for other in [&events[15], &events[9]] {
            assert_eq!(read_with(other, &mut memo), read(other), "{other}");
            assert_eq!(memo.text.bytes, around(&events[11], "f"), "{other}");
        }
        // a string that ends before the remembered bytes after it: the whole scan's
        assert_eq!(memo.text.read(&events[13]), None);
        assert_eq!(read_with(&events[13], &mut memo), read(&events[13]));
        // tool call arguments; the last of two choices' texts
        for (first, text, next) in [(16, r#"{\"a"#, 17), (18, "j", 19)] {
            read_with(&events[first], &mut memo).unwrap();
            assert_eq!(memo.text.bytes, around(&events[first], text));
            let chunk = by_text(&events[next], &memo);
            assert!(chunk.is_some(), "{}", events[next]);
            assert_eq!(chunk, read(&events[next]));
        }
        assert_eq!(memo.text.read(&events[19]).unwrap().chars, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Bytes changed, inserted or removed anywhere in a stream's chunks: each chunk read
        /// after the one before it (resumed after their shared first members) reads as its
        /// whole scan does.
        #[test]
        fn a_resumed_scan_reads_every_chunk_as_the_whole_scan(
            edits in crate::reframe::stream_edits::edits(20),
        ) {
            resumed_agree(&crate::reframe::stream_edits::edited(stream(), edits));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Bytes changed, inserted or removed anywhere in a chunk (JSON's own characters
        /// among them): whenever the scan answers, the typed view reads the same.
        #[test]
        fn the_scan_never_reads_a_chunk_otherwise_than_the_typed_view(
            seed in 0usize..5,
            edits in proptest::collection::vec(
                (any::<usize>(), prop::sample::select(
                    b"{}[]\",:\\ \t0123456789.eE+-unltrfasbx\x01\xc3".to_vec()
                ), 0u8..3),
                0..6,
            ),
        ) {
            let mut bytes = seeds()[seed].clone().into_bytes();
            for (at, byte, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => { bytes.remove(at); }
                    _ => {}
                }
            }
            if let Ok(data) = std::str::from_utf8(&bytes) {
                agrees(data);
            }
        }
    }
}
