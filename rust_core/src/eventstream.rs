//! Incremental decoder of AWS event stream framing (`application/vnd.amazon.eventstream`), the
//! binary framing of Bedrock's `ConverseStream`.
//!
//! One message on the wire (all integers big-endian):
//!
//! ```text
//! total_length u32 | headers_length u32 | prelude_crc u32      (the 12-byte prelude)
//! headers (headers_length bytes) | payload | message_crc u32
//! ```
//!
//! `prelude_crc` is the CRC-32 (IEEE) of the first 8 bytes, `message_crc` the CRC-32 of every
//! byte before it. A header is `name_len u8 | name | type u8 | value`, the value's layout set by
//! its type (0 true, 1 false, 2 i8, 3 i16, 4 i32, 5 i64, 6 bytes and 7 string with a u16
//! length, 8 timestamp i64 ms, 9 uuid 16 bytes). Input may be split anywhere: only the tail
//! of an incomplete message is buffered, bounded by `max_message_bytes`.

use crate::errors::CoreError;
use crate::sse::Flow;

const PRELUDE_LEN: usize = 12;
/// Prelude plus the trailing message CRC.
const OVERHEAD: usize = PRELUDE_LEN + 4;

/// A header value (only strings matter to the reframer; the rest is decoded to be skipped
/// correctly and kept for completeness). A string's bytes are checked as UTF-8 when it is read
/// ([`Message::header_str`]), not when decoded: a message carries three string headers, the
/// reframer reads one or two, and the check of each short string was most of the decoder's
/// cost (a tenth of a tool-call stream's: docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Types 0 and 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(&'a [u8]),
    /// Type 7: its bytes, UTF-8 not yet checked.
    Str(&'a [u8]),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// One decoded message, borrowing the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The headers in wire order (names as bytes: compared, never returned).
    pub headers: Vec<(&'a [u8], HeaderValue<'a>)>,
    /// The payload bytes (JSON for Bedrock).
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// The first string header of that name; its value not UTF-8 is a malformed header.
    pub fn header_str(&self, name: &str) -> Result<Option<&str>, CoreError> {
        let found = self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::Str(raw) if *n == name.as_bytes() => Some(*raw),
            _ => None,
        });
        found.map_or(Ok(None), |raw| {
            std::str::from_utf8(raw)
                .map(Some)
                .map_err(|_| malformed("string is not UTF-8"))
        })
    }
}

/// Incremental decoder: feed chunks with [`EventStreamDecoder::push`], then call
/// [`EventStreamDecoder::finish`] at EOF.
#[derive(Debug)]
pub struct EventStreamDecoder {
    buf: Vec<u8>,
    max_message_bytes: usize,
}

