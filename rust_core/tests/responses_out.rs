//! The reframer that emits OpenAI Responses API events: `openai_to_responses` (the gateway's
//! OpenAI chunks → `response.*` events). Split invariance, a well-formed event sequence (the
//! grammar the official SDK's stream accumulator enforces) whose text and arguments add up to
//! what went in, and no panic on random or mutated input.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::errors::CoreError;
use _core::reframe::{Options, Stream};
use proptest::prelude::*;
use serde_json::{json, Value};

const TO: &str = "openai_to_responses";
const RESPONSE_ID: &str = "resp_abc";
const FIELDS: &str = r#"{"instructions":"Be brief.","tools":[],"store":true}"#;

fn opts() -> Options {
    Options {
        model: common::MODEL.to_owned(),
        response_id: RESPONSE_ID.to_owned(),
        created: common::CREATED,
        include_usage: true,
        response_fields: FIELDS.to_owned(),
    }
}

fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<CoreError>) {
    let mut s = Stream::new(TO, &opts(), 1 << 20).unwrap();
    let mut out = Vec::new();
    for c in chunks {
        let mut part = Vec::new();
        if let Err(e) = s.feed(c, &mut part) {
            return (out, Some(e));
        }
        out.extend_from_slice(&part);
    }
    let err = s.finish(&mut out).err();
    (out, err)
}

fn whole(data: &[u8]) -> Vec<u8> {
    let (out, err) = run(&[data]);
    assert!(err.is_none(), "{err:?}");
    out
}

/// `(event type, data)` of each output event; panics unless every event is
/// `event: <type>\ndata: <one-line JSON>\n\n`.
fn parse_events(out: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            let data = data.strip_prefix("data: ").unwrap();
            assert!(!data.contains(['\n', '\r']), "{data:?}");
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// What a stream added up to.
struct Summary {
    texts: Vec<String>,
    calls: Vec<(String, String, String)>, // (call_id, name, arguments)
    last: Value,
}

/// Sequence numbers from 0, and `response.created` then `response.in_progress` first.
fn check_lifecycle(events: &[(String, Value)]) {
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], json!(name), "type matches the event name");
        assert_eq!(
            data["sequence_number"],
            json!(i),
            "sequence numbers count from 0"
        );
    }
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events[1].0, "response.in_progress");
    for (_, data) in &events[..2] {
        let r = &data["response"];
        assert_eq!(r["id"], json!(RESPONSE_ID));
        assert_eq!(r["object"], json!("response"));
        assert_eq!(r["status"], json!("in_progress"));
        assert_eq!(r["output"], json!([]));
        assert_eq!(r["usage"], Value::Null);
        assert_eq!(
            r["instructions"],
            json!("Be brief."),
            "the request's fields are echoed"
        );
    }
}

/// Checks the grammar (the lifecycle, items added then done in order, deltas only for the open
/// item, the final event last with every item) and returns what the deltas added up to.
fn check_sequence(events: &[(String, Value)]) -> Summary {
    check_lifecycle(events);
    let mut open: Option<(u64, String, Value)> = None;
    let mut done_items: Vec<Value> = Vec::new();
    let (mut texts, mut calls) = (Vec::new(), Vec::new());
    let mut current = String::new();
    for (i, (name, data)) in events.iter().enumerate().skip(2) {
        match name.as_str() {
            "response.output_item.added" => {
                assert!(open.is_none(), "an item starts only after the last is done");
                assert_eq!(data["output_index"], json!(done_items.len()));
                let item = data["item"].clone();
                assert_eq!(item["status"], json!("in_progress"));
                open = Some((
                    done_items.len() as u64,
                    item["id"].as_str().unwrap().to_owned(),
                    item,
                ));
                current.clear();
            }
            "response.content_part.added" => {
                let (index, id, item) = open.as_ref().unwrap();
                assert_eq!(item["type"], json!("message"));
                assert_eq!(
                    (&data["output_index"], &data["item_id"]),
                    (&json!(index), &json!(id))
                );
                assert_eq!(data["part"]["text"], json!(""));
            }
            "response.output_text.delta" | "response.function_call_arguments.delta" => {
                let (index, id, _) = open.as_ref().unwrap();
                assert_eq!(
                    (&data["output_index"], &data["item_id"]),
                    (&json!(index), &json!(id))
                );
                current.push_str(data["delta"].as_str().unwrap());
            }
            "response.output_text.done" | "response.content_part.done" => {
                let (index, id, _) = open.as_ref().unwrap();
                assert_eq!(
                    (&data["output_index"], &data["item_id"]),
                    (&json!(index), &json!(id))
                );
                let text = data
                    .get("text")
                    .unwrap_or_else(|| &data["part"]["text"])
                    .as_str()
                    .unwrap();
                assert_eq!(text, current, "the done text is the deltas' sum");
            }
            "response.function_call_arguments.done" => {
                let (index, id, _) = open.as_ref().unwrap();
                assert_eq!(
                    (&data["output_index"], &data["item_id"]),
                    (&json!(index), &json!(id))
                );
                assert_eq!(data["arguments"], json!(current));
            }
            "response.output_item.done" => {
                let (index, id, added) = open.take().unwrap();
                assert_eq!(data["output_index"], json!(index));
                let item = data["item"].clone();
                assert_eq!(item["id"], json!(id));
                assert_eq!(item["status"], json!("completed"));
                if item["type"] == "message" {
                    assert_eq!(item["content"][0]["text"], json!(current));
                    texts.push(current.clone());
                } else {
                    assert_eq!(item["call_id"], added["call_id"]);
                    assert_eq!(item["arguments"], json!(current));
                    calls.push((
                        item["call_id"].as_str().unwrap().to_owned(),
                        item["name"].as_str().unwrap().to_owned(),
                        current.clone(),
                    ));
                }
                done_items.push(item);
            }
            "response.completed" | "response.incomplete" => {
                assert!(open.is_none());
                assert_eq!(i, events.len() - 1, "the final event is last");
                assert_eq!(data["response"]["output"], json!(done_items));
            }
            other => panic!("unexpected event {other}"),
        }
    }
    let last = events.last().unwrap().1["response"].clone();
    Summary { texts, calls, last }
}

