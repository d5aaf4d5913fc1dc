//! SSE parser properties: split invariance, and agreement with a whole-input reference parser.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::sse::{Event, Flow, SseParser};
use proptest::prelude::*;

type Ev = (String, String, String);

fn parse_chunks(chunks: &[&[u8]], max: usize) -> Result<Vec<Ev>, String> {
    let mut p = SseParser::new(max);
    let mut got = Vec::new();
    let mut sink = |e: &Event<'_>| {
        got.push((e.event.to_string(), e.data.to_string(), e.id.to_string()));
        Ok(Flow::Continue)
    };
    for c in chunks {
        p.push(c, &mut sink).map_err(|e| e.to_string())?;
        assert!(p.buffered_bytes() <= max);
    }
    p.finish(&mut sink).map_err(|e| e.to_string())?;
    Ok(got)
}

/// A direct transcription of the WHATWG algorithm over the whole input (plus our EOF rule).
fn reference(input: &[u8]) -> Vec<Ev> {
    let text = String::from_utf8_lossy(input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input));
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut terminated_last = true;
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut cur));
                terminated_last = true;
            }
            '\n' => {
                lines.push(std::mem::take(&mut cur));
                terminated_last = true;
            }
            c => {
                cur.push(c);
                terminated_last = false;
            }
        }
    }
    let _ = terminated_last; // an unterminated last line is dropped
    lines.push(String::new()); // EOF rule: dispatch a pending event of complete lines
    let (mut event, mut data, mut id) = (String::new(), String::new(), String::new());
    let mut out = Vec::new();
    for line in lines {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let name = if event.is_empty() {
                    "message".to_owned()
                } else {
                    event.clone()
                };
                out.push((name, std::mem::take(&mut data), id.clone()));
            }
            event.clear();
            data.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line.as_str(), ""),
        };
        match name {
            "event" => value.clone_into(&mut event),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut id),
            _ => {}
        }
    }
    out
}

fn sse_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"data: {\"a\":1}".to_vec()),
        Just(b"data:x".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event: ping".to_vec()),
        Just(b"event:message_stop".to_vec()),
        Just(b"event: delta\ndata: {\"a\":2}\n\n".to_vec()), // whole, as Anthropic sends
        Just(b"event: e\ndata: y\r\n".to_vec()),
        Just(b"data: {\"b\":3}\r\n\r\n".to_vec()), // whole, as Google sends
        Just(b"data:\r\n\r\n".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"id: 42".to_vec()),
        Just(b"retry: 1000".to_vec()),
        Just(b"foo: bar".to_vec()),
        Just("data: é€😀".as_bytes().to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"\xff".to_vec()),
    ]
}

fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), proptest::collection::vec(sse_piece(), 0..40)).prop_map(|(bom, pieces)| {
        let mut v = if bom {
            b"\xEF\xBB\xBF".to_vec()
        } else {
            Vec::new()
        };
        for p in pieces {
            v.extend_from_slice(&p);
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_split_gives_the_same_events(
        input in sse_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let chunks = common::split(&input, &cuts);
        prop_assert_eq!(parse_chunks(&chunks, 1 << 20), parse_chunks(&[&input], 1 << 20));
    }

    #[test]
    fn events_agree_with_the_whole_input_reference(input in sse_stream()) {
        prop_assert_eq!(parse_chunks(&[&input], 1 << 20).unwrap(), reference(&input));
    }

    #[test]
    fn byte_by_byte_equals_whole(input in sse_stream()) {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(parse_chunks(&bytes, 1 << 20), parse_chunks(&[&input], 1 << 20));
    }
}
