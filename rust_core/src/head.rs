//! An HTTP/1.1 answer's head read in one call, when it is a plain one.
//!
//! The HTTP client (`gateway/providers/http_client.py`) parses answers with httptools, which
//! calls back into Python for every header and for the head's end (~22K instructions a
//! single answer). Most answers are plain: the whole head in the first read, HTTP/1.1, a
//! final status, a body framed by one `Content-Length`, or an event stream's chunked body.
//! [`read_head`] reads such a head and says how its body is framed; for anything else (a head
//! not whole yet, an interim or bodiless status, a `Content-Encoding`, a repeated framing
//! header, any byte httptools might read differently) it answers `None`, and the client feeds
//! the bytes to httptools as before. So it is stricter than httptools with the client's
//! leniencies, never laxer: each line ends in CRLF, a name is a token right before its colon,
//! a value or reason holds no control byte but a tab. What it reads as a header is what
//! httptools reads: the value without its leading spaces and tabs, its trailing ones kept.

use crate::chunked::is_token;

/// How the body after a plain head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` with a `text/event-stream` content type.
    ChunkedEvents,
}

/// A plain head: its status, where it ends (after its blank line), its body's framing and
/// whether the connection may serve another request after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub end: usize,
    pub body: Body,
    pub keep_alive: bool,
}

const PREFIX: &[u8] = b"HTTP/1.1 ";
const LONGEST_LENGTH: usize = 18; // digits of a Content-Length (below u64's overflow)

/// The head at the start of `buf` when it is whole and plain (see the module's note).
#[must_use]
pub fn read_head(buf: &[u8]) -> Option<Head> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut events = false;
    let mut keep_alive = true;
    let mut seen = 0u8; // framing headers met, one bit each: a repeated one is not plain
    let (status, end) = walk(buf, |name, value| {
        // (by length first: most names are none of these, and one length check rules out all)
        let (bit, plain) = if !matches!(name.len(), 10 | 12 | 14 | 16 | 17) {
            (0, true)
        } else if name.eq_ignore_ascii_case(b"content-length") {
            length = digits(trim_end(value));
            (1, length.is_some())
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = trim_end(value).eq_ignore_ascii_case(b"chunked");
            (2, chunked)
        } else if name.eq_ignore_ascii_case(b"content-type") {
            events = value.len() >= 17 && value[..17].eq_ignore_ascii_case(b"text/event-stream");
            (4, true)
        } else if name.eq_ignore_ascii_case(b"connection") {
            let value = trim_end(value);
            keep_alive = !value.eq_ignore_ascii_case(b"close");
            (8, !keep_alive || value.eq_ignore_ascii_case(b"keep-alive"))
        } else if name.eq_ignore_ascii_case(b"content-encoding")
            // (httptools reads it as `connection`: its `close` ends the connection)
            || name.eq_ignore_ascii_case(b"proxy-connection")
        {
            (16, false)
        } else {
            (0, true)
        };
        let repeated = seen & bit != 0;
        seen |= bit;
        plain && !repeated
    })?;
    if !(200..600).contains(&status) || status == 204 || status == 304 {
        return None;
    }
    let body = match (length, chunked) {
        (Some(n), false) => Body::Length(n),
        (None, true) if events => Body::ChunkedEvents,
        _ => return None,
    };
    Some(Head {
        status,
        end,
        body,
        keep_alive,
    })
}

/// The header fields of a head [`read_head`] read, in order, as `(name, value)` pairs.
#[must_use]
pub fn fields(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    walk(buf, |name, value| {
        out.push((name, value));
        true
    })?;
    Some(out)
}

