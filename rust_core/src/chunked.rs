//! An HTTP/1.1 chunked body (RFC 9112 §7.1) read incrementally: the body's bytes out of the
//! framing, and where the message ends.
//!
//! The HTTP client reads an event stream's chunked body with this instead of httptools, which
//! makes a Python `bytes` and a callback per HTTP chunk (an upstream that writes each SSE line
//! as its own chunk sends three per Anthropic event). It accepts what the client's httptools
//! parser accepts with the leniencies it is given (`gateway/providers/http_client.py`): spaces or
//! tabs after a chunk size, a bare LF ending a chunk's data, an extension, a trailer field or
//! the body (one right after a size's digits or spaces is taken as the CR of a CRLF, as llhttp
//! takes it). Chunk extensions (`;name`, `;name=token`, `;name="quoted"`) and trailer fields
//! are checked as llhttp checks them, then read past. Anything else is an error: a
//! size that is not hex or overflows, a CR not followed by LF, a chunk's data not followed by
//! its line end.

use std::fmt;

/// A malformed chunked body (the message names the fault only: no body bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedError(&'static str);

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ChunkedError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a chunk-size line's start: a hex digit must come.
    SizeStart,
    /// In the size's hex digits.
    Size,
    /// Spaces or tabs after the size.
    SizeSpaces,
    /// A chunk extension's name (`;name`; `empty`: none of it read yet).
    ExtName { empty: bool },
    /// Its value after `=`, a token (`empty`: none of it read yet, so a quote may open one).
    ExtValue { empty: bool },
    /// In a quoted value (`escape`: after a backslash).
    ExtQuoted { escape: bool },
    /// After a quoted value's closing quote.
    ExtQuotedEnd,
    /// A CR ended the size line: its LF must follow.
    SizeLf,
    /// In a chunk's data: `remaining` bytes to go.
    Data,
    /// After a chunk's data: its line end (CRLF, or a bare LF).
    DataEnd,
    /// After a chunk's data and a CR: its LF.
    DataLf,
    /// After the last chunk (size 0): at a trailer line's start (an empty line ends the body).
    TrailerStart,
    /// In a trailer field's name.
    TrailerName,
    /// In a trailer field's value (or a line folded into it).
    TrailerValue,
    /// A CR in or ending a trailer line: its LF must follow (`end`: the line was empty).
    TrailerLf { end: bool },
    /// The body has ended.
    Done,
}

/// The state of one chunked body being read.
#[derive(Debug, Clone)]
pub struct Dechunker {
    state: State,
    size: u64,
    remaining: u64,
    /// A trailer field was read (a line starting with a space or tab continues it).
    trailer_field: bool,
}