/// One OpenAI chunk event as the gateway's own reframers write them.
fn chunk(delta: &Value, finish: Option<&str>) -> String {
    let c = json!({"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
    format!("data: {c}\n\n")
}

/// Text pieces, then tool calls each in argument fragments, the finish chunk, the usage chunk
/// and `[DONE]`.
fn openai_stream(texts: &[String], calls: &[Vec<String>], finish: Option<&str>) -> Vec<u8> {
    let mut s = chunk(&json!({"role":"assistant","content":""}), None);
    for t in texts {
        s += &chunk(&json!({ "content": t }), None);
    }
    for (i, fragments) in calls.iter().enumerate() {
        s += &chunk(
            &json!({"tool_calls":[{"index":i,"id":format!("call_{i}"),"type":"function",
                "function":{"name":format!("f{i}"),"arguments":""}}]}),
            None,
        );
        for f in fragments {
            s += &chunk(
                &json!({"tool_calls":[{"index":i,"function":{"arguments":f}}]}),
                None,
            );
        }
    }
    let finish = finish.unwrap_or(if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    });
    s += &chunk(&json!({}), Some(finish));
    s += "data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":1,\
          \"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\
          \"completion_tokens\":7,\"total_tokens\":18,\
          \"prompt_tokens_details\":{\"cached_tokens\":4},\
          \"cache_creation_input_tokens\":2}}\n\n";
    s += "data: [DONE]\n\n";
    s.into_bytes()
}

#[test]
fn text_then_tool_calls_become_items_and_the_response_completes_with_usage() {
    let data = openai_stream(
        &["Hel".into(), "lo".into()],
        &[vec!["{\"a\":".into(), "1}".into()], vec!["{}".into()]],
        None,
    );
    let events = parse_events(&whole(&data));
    let summary = check_sequence(&events);
    assert_eq!(summary.texts, vec!["Hello"]);
    assert_eq!(
        summary.calls,
        vec![
            ("call_0".into(), "f0".into(), "{\"a\":1}".into()),
            ("call_1".into(), "f1".into(), "{}".into())
        ]
    );
    let last = &summary.last;
    assert_eq!(events.last().unwrap().0, "response.completed");
    assert_eq!(last["status"], json!("completed"));
    assert_eq!(last["model"], json!(common::MODEL));
    assert_eq!(last["created_at"], json!(common::CREATED));
    assert_eq!(last["store"], json!(true));
    assert_eq!(
        last["usage"],
        json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4,
               "cache_write_tokens": 2}, "output_tokens": 7,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18})
    );
    let ids: Vec<&str> = last["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["msg_abc_0", "fc_abc_1", "fc_abc_2"]);
}

#[test]
fn length_and_content_filter_end_as_incomplete() {
    for (finish, reason) in [
        ("length", "max_output_tokens"),
        ("content_filter", "content_filter"),
    ] {
        let data = openai_stream(&["x".into()], &[], Some(finish));
        let events = parse_events(&whole(&data));
        let summary = check_sequence(&events);
        assert_eq!(events.last().unwrap().0, "response.incomplete");
        assert_eq!(summary.last["status"], json!("incomplete"));
        assert_eq!(
            summary.last["incomplete_details"],
            json!({ "reason": reason })
        );
    }
}

