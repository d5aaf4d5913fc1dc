//! Incremental Server-Sent Events parser (WHATWG HTML, "Parsing an event stream").
//!
//! Bytes arrive in arbitrary chunks: a boundary may fall inside a multi-byte UTF-8 character,
//! between `\r` and `\n`, or inside the leading BOM. Lines end with LF, CR or CRLF. Fields are
//! `event`, `data` (several `data` lines joined with `\n`), `id` and `retry`; lines starting with
//! `:` are comments; a line without a colon is a field with an empty value; one space after the
//! colon is removed. An event is dispatched at a blank line, and only if it has data.
//!
//! **EOF rule (a deliberate deviation from the spec).** The spec discards an event that is not
//! followed by a blank line at EOF. Some OpenAI-compatible servers end with `data: [DONE]\n`
//! (one newline), so [`SseParser::finish`] dispatches a pending event whose lines were all
//! *terminated*; an unterminated last line (cut off mid-line) is dropped, as it may be half a
//! JSON document.
//!
//! **Bound.** The bytes of the pending event (event type + data + the current partial line) never
//! exceed `max_event_bytes`; beyond that [`CoreError::Sse`] is returned, so memory stays bounded
//! whatever the upstream sends.

use std::borrow::Cow;

use crate::errors::CoreError;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event. The strings borrow the parser's buffers (invalid UTF-8 is replaced by
/// U+FFFD, as the spec's decoder does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event` field, `"message"` when absent.
    pub event: Cow<'a, str>,
    /// The data lines joined with `\n`.
    pub data: Cow<'a, str>,
    /// The last event id seen so far (may be empty).
    pub id: Cow<'a, str>,
    /// The data is one `data` line, so it holds no line break (a reader need not look for
    /// one); `false`: several lines joined, or data not from SSE lines, which may hold one.
    pub one_line: bool,
}

/// What the event consumer wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep parsing.
    Continue,
    /// Stop: the rest of the input is ignored (e.g. after a terminator).
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// This many bytes of the BOM have been matched at the start of the stream.
    Checking(usize),
    Done,
}

/// The parser state between chunks.
#[derive(Debug, Clone)]
pub struct SseParser {
    max_event_bytes: usize,
    bom: Bom,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one belongs to it.
    after_cr: bool,
    /// The current, not yet terminated line.
    line: Vec<u8>,
    event_type: Vec<u8>,
    data: Vec<u8>,
    /// `data` holds more than one `data` line.
    data_lines: bool,
    last_id: Vec<u8>,
    retry_ms: Option<u64>,
}