impl Default for Dechunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Dechunker {
    /// A body's reader, at its first chunk-size line.
    pub fn new() -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            remaining: 0,
            trailer_field: false,
        }
    }

    /// Whether the body has ended (the last chunk and the trailer section read).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `data` (any split of the wire): the body's bytes are appended to `out`. Returns how
    /// many bytes of `data` belong to the body; fewer than `data.len()` only once the body has
    /// ended (the rest came after its end).
    ///
    /// # Errors
    /// A malformed chunked body; the reader must not be fed again.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut at = 0;
        while at < data.len() {
            if self.state == State::Data {
                let available = data.len() - at;
                let take = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
                out.extend_from_slice(&data[at..at + take]);
                at += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataEnd;
                }
                continue;
            }
            if self.state == State::Done {
                return Ok(at);
            }
            // The framing as nearly every server writes it, whole in this read: a size line of
            // hex digits and CRLF, a chunk's data ended by CRLF. Read at once, not byte by byte
            // (an upstream that sends each SSE line as its own chunk has ~10 framing bytes a
            // line); anything else (an extension, spaces, a bare LF, a split) goes by `step`.
            if self.state == State::SizeStart {
                if let Some((size, used)) = plain_size_line(&data[at..]) {
                    at += used;
                    self.size = size;
                    self.state = self.size_line_ended();
                    continue;
                }
            } else if self.state == State::DataEnd && data[at..].starts_with(b"\r\n") {
                at += 2;
                self.state = State::SizeStart;
                continue;
            }
            let byte = data[at];
            at += 1;
            self.state = self.step(byte)?;
        }
        Ok(at)
    }

    /// One byte of the framing (not of a chunk's data).
    fn step(&mut self, byte: u8) -> Result<State, ChunkedError> {
        Ok(match (self.state, byte) {
            (State::SizeStart | State::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = u64::from(match byte {
                    b'0'..=b'9' => byte - b'0',
                    b'a'..=b'f' => byte - b'a' + 10,
                    _ => byte - b'A' + 10,
                });
                if self.state == State::SizeStart {
                    self.size = 0;
                }
                if self.size > u64::MAX >> 4 {
                    return Err(ChunkedError("chunk size overflow"));
                }
                self.size = self.size << 4 | digit;
                State::Size
            }
            (State::Size | State::SizeSpaces, b' ' | b'\t') => State::SizeSpaces,
            // (llhttp's leniency takes a bare LF right after a size as the CR of a CRLF)
            (State::Size | State::SizeSpaces, b'\r' | b'\n')
            | (
                State::ExtName { empty: false } | State::ExtValue { .. } | State::ExtQuotedEnd,
                b'\r',
            ) => State::SizeLf,
            // (a bare LF even right after `;`, as llhttp's leniency reads it)
            (
                State::ExtName { .. }
                | State::ExtValue { .. }
                | State::ExtQuotedEnd
                | State::SizeLf,
                b'\n',
            ) => self.size_line_ended(),
            (
                State::Size
                | State::SizeSpaces
                | State::ExtName { empty: false }
                | State::ExtValue { .. }
                | State::ExtQuotedEnd,
                b';',
            ) => State::ExtName { empty: true },
            (State::SizeStart | State::Size | State::SizeSpaces, _) => {
                return Err(ChunkedError("invalid chunk size"))
            }
            (State::ExtName { .. }, _) if is_token(byte) => State::ExtName { empty: false },
            (State::ExtName { empty: false }, b'=') => State::ExtValue { empty: true },
            (State::ExtValue { .. }, _) if is_token(byte) => State::ExtValue { empty: false },
            (State::ExtValue { empty: true }, b'"') => State::ExtQuoted { escape: false },
            (State::ExtQuoted { escape: false }, b'"') => State::ExtQuotedEnd,
            (State::ExtQuoted { escape: false }, b'\\') => State::ExtQuoted { escape: true },
            (State::ExtQuoted { .. }, _) if byte == b'\t' || (byte >= 0x20 && byte != 0x7f) => {
                State::ExtQuoted { escape: false }
            }
            (
                State::ExtName { .. }
                | State::ExtValue { .. }
                | State::ExtQuoted { .. }
                | State::ExtQuotedEnd,
                _,
            ) => return Err(ChunkedError("invalid chunk extension")),
            (State::DataEnd, b'\r') => State::DataLf,
            (State::DataEnd | State::DataLf, b'\n') => State::SizeStart,
            (State::TrailerStart, b'\r') => State::TrailerLf { end: true },
            (State::TrailerStart | State::TrailerLf { end: true }, b'\n') => State::Done,
            (State::TrailerStart, b' ' | b'\t') if self.trailer_field => State::TrailerValue,
            (State::TrailerStart | State::TrailerName, _) if is_token(byte) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerStart | State::TrailerName, _) => {
                return Err(ChunkedError("invalid trailer field"))
            }
            (State::TrailerValue, b'\r') => State::TrailerLf { end: false },
            (State::TrailerValue | State::TrailerLf { end: false }, b'\n') => {
                self.trailer_field = true;
                State::TrailerStart
            }
            (State::TrailerValue, _) => State::TrailerValue,
            (State::SizeLf | State::DataLf | State::TrailerLf { .. }, _) => {
                return Err(ChunkedError("a CR not followed by LF in a chunked body"))
            }
            (State::DataEnd, _) => return Err(ChunkedError("a chunk's data not followed by CRLF")),
            (State::Data | State::Done, _) => unreachable_state(),
        })
    }

    fn size_line_ended(&mut self) -> State {
        if self.size == 0 {
            State::TrailerStart
        } else {
            self.remaining = self.size;
            State::Data
        }
    }
}

/// A size line of 1 to 15 hex digits then CRLF at the start of `data`: the size and the line's
/// length (what `step` reads of it, byte by byte); None for anything else.
fn plain_size_line(data: &[u8]) -> Option<(u64, usize)> {
    let mut size: u64 = 0;
    for (at, &byte) in data.iter().enumerate().take(16) {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            b'\r' if at > 0 => {
                return (data.get(at + 1) == Some(&b'\n')).then_some((size, at + 2));
            }
            _ => return None,
        };
        size = size << 4 | u64::from(digit);
    }
    None
}

