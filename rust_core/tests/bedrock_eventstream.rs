//! Bedrock `ConverseStream`: AWS event stream framing decoded and reframed to OpenAI chunks in one
//! pass. Split invariance at every boundary, random splits, single-bit corruption anywhere →
//! a typed `EventStream` error, exceptions → `upstream_error`, and tool input fragments that add
//! up to the JSON that went in.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use _core::errors::CoreError;
use _core::eventstream::encode_message;
use _core::reframe::{Options, Stream};
use proptest::prelude::*;
use serde_json::{json, Value};

fn opts(include_usage: bool) -> Options {
    Options {
        model: "bedrock/claude".to_owned(),
        response_id: "chatcmpl-test".to_owned(),
        created: 1_700_000_000,
        include_usage,
        response_fields: "{}".to_owned(),
    }
}

fn event(name: &str, payload: &Value) -> Vec<u8> {
    encode_message(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(name: &str, message: &str) -> Vec<u8> {
    encode_message(
        &[
            (":exception-type", name),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

/// A whole `ConverseStream` answer: text, then a tool call whose input arrives in fragments.
fn transcript() -> Vec<u8> {
    let mut wire = Vec::new();
    wire.extend(event(
        "messageStart",
        &json!({"role": "assistant", "p": "abcd"}),
    ));
    wire.extend(event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": "ab"}),
    ));
    wire.extend(event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": " wörld \"✓\"\n"}}),
    ));
    wire.extend(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
    wire.extend(event(
        "contentBlockStart",
        &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
    ));
    for fragment in ["{\"ci", "ty\": \"Pa", "ris\"}"] {
        wire.extend(event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": fragment}}}),
        ));
    }
    wire.extend(event("contentBlockStop", &json!({"contentBlockIndex": 1})));
    wire.extend(event("messageStop", &json!({"stopReason": "tool_use"})));
    wire.extend(event(
        "metadata",
        &json!({"usage": {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18}, "metrics": {"latencyMs": 5}}),
    ));
    wire
}

fn run(pieces: &[&[u8]], include_usage: bool) -> Result<(Vec<u8>, Stream), CoreError> {
    let mut stream = Stream::new("bedrock", &opts(include_usage), 1 << 20).unwrap();
    let mut all = Vec::new();
    for piece in pieces {
        let mut out = Vec::new();
        stream.feed(piece, &mut out)?;
        all.extend(out);
    }
    let mut out = Vec::new();
    stream.finish(&mut out)?;
    all.extend(out);
    Ok((all, stream))
}

fn chunks(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[test]
fn a_converse_stream_becomes_openai_chunks_with_text_tool_call_finish_and_usage() {
    let wire = transcript();
    let (out, stream) = run(&[&wire], true).unwrap();
    let chunks = chunks(&out);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello wörld \"✓\"\n");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "tooluse_1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    assert!(chunks.iter().all(|c| c["model"] == "bedrock/claude"));
    assert!(stream.state().done);
    assert_eq!(stream.state().usage.unwrap().prompt_tokens, 11);
}

#[test]
fn every_split_point_gives_the_same_output() {
    let wire = transcript();
    let (whole, _) = run(&[&wire], true).unwrap();
    for cut in 0..=wire.len() {
        let (split, _) = run(&[&wire[..cut], &wire[cut..]], true).unwrap();
        assert_eq!(split, whole, "split at {cut}");
    }
}

#[test]
fn the_usage_chunk_is_left_out_unless_asked_for() {
    let wire = transcript();
    let (out, stream) = run(&[&wire], false).unwrap();
    assert!(chunks(&out).iter().all(|c| c.get("usage").is_none()));
    assert_eq!(stream.state().usage.unwrap().completion_tokens, 7);
}

#[test]
fn an_exception_inside_the_stream_is_reported_as_an_upstream_error() {
    let mut wire = event("messageStart", &json!({"role": "assistant"}));
    wire.extend(exception(
        "throttlingException",
        "Too many tokens, please wait.",
    ));
    wire.extend(event("messageStop", &json!({"stopReason": "end_turn"})));
    let mut stream = Stream::new("bedrock", &opts(true), 1 << 20).unwrap();
    let mut out = Vec::new();
    stream.feed(&wire, &mut out).unwrap();
    assert_eq!(
        stream.state().upstream_error,
        Some((
            "throttlingException".to_owned(),
            "Too many tokens, please wait.".to_owned()
        ))
    );
    assert!(!String::from_utf8(out)
        .unwrap()
        .contains("finish_reason\":\"stop"));
}

#[test]
fn a_stream_cut_before_message_stop_is_a_cut_off_error() {
    let wire = transcript();
    let cut = wire.len() / 2;
    assert!(matches!(
        run(&[&wire[..cut]], true),
        Err(CoreError::StreamCutOff(_))
    ));
}

#[test]
fn eof_after_message_stop_without_metadata_completes_the_stream() {
    let mut wire = event("messageStart", &json!({"role": "assistant"}));
    wire.extend(event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "hi"}}),
    ));
    wire.extend(event("messageStop", &json!({"stopReason": "max_tokens"})));
    let (out, _) = run(&[&wire], false).unwrap();
    let chunks = chunks(&out);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_splits_give_the_same_output(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
        let wire = transcript();
        let (whole, _) = run(&[&wire], true).unwrap();
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&wire[last..p]);
            last = p;
        }
        pieces.push(&wire[last..]);
        let (split, _) = run(&pieces, true).unwrap();
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn any_flipped_bit_is_a_typed_event_stream_error(at in 0usize..100_000, bit in 0u8..8, cut in 0usize..100_000) {
        let mut wire = transcript();
        let at = at % wire.len();
        wire[at] ^= 1 << bit;
        let cut = cut % (wire.len() + 1);
        let result = run(&[&wire[..cut], &wire[cut..]], true);
        prop_assert!(matches!(result, Err(CoreError::EventStream(_))), "{:?}", result.err());
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = run(&[&data], true);
    }
}
