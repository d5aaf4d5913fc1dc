//! Bounded fuzzing in `cargo test`: random bytes and mutated fixtures fed, in random chunks, to
//! the parser and every reframer. Nothing may panic, the buffer stays within `max_event_bytes`,
//! and whatever is emitted is whole one-line events.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::reframe::Stream;
use _core::sse::{Event, Flow, SseParser};
use proptest::prelude::*;

const MAX: usize = 512;
const KINDS: [&str; 3] = ["openai", "anthropic", "gemini"];

fn check_output(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(
        out.ends_with(b"\n\n"),
        "output must end at an event boundary"
    );
    for ev in out.split(|&b| b == b'\n').collect::<Vec<_>>().chunks(2) {
        if let [line, blank] = ev {
            assert!(
                line.starts_with(b"data: "),
                "{}",
                String::from_utf8_lossy(line)
            );
            assert!(blank.is_empty());
            assert!(!line.contains(&b'\r'));
            let body = &line[6..];
            if body != b"[DONE]" {
                // Grammar check only: relayed upstream JSON may hold numbers beyond f64 or lone
                // surrogate escapes, which are valid JSON text that `Value` refuses.
                serde_json::from_slice::<serde::de::IgnoredAny>(body).unwrap();
            }
        }
    }
}

fn feed_all(kind: &str, chunks: &[&[u8]]) {
    let mut s = Stream::new(kind, &common::opts(true), MAX).unwrap();
    for c in chunks {
        let mut out = Vec::new();
        let r = s.feed(c, &mut out);
        assert!(s.buffered_bytes() <= MAX);
        if r.is_err() {
            // Sticky: the same error again.
            assert_eq!(s.feed(b"data: x\n\n", &mut Vec::new()).err(), r.err());
            return;
        }
        check_output(&out);
    }
    let mut out = Vec::new();
    if s.finish(&mut out).is_ok() {
        check_output(&out);
    }
}

fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    (
        0..common::FIXTURES.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8),
    )
        .prop_map(|(which, edits)| {
            let mut data = common::read(&format!("{}.sse", common::FIXTURES[which].0));
            for (pos, byte, op) in edits {
                let i = pos % (data.len() + 1);
                match op {
                    0 => data.insert(i, byte),
                    1 if i < data.len() => {
                        data.remove(i);
                    }
                    _ if i < data.len() => data[i] = byte,
                    _ => {}
                }
            }
            data
        })
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        mutated_fixture()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn parser_never_panics_and_stays_bounded(
        data in input(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut p = SseParser::new(MAX);
        let mut sink = |e: &Event<'_>| {
            assert!(e.data.len() <= MAX);
            Ok(Flow::Continue)
        };
        for c in common::split(&data, &cuts) {
            if p.push(c, &mut sink).is_err() {
                break;
            }
            prop_assert!(p.buffered_bytes() <= MAX);
        }
        let _ = p.finish(&mut sink);
    }

    #[test]
    fn reframers_never_panic_and_emit_whole_events(
        data in input(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let chunks = common::split(&data, &cuts);
        for kind in KINDS {
            feed_all(kind, &chunks);
        }
    }
}