impl EventStreamDecoder {
    /// A decoder refusing messages longer than `max_message_bytes` (prelude and CRC included).
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_message_bytes: max_message_bytes.max(OVERHEAD),
        }
    }

    /// Bytes held of an incomplete message.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Decodes every complete message of `input` (after what was buffered) into `sink`.
    pub fn push<F>(&mut self, input: &[u8], sink: &mut F) -> Result<Flow, CoreError>
    where
        F: FnMut(&Message<'_>) -> Result<Flow, CoreError>,
    {
        let max = self.max_message_bytes;
        if self.buf.is_empty() {
            // The common case: decode straight from the chunk, keep only its incomplete tail.
            let (used, flow) = decode_all(input, max, sink)?;
            if flow == Flow::Continue {
                self.buf.extend_from_slice(&input[used..]);
            }
            return Ok(flow);
        }
        self.buf.extend_from_slice(input);
        let (used, flow) = decode_all(&self.buf, max, sink)?;
        if flow == Flow::Stop {
            self.buf.clear();
        } else {
            self.buf.drain(..used);
        }
        Ok(flow)
    }

    /// EOF: an incomplete message left over means the stream was cut off.
    pub fn finish(&mut self) -> Result<Flow, CoreError> {
        if self.buf.is_empty() {
            Ok(Flow::Continue)
        } else {
            let held = self.buf.len();
            self.buf.clear();
            Err(CoreError::StreamCutOff(format!(
                "event stream ended inside a message ({held} bytes of it received)"
            )))
        }
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

/// Decodes the complete messages at the start of `data`: (bytes used, flow).
fn decode_all<F>(data: &[u8], max: usize, sink: &mut F) -> Result<(usize, Flow), CoreError>
where
    F: FnMut(&Message<'_>) -> Result<Flow, CoreError>,
{
    let mut pos = 0;
    while data.len() - pos >= PRELUDE_LEN {
        let rest = &data[pos..];
        let total = be_u32(rest, 0) as usize;
        let headers_len = be_u32(rest, 4) as usize;
        if crc32fast::hash(&rest[..8]) != be_u32(rest, 8) {
            return Err(CoreError::EventStream(
                "event stream prelude CRC mismatch (corrupted stream)".to_owned(),
            ));
        }
        if total < OVERHEAD || headers_len > total - OVERHEAD {
            return Err(CoreError::EventStream(format!(
                "event stream message with impossible lengths (total {total}, headers {headers_len})"
            )));
        }
        if total > max {
            return Err(CoreError::EventStream(format!(
                "event stream message of {total} bytes exceeds the limit of {max}"
            )));
        }
        if rest.len() < total {
            break;
        }
        let message = &rest[..total];
        if crc32fast::hash(&message[..total - 4]) != be_u32(message, total - 4) {
            return Err(CoreError::EventStream(
                "event stream message CRC mismatch (corrupted stream)".to_owned(),
            ));
        }
        let headers = parse_headers(&message[PRELUDE_LEN..PRELUDE_LEN + headers_len])?;
        let payload = &message[PRELUDE_LEN + headers_len..total - 4];
        pos += total;
        if sink(&Message { headers, payload })? == Flow::Stop {
            return Ok((pos, Flow::Stop));
        }
    }
    Ok((pos, Flow::Continue))
}

fn malformed(what: &str) -> CoreError {
    CoreError::EventStream(format!("malformed event stream header: {what}"))
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], CoreError> {
    let end = at.checked_add(n).filter(|e| *e <= bytes.len());
    let Some(end) = end else {
        return Err(malformed("truncated"));
    };
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

fn fixed<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N], CoreError> {
    let mut out = [0u8; N];
    out.copy_from_slice(take(bytes, at, N)?);
    Ok(out)
}

fn parse_headers(bytes: &[u8]) -> Result<Vec<(&[u8], HeaderValue<'_>)>, CoreError> {
    let mut headers = Vec::with_capacity(4);
    let mut at = 0;
    while at < bytes.len() {
        let name_len = usize::from(take(bytes, &mut at, 1)?[0]);
        let name = take(bytes, &mut at, name_len)?;
        let kind = take(bytes, &mut at, 1)?[0];
        let value = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(fixed::<1>(bytes, &mut at)?)),
            3 => HeaderValue::Short(i16::from_be_bytes(fixed::<2>(bytes, &mut at)?)),
            4 => HeaderValue::Int(i32::from_be_bytes(fixed::<4>(bytes, &mut at)?)),
            5 => HeaderValue::Long(i64::from_be_bytes(fixed::<8>(bytes, &mut at)?)),
            6 | 7 => {
                let len = usize::from(u16::from_be_bytes(fixed::<2>(bytes, &mut at)?));
                let raw = take(bytes, &mut at, len)?;
                if kind == 6 {
                    HeaderValue::Bytes(raw)
                } else {
                    HeaderValue::Str(raw)
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(fixed::<8>(bytes, &mut at)?)),
            9 => HeaderValue::Uuid(fixed::<16>(bytes, &mut at)?),
            other => return Err(malformed(&format!("unknown value type {other}"))),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// Encodes one message (string headers only): the inverse of the decoder, for tests, fakes
/// and benchmarks.
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(7);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = OVERHEAD + head.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(decoder: &mut EventStreamDecoder, input: &[u8]) -> Result<Vec<Vec<u8>>, CoreError> {
        let mut payloads = Vec::new();
        decoder.push(input, &mut |m: &Message<'_>| {
            payloads.push(m.payload.to_vec());
            Ok(Flow::Continue)
        })?;
        Ok(payloads)
    }

    #[test]
    fn a_message_split_in_the_prelude_is_decoded_once_whole() {
        let wire = encode_message(
            &[(":event-type", "messageStart")],
            b"{\"role\":\"assistant\"}",
        );
        let mut decoder = EventStreamDecoder::new(1 << 20);
        assert!(collect(&mut decoder, &wire[..5])
            .unwrap_or_default()
            .is_empty());
        let got = collect(&mut decoder, &wire[5..]);
        assert_eq!(got, Ok(vec![b"{\"role\":\"assistant\"}".to_vec()]));
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn every_header_type_is_decoded() {
        let mut head = vec![1, b'a', 0, 1, b'b', 1, 1, b'c', 2, 0xff, 1, b'd', 3, 0, 2];
        head.extend_from_slice(&[1, b'e', 4, 0, 0, 0, 3, 1, b'f', 5]);
        head.extend_from_slice(&4i64.to_be_bytes());
        head.extend_from_slice(&[1, b'g', 6, 0, 2, 9, 8, 1, b'h', 8]);
        head.extend_from_slice(&5i64.to_be_bytes());
        head.extend_from_slice(&[1, b'i', 9]);
        head.extend_from_slice(&[7u8; 16]);
        let headers = parse_headers(&head);
        assert_eq!(
            headers,
            Ok(vec![
                (&b"a"[..], HeaderValue::Bool(true)),
                (b"b", HeaderValue::Bool(false)),
                (b"c", HeaderValue::Byte(-1)),
                (b"d", HeaderValue::Short(2)),
                (b"e", HeaderValue::Int(3)),
                (b"f", HeaderValue::Long(4)),
                (b"g", HeaderValue::Bytes(&[9, 8])),
                (b"h", HeaderValue::Timestamp(5)),
                (b"i", HeaderValue::Uuid([7; 16])),
            ])
        );
    }

    #[test]
    fn a_string_header_read_is_checked_as_utf8() {
        let head = [1, b'a', 7, 0, 2, 0xc3, 0x28, 1, b'b', 7, 0, 2, b'o', b'k'];
        let message = Message {
            headers: parse_headers(&head).unwrap_or_default(),
            payload: b"",
        };
        assert_eq!(message.header_str("b"), Ok(Some("ok")));
        assert_eq!(message.header_str("c"), Ok(None));
        assert!(matches!(
            message.header_str("a"),
            Err(CoreError::EventStream(m)) if m.contains("not UTF-8")
        ));
    }

    #[test]
    fn a_corrupted_message_crc_is_an_event_stream_error() {
        let mut wire = encode_message(&[(":event-type", "x")], b"{}");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let mut decoder = EventStreamDecoder::new(1 << 20);
        assert!(matches!(
            collect(&mut decoder, &wire),
            Err(CoreError::EventStream(_))
        ));
    }

    #[test]
    fn eof_inside_a_message_is_a_cut_off_stream() {
        let wire = encode_message(&[(":event-type", "x")], b"{}");
        let mut decoder = EventStreamDecoder::new(1 << 20);
        let _ = collect(&mut decoder, &wire[..wire.len() - 1]);
        assert!(matches!(decoder.finish(), Err(CoreError::StreamCutOff(_))));
    }

    #[test]
    fn a_message_above_the_limit_is_refused_from_its_prelude() {
        let wire = encode_message(&[], &[b'x'; 100]);
        let mut decoder = EventStreamDecoder::new(64);
        assert!(matches!(
            collect(&mut decoder, &wire[..12]),
            Err(CoreError::EventStream(_))
        ));
    }
}