#[test]
fn a_tool_call_without_an_id_gets_one_from_the_response_id() {
    let data = format!(
        "{}{}data: [DONE]\n\n",
        chunk(
            &json!({"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}),
            None
        ),
        chunk(&json!({}), Some("tool_calls"))
    );
    let summary = check_sequence(&parse_events(&whole(data.as_bytes())));
    assert_eq!(summary.calls[0].0, "call_abc_0");
}

#[test]
fn an_empty_stream_still_completes_with_no_output() {
    let summary = check_sequence(&parse_events(&whole(b"data: [DONE]\n\n")));
    assert_eq!(summary.last["output"], json!([]));
    assert_eq!(summary.last["usage"]["total_tokens"], json!(0));
}

#[test]
fn tool_call_resumed_after_its_item_closed_is_malformed() {
    let data = openai_stream(&[], &[vec!["{".into()], vec![]], None);
    let mut text = String::from_utf8(data).unwrap();
    let resumed = chunk(
        &json!({"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}),
        None,
    );
    let at = text.find("data: [DONE]").unwrap();
    text.insert_str(at, &resumed);
    let (_, err) = run(&[text.as_bytes()]);
    assert!(matches!(err, Some(CoreError::Sse(_))));
}

#[test]
fn openai_stream_without_done_is_cut_off() {
    let data = chunk(&json!({"content":"x"}), None);
    let (_, err) = run(&[data.as_bytes()]);
    assert!(matches!(err, Some(CoreError::StreamCutOff(_))));
}

#[test]
fn openai_error_event_is_reported_not_relayed() {
    let data = format!(
        "{}data: {{\"error\":{{\"type\":\"server_error\",\"message\":\"boom\"}}}}\n\n",
        chunk(&json!({"content":"x"}), None)
    );
    let mut s = Stream::new(TO, &opts(), 1 << 20).unwrap();
    let mut out = Vec::new();
    s.feed(data.as_bytes(), &mut out).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("boom"));
    assert_eq!(
        s.state().upstream_error,
        Some(("server_error".to_owned(), "boom".to_owned()))
    );
}

#[test]
fn response_fields_must_be_a_json_object() {
    let mut o = opts();
    o.response_fields = "[1]".to_owned();
    assert!(matches!(
        Stream::new(TO, &o, 1024),
        Err(CoreError::InvalidArgument(_))
    ));
}

/// OpenAI tool calls whose arguments hold every kind of escape (`\uXXXX` in either case,
/// surrogate pairs, controls, `\/`, raw UTF-8 and DEL), `null` arguments, an escaped name and
/// text after the calls: the events recorded at 861f655, before the fragments were copied as
/// they came (and the whole arguments kept escaped), whole and at every split.
#[test]
fn recorded_tool_call_escapes_give_their_recorded_events_at_every_split() {
    let input = common::read("openai_tool_escapes.sse");
    let expected = common::read("openai_tool_escapes.responses.expected");
    for cut in 0..=input.len() {
        let (out, err) = run(&[&input[..cut], &input[cut..]]);
        assert!(err.is_none(), "at {cut}: {err:?}");
        assert!(out == expected, "at {cut}");
    }
}

#[test]
fn recorded_openai_fixtures_translate_to_valid_sequences() {
    for name in ["openai_text_usage", "openai_tool_calls"] {
        let events = parse_events(&whole(&common::read(&format!("{name}.sse"))));
        let summary = check_sequence(&events);
        assert!(
            !summary.texts.is_empty() || !summary.calls.is_empty(),
            "{name}"
        );
        for (_, _, arguments) in summary.calls {
            serde_json::from_str::<Value>(&arguments).unwrap();
        }
    }
}

fn pieces() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-z \"\\\\\n{}:é😀]{0,12}", 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_split_gives_the_same_events_and_the_content_adds_up(
        texts in pieces(),
        calls in proptest::collection::vec(pieces(), 0..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let data = openai_stream(&texts, &calls, None);
        let expected = whole(&data);
        let (out, err) = run(&common::split(&data, &cuts));
        prop_assert!(err.is_none());
        prop_assert_eq!(&out, &expected);
        let summary = check_sequence(&parse_events(&out));
        let text = texts.concat();
        prop_assert_eq!(summary.texts, if text.is_empty() { vec![] } else { vec![text] });
        let args: Vec<String> = calls.iter().map(|c| c.concat()).collect();
        let got: Vec<String> = summary.calls.into_iter().map(|c| c.2).collect();
        prop_assert_eq!(got, args);
    }

    #[test]
    fn random_or_mutated_input_never_panics_and_emits_whole_events(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            (0usize..2, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8))
                .prop_map(|(which, edits)| {
                    let names = ["openai_text_usage.sse", "openai_tool_calls.sse"];
                    let mut d = common::read(names[which]);
                    for (pos, byte) in edits {
                        let i = pos % d.len();
                        d[i] = byte;
                    }
                    d
                }),
        ],
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut s = Stream::new(TO, &opts(), 512).unwrap();
        let mut all = Vec::new();
        for c in common::split(&data, &cuts) {
            let mut out = Vec::new();
            if s.feed(c, &mut out).is_err() {
                break;
            }
            prop_assert!(s.buffered_bytes() <= 512);
            all.extend_from_slice(&out);
        }
        let _ = s.finish(&mut all);
        // whole events only: each parses (the JSON may hold relayed lone surrogates: grammar only)
        let text = String::from_utf8_lossy(&all);
        prop_assert!(text.is_empty() || text.ends_with("\n\n"));
        for e in text.split("\n\n").filter(|e| !e.is_empty()) {
            let (name, data) = e.split_once('\n').unwrap();
            prop_assert!(name.starts_with("event: response."));
            let data = data.strip_prefix("data: ").unwrap();
            prop_assert!(!data.contains(['\n', '\r']));
            serde_json::from_str::<serde::de::IgnoredAny>(data).unwrap();
        }
    }
}