/// A byte of an HTTP token (a field name): RFC 9110 §5.6.2.
pub(crate) const fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// `feed` handles these states before `step` (never reached; no panic on input).
const fn unreachable_state() -> State {
    State::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(wire: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut reader = Dechunker::new();
        let mut out = Vec::new();
        let used = reader.feed(wire, &mut out)?;
        Ok((out, used, reader.done()))
    }

    #[test]
    fn chunks_with_extensions_and_trailers_give_their_data() {
        let wire = b"10\r\n0123456789abcdef\r\n3;ext=1\r\nxyz\r\n0\r\nTrailer: t\r\n\r\n";
        assert_eq!(
            whole(wire),
            Ok((b"0123456789abcdefxyz".to_vec(), wire.len(), true))
        );
    }

    #[test]
    fn bare_lf_line_ends_and_spaces_after_the_size_are_accepted() {
        let wire = b"3 \t\r\nabc\n2;x\nde\n0\r\nX: y\n\n";
        assert_eq!(whole(wire), Ok((b"abcde".to_vec(), wire.len(), true)));
        // a bare LF right after the size stands for a CR, as llhttp reads it
        assert!(whole(b"3\nabc").is_err());
        assert_eq!(whole(b"3 \n\nabc\r\n"), Ok((b"abc".to_vec(), 9, false)));
    }

    #[test]
    fn bytes_after_the_end_are_not_the_body_s() {
        assert_eq!(
            whole(b"1\r\na\r\n0\r\n\r\nHTTP/1.1"),
            Ok((b"a".to_vec(), 11, true))
        );
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(whole(b"5\r\nab"), Ok((b"ab".to_vec(), 5, false)));
        assert_eq!(whole(b"0\r\n"), Ok((Vec::new(), 3, false)));
        assert_eq!(whole(b"0\r\nX: y\r\n"), Ok((Vec::new(), 9, false)));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for wire in [
            &b"\r\n"[..],
            b"x\r\n",
            b"-1\r\n",
            b"1\rx",
            b"1\r\nab\r\n",
            b"1\r\na\rb",
            b"1 x\r\n",
            b"0\r\n\rx",
            b"0\r\nX: y\rz",
            b"0\r\nX : y\r\n",
            b"0\r\n X: y\r\n",
            b"0\r\n:y\r\n",
            b"0\r\nX\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(whole(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn the_largest_size_is_read_and_a_larger_one_refused() {
        let mut reader = Dechunker::new();
        let mut out = Vec::new();
        assert_eq!(reader.feed(b"ffffffffffffffff\r\nab", &mut out), Ok(20));
        assert_eq!(out, b"ab");
        assert!(whole(b"10000000000000000\r\n").is_err());
    }

    fn chunked(pieces: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for piece in pieces.iter().filter(|p| !p.is_empty()) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    /// `wire` fed one byte at a time: every framing byte through `step` (a read of one byte is
    /// never the whole size line or line end that `feed` reads at once).
    fn bytewise(wire: &[u8]) -> (Result<usize, ChunkedError>, Vec<u8>, bool) {
        let mut reader = Dechunker::new();
        let mut out = Vec::new();
        let mut used = 0;
        for byte in wire {
            match reader.feed(std::slice::from_ref(byte), &mut out) {
                Ok(n) => used += n,
                Err(e) => return (Err(e), out, reader.done()),
            }
        }
        (Ok(used), out, reader.done())
    }

    #[test]
    fn the_plain_framing_read_at_once_is_what_step_reads() {
        for wire in [
            &b"3\r\nabc\r\n1A\r\n"[..],
            b"fffffffffffffff\r\nab",
            b"ffffffffffffffff\r\nab",
            b"3\r\nabc\r\r",
            b"3\r\nabc\n4\r\nabcd\r\n0\r\n\r\nrest",
            b"\r\n",
            b"3\rx",
        ] {
            let mut reader = Dechunker::new();
            let mut out = Vec::new();
            let at_once = reader.feed(wire, &mut out);
            assert_eq!(
                (at_once, out, reader.done()),
                bytewise(wire),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    proptest! {
        /// Any bytes (framing's own, mostly) read at once answer what `step` answers byte by
        /// byte: the body, where it ends, whether the framing is malformed.
        #[test]
        fn any_wire_read_at_once_is_read_as_byte_by_byte(
            wire in prop::collection::vec(
                prop::sample::select(&b"0123456789abcdefAFxX \t;=\":\r\n\r\n"[..]), 0..80
            ),
        ) {
            let mut reader = Dechunker::new();
            let mut out = Vec::new();
            let at_once = reader.feed(&wire, &mut out);
            prop_assert_eq!((at_once, out, reader.done()), bytewise(&wire));
        }

        /// However the wire is split into reads, the body and its end are the same.
        #[test]
        fn any_split_reads_the_same_body(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let wire = chunked(&pieces);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            at.push(0);
            at.push(wire.len());
            at.sort_unstable();
            let mut reader = Dechunker::new();
            let mut out = Vec::new();
            for pair in at.windows(2) {
                let used = reader.feed(&wire[pair[0]..pair[1]], &mut out);
                prop_assert_eq!(used, Ok(pair[1] - pair[0]));
            }
            prop_assert!(reader.done());
            prop_assert_eq!(out, pieces.concat());
        }
    }
}