impl SseParser {
    /// A parser that refuses events (or lines) larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            bom: Bom::Checking(0),
            after_cr: false,
            line: Vec::new(),
            event_type: Vec::new(),
            data: Vec::new(),
            data_lines: false,
            last_id: Vec::new(),
            retry_ms: None,
        }
    }

    /// The last `retry` field value (milliseconds), if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Bytes currently buffered (partial line + pending event): always `<= max_event_bytes`.
    pub fn buffered_bytes(&self) -> usize {
        self.line.len() + self.data.len() + self.event_type.len()
    }

    /// Feeds one chunk; `sink` is called once per complete event, in order.
    pub fn push<F>(&mut self, input: &[u8], sink: &mut F) -> Result<Flow, CoreError>
    where
        F: FnMut(&Event<'_>) -> Result<Flow, CoreError>,
    {
        let mut input = input;
        while let Bom::Checking(matched) = self.bom {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(Flow::Continue);
            };
            if byte == BOM[matched] {
                input = rest;
                self.bom = if matched + 1 == BOM.len() {
                    Bom::Done
                } else {
                    Bom::Checking(matched + 1)
                };
            } else {
                self.bom = Bom::Done;
                // A partial BOM followed by something else is ordinary data.
                if matched > 0 && self.push_lines(&BOM[..matched], sink)? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
        }
        self.push_lines(input, sink)
    }

    /// Signals EOF: dispatches a pending event whose lines were all terminated (see the module
    /// docs) and drops an unterminated last line.
    pub fn finish<F>(&mut self, sink: &mut F) -> Result<Flow, CoreError>
    where
        F: FnMut(&Event<'_>) -> Result<Flow, CoreError>,
    {
        self.line.clear();
        self.after_cr = false;
        self.dispatch(sink)
    }

    fn push_lines<F>(&mut self, input: &[u8], sink: &mut F) -> Result<Flow, CoreError>
    where
        F: FnMut(&Event<'_>) -> Result<Flow, CoreError>,
    {
        let mut rest = input;
        // The input from its first whole event on, as far as it is UTF-8: checked once, and
        // whole events sliced from it, not each decoded alone (a read of many small events).
        let mut text: Option<&str> = None;
        if self.after_cr {
            if let Some((&first, tail)) = rest.split_first() {
                self.after_cr = false;
                if first == b'\n' {
                    rest = tail;
                }
            }
        }
        loop {
            let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.check_bound(rest.len())?;
                self.line.extend_from_slice(rest);
                return Ok(Flow::Continue);
            };
            // The common event, `data: …\n\n` (or `event: …\ndata: …\n\n`, or `data: …\r\n\r\n`
            // as Google sends it) whole in the input with nothing pending: dispatched from the
            // input itself (not copied into `data` and `event_type`, no line by line).
            if self.line.is_empty() && self.data.is_empty() && self.event_type.is_empty() {
                if let Some((name, value, used)) = whole_event(rest, pos) {
                    // what the two lines' own checks add up to
                    self.check_bound(name.len() + value.len() + 1)?;
                    let text = *text.get_or_insert_with(|| valid_utf8(rest));
                    let event = Event {
                        event: if name.is_empty() {
                            Cow::Borrowed("message")
                        } else {
                            slice_of(text, name)
                        },
                        data: slice_of(text, value),
                        id: decode(&self.last_id),
                        one_line: true,
                    };
                    let flow = sink(&event)?;
                    rest = &rest[used..];
                    if flow == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    continue;
                }
            }
            let flow = if self.line.is_empty() {
                self.process_line(&rest[..pos], sink)?
            } else {
                self.check_bound(pos)?;
                self.line.extend_from_slice(&rest[..pos]);
                let line = std::mem::take(&mut self.line);
                let flow = self.process_line(&line, sink);
                self.line = line;
                self.line.clear();
                flow?
            };
            let mut next = pos + 1;
            if rest[pos] == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            rest = &rest[next..];
            if flow == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
    }

    fn check_bound(&self, extra: usize) -> Result<(), CoreError> {
        if self.buffered_bytes() + extra > self.max_event_bytes {
            Err(CoreError::Sse(format!(
                "upstream SSE event larger than max_event_bytes ({})",
                self.max_event_bytes
            )))
        } else {
            Ok(())
        }
    }

    fn process_line<F>(&mut self, line: &[u8], sink: &mut F) -> Result<Flow, CoreError>
    where
        F: FnMut(&Event<'_>) -> Result<Flow, CoreError>,
    {
        if line.is_empty() {
            return self.dispatch(sink);
        }
        if line[0] == b':' {
            return Ok(Flow::Continue);
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                // `line` may come straight from the input: bound it here too.
                self.check_bound(value.len() + 1)?;
                self.data_lines = !self.data.is_empty();
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event_type.clear();
                self.check_bound(value.len())?;
                self.event_type.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) && value.len() <= self.max_event_bytes => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn dispatch<F>(&mut self, sink: &mut F) -> Result<Flow, CoreError>
    where
        F: FnMut(&Event<'_>) -> Result<Flow, CoreError>,
    {
        if self.data.is_empty() {
            self.event_type.clear();
            return Ok(Flow::Continue);
        }
        self.data.pop(); // the LF appended after the last data line
        let event = Event {
            event: if self.event_type.is_empty() {
                Cow::Borrowed("message")
            } else {
                decode(&self.event_type)
            },
            data: decode(&self.data),
            id: decode(&self.last_id),
            one_line: !self.data_lines,
        };
        let flow = sink(&event);
        drop(event);
        self.data.clear();
        self.data_lines = false;
        self.event_type.clear();
        flow
    }
}

/// `(event name, data, bytes used)` when `input`, whose first line ends at `pos` (its LF or CR),
/// starts with one whole event of a single `data` line, or of an `event` line then a single
/// `data` line (LF line ends), or of a single `data` line with CRLF line ends, each field's one
/// leading space removed; the name is empty without an `event` line. `None` for anything else
/// (the line path reads it).
#[inline]
fn whole_event(input: &[u8], pos: usize) -> Option<(&[u8], &[u8], usize)> {
    fn value(line: &[u8]) -> &[u8] {
        line.strip_prefix(b" ").unwrap_or(line)
    }
    let first = &input[..pos];
    if input[pos] == b'\r' {
        let data = first.strip_prefix(b"data:")?;
        return (input.get(pos + 1..pos + 4) == Some(b"\n\r\n")).then_some((
            &[][..],
            value(data),
            pos + 4,
        ));
    }
    if let Some(data) = first.strip_prefix(b"data:") {
        return (input.get(pos + 1) == Some(&b'\n')).then_some((&[][..], value(data), pos + 2));
    }
    let name = value(first.strip_prefix(b"event:")?);
    let second = &input[pos + 1..];
    let end = memchr::memchr2(b'\n', b'\r', second)?;
    if second[end] != b'\n' || second.get(end + 1) != Some(&b'\n') {
        return None;
    }
    let data = value(second[..end].strip_prefix(b"data:")?);
    Some((name, data, pos + end + 3))
}

/// UTF-8 decoding with replacement; the validating fast path first (`from_utf8_lossy`'s
/// chunk iterator is several times slower on valid input).
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    if bytes.is_empty() {
        return Cow::Borrowed(""); // (the last event id, mostly)
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The longest UTF-8 start of `bytes`. A whole read is checked at once: `simdutf8` checks
/// 32 bytes a step where `std`'s check takes 16 (an 8 KB read of 50 events: 3.7K instructions
/// under callgrind against ...); on invalid input `std` finds where the valid start ends.
fn valid_utf8(bytes: &[u8]) -> &str {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        },
    }
}

/// `part`, a slice of the bytes `text` was checked from, decoded: sliced from `text` when it
/// lies in it (a whole field's bounds are ASCII, so on character boundaries), else alone.
fn slice_of<'a>(text: &'a str, part: &'a [u8]) -> Cow<'a, str> {
    let start = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    match start
        .checked_add(part.len())
        .and_then(|end| text.get(start..end))
    {
        Some(s) => Cow::Borrowed(s),
        None => decode(part),
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn collect(chunks: &[&[u8]], finish: bool) -> Vec<(String, String)> {
        let mut p = SseParser::new(1 << 20);
        let mut got = Vec::new();
        let mut sink = |e: &Event<'_>| {
            got.push((e.event.to_string(), e.data.to_string()));
            Ok(Flow::Continue)
        };
        for c in chunks {
            p.push(c, &mut sink).unwrap();
        }
        if finish {
            p.finish(&mut sink).unwrap();
        }
        got
    }

    fn ev(e: &str, d: &str) -> (String, String) {
        (e.to_string(), d.to_string())
    }

    #[test]
    fn an_invalid_byte_in_one_of_a_reads_whole_events_is_replaced_in_it_alone() {
        let input =
            b"data: \xc3\xa9a\n\nevent: \xffe\ndata: b\xff\n\ndata: c\xe2\x82\xac\n\ndata: d\n\n";
        assert_eq!(
            collect(&[input], false),
            vec![
                ev("message", "\u{e9}a"),
                ev("\u{FFFD}e", "b\u{FFFD}"),
                ev("message", "c\u{20ac}"),
                ev("message", "d"),
            ]
        );
    }

    #[test]
    fn split_inside_crlf_yields_one_event() {
        assert_eq!(
            collect(&[b"data: a\r", b"\n\r", b"\n"], false),
            vec![ev("message", "a")]
        );
    }

    #[test]
    fn cr_alone_ends_lines() {
        assert_eq!(
            collect(&[b"data: a\r\rdata: b\r\r"], false),
            vec![ev("message", "a"), ev("message", "b")]
        );
    }

    #[test]
    fn multiple_data_lines_join_with_lf() {
        assert_eq!(
            collect(&[b"data: a\ndata:b\ndata\n\n"], false),
            vec![ev("message", "a\nb\n")]
        );
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(
            collect(
                &[b": keep-alive\n\nfoo: bar\nevent: x\ndata:  two spaces\n\n"],
                false
            ),
            vec![ev("x", " two spaces")]
        );
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_resets_type() {
        assert_eq!(
            collect(&[b"event: ping\n\ndata: x\n\n"], false),
            vec![ev("message", "x")]
        );
    }

    #[test]
    fn bom_split_across_chunks_is_stripped() {
        assert_eq!(
            collect(&[b"\xEF", b"\xBB\xBFdata: a\n\n"], false),
            vec![ev("message", "a")]
        );
    }

    #[test]
    fn partial_bom_is_data() {
        let got = collect(&[b"\xEFdata: a\n\n"], false);
        assert!(got.is_empty()); // "\u{FFFD}data" is an unknown field name
    }

    #[test]
    fn multibyte_char_split_is_reassembled() {
        let s = "data: é€\n\n".as_bytes();
        assert_eq!(
            collect(&[&s[..7], &s[7..9], &s[9..]], false),
            vec![ev("message", "é€")]
        );
    }

    #[test]
    fn terminated_lines_without_blank_line_dispatch_at_eof() {
        assert_eq!(
            collect(&[b"data: [DONE]\n"], true),
            vec![ev("message", "[DONE]")]
        );
    }

    #[test]
    fn unterminated_line_is_dropped_at_eof() {
        assert!(collect(&[b"data: {\"a\":"], true).is_empty());
    }

    #[test]
    fn oversized_event_is_an_error_and_buffer_stays_bounded() {
        let mut p = SseParser::new(16);
        let mut sink = |_: &Event<'_>| Ok(Flow::Continue);
        assert!(p.push(b"data: 0123456789", &mut sink).is_ok());
        assert!(matches!(
            p.push(b"0123456789", &mut sink),
            Err(CoreError::Sse(_))
        ));
        assert!(p.buffered_bytes() <= 16);
        let mut p = SseParser::new(16);
        assert!(p
            .push(b"data: 0123456789\ndata: 0123456789\n", &mut sink)
            .is_err());
        assert!(p.buffered_bytes() <= 16);
    }

    #[test]
    fn whole_data_events_read_from_the_input_are_the_events_the_lines_make() {
        // `data: …\n\n`, `event: …\ndata: …\n\n` and `data: …\r\n\r\n` with nothing pending are
        // dispatched from the input itself: the same events (and ids, bounds) as line by line,
        // the empty value and a missing space alike; an event line followed by anything else,
        // and CRLF events of another shape, take the lines.
        let whole = b"id: 7\ndata: a\n\ndata:b\n\ndata:\n\nevent: e\ndata: c\n\ndata: d\n\n\
            event:\ndata: f\n\nevent:g\ndata:\n\nevent: h\ndata: i\ndata: j\n\n\
            event: k\nid: 8\ndata: l\n\nevent: m\ndata: n\r\n\nevent: o\n\ndata: p\n\n\
            data: q\r\n\r\ndata:\r\n\r\ndata: r\r\n\rdata: s\r\ndata: t\r\n\r\n\
            data: u\r\n\n";
        let mut by_line = Vec::new();
        let mut p = SseParser::new(1 << 10);
        for byte in whole {
            p.push(&[*byte], &mut |e: &Event<'_>| {
                by_line.push((
                    e.event.to_string(),
                    e.data.to_string(),
                    e.id.to_string(),
                    e.one_line,
                ));
                Ok(Flow::Continue)
            })
            .unwrap();
        }
        let mut at_once = Vec::new();
        let mut p = SseParser::new(1 << 10);
        p.push(whole, &mut |e: &Event<'_>| {
            at_once.push((
                e.event.to_string(),
                e.data.to_string(),
                e.id.to_string(),
                e.one_line,
            ));
            Ok(Flow::Continue)
        })
        .unwrap();
        assert_eq!(at_once, by_line);
        assert_eq!(
            at_once
                .iter()
                .map(|(e, d, i, one)| (e.as_str(), d.as_str(), i.as_str(), *one))
                .collect::<Vec<_>>(),
            [
                ("message", "a", "7", true),
                ("message", "b", "7", true),
                ("message", "", "7", true),
                ("e", "c", "7", true),
                ("message", "d", "7", true),
                ("message", "f", "7", true),
                ("g", "", "7", true),
                ("h", "i\nj", "7", false),
                ("k", "l", "8", true),
                ("m", "n", "8", true),
                ("message", "p", "8", true),
                ("message", "q", "8", true),
                ("message", "", "8", true),
                ("message", "r", "8", true),
                ("message", "s\nt", "8", false),
                ("message", "u", "8", true)
            ]
        );
        let mut p = SseParser::new(8);
        let sink = &mut |_: &Event<'_>| Ok(Flow::Continue);
        assert!(matches!(
            p.push(b"data: 01234567\n\n", sink),
            Err(CoreError::Sse(_))
        ));
        assert!(p.push(b"data: 0123456\n\n", sink).is_ok());
        assert!(matches!(
            p.push(b"data: 01234567\r\n\r\n", sink),
            Err(CoreError::Sse(_))
        ));
        assert!(p.push(b"data: 0123456\r\n\r\n", sink).is_ok());
        // the name and the data together, as the two lines' checks bound them (the same event
        // with CRLF line ends takes the line path)
        for (name, data, fits) in [
            ("abc", "0123", true),
            ("abc", "01234", false),
            ("012345678", "a", false),
        ] {
            for end in ["\n", "\r\n"] {
                let event = format!("event: {name}{end}data: {data}{end}{end}");
                let mut p = SseParser::new(8);
                assert_eq!(p.push(event.as_bytes(), sink).is_ok(), fits, "{event:?}");
            }
        }
    }

    #[test]
    fn stop_ignores_the_rest_of_the_chunk() {
        let mut p = SseParser::new(1024);
        let mut n = 0;
        let mut sink = |_: &Event<'_>| {
            n += 1;
            Ok(Flow::Stop)
        };
        assert_eq!(
            p.push(b"data: a\n\ndata: b\n\n", &mut sink).unwrap(),
            Flow::Stop
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn id_and_retry_fields_are_kept() {
        let mut p = SseParser::new(1024);
        let mut ids = Vec::new();
        let mut sink = |e: &Event<'_>| {
            ids.push(e.id.to_string());
            Ok(Flow::Continue)
        };
        p.push(
            b"id: 7\nretry: 1500\ndata: a\n\nretry: x\ndata: b\n\n",
            &mut sink,
        )
        .unwrap();
        assert_eq!(ids, vec!["7", "7"]);
        assert_eq!(p.retry_ms(), Some(1500));
    }
}