/// Reads the status line and each header line, telling `field` of each field (it answers
/// whether the head is still plain): the status and the head's end, or `None`. One pass over
/// the bytes: each line's end is the first byte its part does not allow, which must be a CRLF.
fn walk<'a>(
    buf: &'a [u8],
    mut field: impl FnMut(&'a [u8], &'a [u8]) -> bool,
) -> Option<(u16, usize)> {
    let rest = buf.strip_prefix(PREFIX)?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut at = PREFIX.len() + 3;
    if buf.get(at) == Some(&b' ') {
        at = scan(buf, at + 1, TEXT);
    }
    at = crlf(buf, at)?;
    loop {
        if let Some(end) = crlf(buf, at) {
            return Some((status, end)); // the blank line
        }
        let colon = scan(buf, at, TOKEN);
        if colon == at || buf.get(colon) != Some(&b':') {
            return None;
        }
        let mut start = colon + 1;
        while matches!(buf.get(start), Some(b' ' | b'\t')) {
            start += 1;
        }
        let end = scan(buf, start, TEXT);
        if !field(&buf[at..colon], &buf[start..end]) {
            return None;
        }
        at = crlf(buf, end)?;
    }
}

/// Where the bytes of `class` that start at `at` end.
fn scan(buf: &[u8], at: usize, class: u8) -> usize {
    buf.get(at..).map_or(at, |rest| {
        at + rest
            .iter()
            .position(|&b| CLASS[usize::from(b)] & class == 0)
            .unwrap_or(rest.len())
    })
}

/// After the CRLF at `at`, if there is one.
fn crlf(buf: &[u8], at: usize) -> Option<usize> {
    (buf.get(at..at + 2)? == b"\r\n").then_some(at + 2)
}

/// A byte of a reason phrase or a field value: a tab, a space, visible ASCII or obs-text.
const TEXT: u8 = 1;
/// A token character (RFC 9110 §5.6.2: `chunked::is_token`).
const TOKEN: u8 = 2;
/// Each byte's classes (a table: a head's every byte is looked up).
static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b: u8 = 0;
    loop {
        if b == b'\t' || b == b' ' || (b >= b'!' && b <= b'~') || b >= 0x80 {
            table[b as usize] |= TEXT;
        }
        if is_token(b) {
            table[b as usize] |= TOKEN;
        }
        if b == u8::MAX {
            return table;
        }
        b += 1;
    }
}

fn trim_end(value: &[u8]) -> &[u8] {
    let len = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &value[..len]
}

fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > LONGEST_LENGTH || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::{fields, read_head, Body, Head};

    fn head(text: &str) -> Option<Head> {
        read_head(text.as_bytes())
    }

    #[test]
    fn length_framed_answer_is_plain() {
        let text =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\r\n{}";
        let want = Head {
            status: 200,
            end: text.len() - 2,
            body: Body::Length(12),
            keep_alive: true,
        };
        assert_eq!(head(text), Some(want));
    }

    #[test]
    fn chunked_event_stream_is_plain_and_other_chunked_is_not() {
        let sse = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\n\r\n";
        assert_eq!(head(sse).map(|h| h.body), Some(Body::ChunkedEvents));
        let json = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n";
        assert_eq!(head(json), None);
    }

    #[test]
    fn head_not_whole_is_not_read() {
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"), None);
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r"), None);
        assert_eq!(head("HTTP/1.1 2"), None);
    }

    #[test]
    fn odd_heads_are_left_to_httptools() {
        for text in [
            "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "HTTP/1.1 200 OK\r\nA : b\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: b\x01c\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(head(text), None, "{text:?}");
        }
    }

    #[test]
    fn connection_close_is_not_kept_alive() {
        let text = "HTTP/1.1 503 Busy\r\nCONNECTION: Close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            head(text).map(|h| (h.status, h.keep_alive)),
            Some((503, false))
        );
    }

    #[test]
    fn fields_keep_names_and_trailing_spaces_as_sent() {
        let text = b"HTTP/1.1 200\r\nX-Odd-Case:  a b \t\r\nB:\r\nContent-Length: 0\r\n\r\nrest";
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"X-Odd-Case", b"a b \t"),
            (b"B", b""),
            (b"Content-Length", b"0"),
        ];
        assert_eq!(fields(text), Some(want));
    }
}
