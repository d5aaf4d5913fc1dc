//! Reframers against the recorded fixtures: golden output, split invariance, extracted state.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::errors::CoreError;
use common::{events, read, run, split, stream, FIXTURES};
use proptest::prelude::*;

#[test]
fn every_fixture_matches_its_golden_output() {
    for (name, kind) in FIXTURES {
        let input = read(&format!("{name}.sse"));
        let expected = read(&format!("{name}.expected"));
        let (out, err) = run(kind, &[&input], true);
        assert_eq!(err, None, "{name}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(expected).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn byte_by_byte_feeding_matches_whole_feeding() {
    for (name, kind) in FIXTURES {
        let input = read(&format!("{name}.sse"));
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(kind, &bytes, true),
            run(kind, &[&input], true),
            "{name}"
        );
    }
}

#[test]
fn every_output_event_is_one_line_of_compact_json_or_done() {
    for (name, kind) in FIXTURES {
        let (out, _) = run(kind, &[&read(&format!("{name}.sse"))], true);
        for ev in events(&out) {
            let body = ev.strip_prefix("data: ").expect("data: prefix");
            assert!(!body.contains(['\n', '\r']), "{name}: {ev}");
            if body != "[DONE]" {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["object"], "chat.completion.chunk");
                assert_eq!(v["model"], common::MODEL);
                assert_eq!(
                    serde_json::to_string(&v).unwrap().len(),
                    body.len(),
                    "compact"
                );
            }
        }
    }
}

#[test]
fn without_include_usage_only_the_usage_chunk_is_missing() {
    for (name, kind) in FIXTURES {
        let input = read(&format!("{name}.sse"));
        let with = events(&run(kind, &[&input], true).0);
        let without = events(&run(kind, &[&input], false).0);
        let filtered: Vec<String> = with
            .iter()
            .filter(|e| !e.contains("\"choices\":[],\"usage\":{"))
            .cloned()
            .collect();
        assert_eq!(without, filtered, "{name}");
        assert!(with.len() - filtered.len() <= 1, "{name}");
    }
}

#[test]
fn a_stream_cut_before_its_terminator_is_an_error() {
    for (name, kind) in FIXTURES {
        let input = read(&format!("{name}.sse"));
        let (_, err) = run(kind, &[&input[..input.len() / 2]], true);
        assert!(
            matches!(err, Some(CoreError::StreamCutOff(_))),
            "{name}: {err:?}"
        );
    }
}

/// `(fixture, kind, usage (prompt, completion, total, cached), finish reason, chars, done)`.
type Expected = (
    &'static str,
    &'static str,
    Option<(u64, u64, u64, u64)>,
    Option<&'static str>,
    u64,
    bool,
);

#[test]
fn extracted_state_matches_the_fixtures() {
    let cases: &[Expected] = &[
        (
            "openai_text_usage",
            "openai",
            Some((14, 12, 26, 0)),
            Some("stop"),
            62,
            true,
        ),
        (
            "openai_tool_calls",
            "openai",
            None,
            Some("tool_calls"),
            39,
            true,
        ),
        (
            "anthropic_text_tool_use",
            "anthropic",
            Some((2620, 89, 2709, 2048)),
            Some("tool_calls"),
            107,
            true,
        ),
        (
            "anthropic_error",
            "anthropic",
            Some((12, 1, 13, 0)),
            None,
            5,
            false,
        ),
        (
            "gemini_text_function_call",
            "gemini",
            Some((57, 71, 128, 32)),
            Some("tool_calls"),
            100,
            true,
        ),
        (
            "gemini_safety",
            "gemini",
            Some((9, 3, 12, 0)),
            Some("content_filter"),
            11,
            true,
        ),
    ];
    for &(name, kind, usage, finish, chars, done) in cases {
        let mut s = stream(kind, false);
        let mut out = Vec::new();
        s.feed(&read(&format!("{name}.sse")), &mut out).unwrap();
        s.finish(&mut out).unwrap();
        let st = s.state();
        let got = st.usage.map(|u| {
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
            )
        });
        assert_eq!(got, usage, "{name}");
        assert_eq!(st.finish_reason.as_deref(), finish, "{name}");
        assert_eq!(st.content_chars, chars, "{name}");
        assert_eq!(st.done, done, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_split_of_any_fixture_gives_the_same_output(
        which in 0..FIXTURES.len(),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
        include_usage in any::<bool>(),
    ) {
        let (name, kind) = FIXTURES[which];
        let input = read(&format!("{name}.sse"));
        let chunks = split(&input, &cuts);
        prop_assert_eq!(run(kind, &chunks, include_usage), run(kind, &[&input], include_usage));
    }
}
