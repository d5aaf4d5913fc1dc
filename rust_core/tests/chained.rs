//! A chained stream (`Stream::chained`: upstream → OpenAI chunks → a route's events in one
//! call) against the two streams it replaces, fed as the gateway fed them (each output of the
//! first as one input of the second, the opening chunk first): the same bytes, the same
//! failures and the same event count at every split point of every recorded upstream stream.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::errors::CoreError;
use _core::reframe::{Options, Stream, OPENING};

const FIELDS: &str = r#"{"instructions":"Be brief.","store":true}"#;

fn opts() -> Options {
    Options {
        response_fields: FIELDS.to_owned(),
        ..common::opts(true)
    }
}

/// What a client got: the bytes, the failure (kind only: the message may differ) and the
/// Responses events counted as sent.
#[derive(Debug, PartialEq)]
struct Seen {
    out: String,
    error: Option<&'static str>,
    events: Option<u64>,
}

fn kind_of(e: &CoreError) -> &'static str {
    match e {
        CoreError::Sse(_) | CoreError::EventStream(_) => "malformed",
        CoreError::StreamCutOff(_) => "cut off",
        CoreError::InvalidArgument(_) => "argument",
        CoreError::Translation(_) => "translation",
    }
}

/// The two streams as gateway/api/translated.py drives them: a failure of the first sends its
/// events before it (`before_error`) through the second; a failure of the second sends none
/// of that call's; the second's end only after the first's terminator.
fn two_streams(kind: &str, then: &str, chunks: &[&[u8]]) -> Seen {
    let mut first = Stream::new(kind, &opts(), 1 << 20).unwrap();
    let mut second = Stream::new(then, &opts(), 1 << 20).unwrap();
    let mut out = Vec::new();
    second.feed(OPENING, &mut out).unwrap();
    let pass = |mid: &[u8], out: &mut Vec<u8>, second: &mut Stream| {
        let mut part = Vec::new();
        second
            .feed(mid, &mut part)
            .map_err(|_| CoreError::Translation(String::new()))?;
        out.extend_from_slice(&part);
        Ok::<(), CoreError>(())
    };
    let seen = |out: Vec<u8>, error: Option<CoreError>, second: &Stream| Seen {
        out: String::from_utf8(out).unwrap(),
        error: error.as_ref().map(kind_of),
        events: second.events_written(),
    };
    for chunk in chunks.iter().map(|c| Some(*c)).chain([None]) {
        let mut mid = Vec::new();
        let first_result = match chunk {
            Some(c) => first.feed(c, &mut mid),
            None => first.finish(&mut mid),
        };
        if let Err(e) = pass(&mid, &mut out, &mut second) {
            return seen(out, Some(e), &second);
        }
        if let Err(e) = first_result {
            return seen(out, Some(e), &second);
        }
    }
    let mut part = Vec::new();
    let error = if first.state().done {
        second.finish(&mut part).err()
    } else {
        None
    };
    out.extend_from_slice(&part);
    seen(out, error, &second)
}

fn chained(kind: &str, then: &str, chunks: &[&[u8]]) -> Seen {
    let mut out = Vec::new();
    let mut s = Stream::chained(kind, then, &opts(), 1 << 20, &mut out).unwrap();
    for chunk in chunks.iter().map(|c| Some(*c)).chain([None]) {
        let mut part = Vec::new();
        let result = match chunk {
            Some(c) => s.feed(c, &mut part),
            None => s.finish(&mut part),
        };
        out.extend_from_slice(&part); // (after a failure: the events before it)
        if let Err(e) = result {
            return Seen {
                out: String::from_utf8(out).unwrap(),
                error: Some(kind_of(&e)),
                events: s.events_written(),
            };
        }
    }
    Seen {
        out: String::from_utf8(out).unwrap(),
        error: None,
        events: s.events_written(),
    }
}

#[test]
fn chained_streams_write_what_two_streams_wrote_at_every_split_point() {
    for then in ["openai_to_responses", "openai_to_anthropic"] {
        for (name, kind) in common::FIXTURES {
            let data = common::read(&format!("{name}.sse"));
            let whole = chained(kind, then, &[&data]);
            assert!(whole.out.len() > 200, "{name} → {then}: {whole:?}");
            for cut in 0..=data.len() {
                let chunks = [&data[..cut], &data[cut..]];
                let expected = two_streams(kind, then, &chunks);
                let got = chained(kind, then, &chunks);
                assert_eq!(got, expected, "{name} → {then}, split at {cut}");
                assert_eq!(got.out, whole.out, "{name} → {then}, split at {cut}");
            }
        }
    }
}

#[test]
fn a_responses_chain_counts_its_events_and_keeps_the_final_response() {
    let data = common::read("anthropic_text_tool_use.sse");
    let mut out = Vec::new();
    let mut s = Stream::chained(
        "anthropic",
        "openai_to_responses",
        &opts(),
        1 << 20,
        &mut out,
    )
    .unwrap();
    assert_eq!(s.events_written(), Some(2), "the opening events");
    assert!(s.final_response().is_none());
    s.feed(&data, &mut out).unwrap();
    s.finish(&mut out).unwrap();
    let text = std::str::from_utf8(&out).unwrap();
    assert_eq!(
        s.events_written(),
        Some(text.matches("\n\n").count() as u64)
    );
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let data = last.split_once("\ndata: ").unwrap().1;
    let event: serde_json::Value = serde_json::from_str(data).unwrap();
    let kept: serde_json::Value = serde_json::from_slice(s.final_response().unwrap()).unwrap();
    assert_eq!(event["response"], kept);
    assert!(
        s.state().done && s.state().usage.is_some(),
        "the first stage's state"
    );
}

#[test]
fn a_translation_failure_sends_none_of_its_call_s_events_and_stays() {
    // A tool call continued after text began: the Responses stage cannot place its arguments.
    let chunk = |delta: &str| {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n").into_bytes()
    };
    let opening = [
        chunk(r#"{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}"#),
        chunk(r#"{"content":"text"}"#),
    ]
    .concat();
    let bad = [
        chunk(r#"{"content":" more"}"#),
        chunk(r#"{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}"#),
    ]
    .concat();
    let mut out = Vec::new();
    let mut s =
        Stream::chained("openai", "openai_to_responses", &opts(), 1 << 20, &mut out).unwrap();
    s.feed(&opening, &mut out).unwrap();
    let before = s.events_written();
    let mut part = Vec::new();
    assert!(matches!(
        s.feed(&bad, &mut part),
        Err(CoreError::Translation(_))
    ));
    assert!(
        part.is_empty(),
        "the text delta before the failure is not sent"
    );
    assert_eq!(s.events_written(), before);
    assert!(matches!(
        s.feed(b"data: [DONE]\n\n", &mut part),
        Err(CoreError::Translation(_))
    ));
}

#[test]
fn only_an_upstream_kind_chains_into_a_reader_of_openai_chunks() {
    let mut out = Vec::new();
    for (kind, then) in [
        ("anthropic", "gemini"),
        ("openai_to_responses", "openai_to_anthropic"),
        ("anthropic_passthrough", "openai_to_responses"),
        ("nope", "openai_to_responses"),
    ] {
        assert!(Stream::chained(kind, then, &opts(), 1 << 20, &mut out).is_err());
    }
}
