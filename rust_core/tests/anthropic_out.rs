//! The reframers that emit Anthropic Messages events: `openai_to_anthropic` (the gateway's
//! OpenAI chunks → Anthropic events) and `anthropic_passthrough` (Anthropic events relayed).
//! Split invariance, a well-formed event sequence whose text and tool input add up to what
//! went in, and no panic on random or mutated input.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::reframe::Stream;
use proptest::prelude::*;
use serde_json::{json, Value};

const TO: &str = "openai_to_anthropic";
const PASS: &str = "anthropic_passthrough";

/// `(event name, data)` of each output event; panics unless every event is
/// `event: <name>\ndata: <one-line JSON>\n\n`.
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

/// Checks the Messages stream grammar; returns (text, tool inputs as JSON text, stop reason,
/// usage of `message_delta`).
/// Grammar only (relayed upstream JSON may hold lone surrogate escapes, which `Value` refuses).
fn check_whole_events(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    for e in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = e.split_once('\n').unwrap();
        assert!(name.starts_with("event: "), "{name:?}");
        let data = data.strip_prefix("data: ").unwrap();
        assert!(!data.contains(['\n', '\r']), "{data:?}");
        serde_json::from_str::<serde::de::IgnoredAny>(data).unwrap();
    }
}

fn check_sequence(events: &[(String, Value)]) -> (String, Vec<String>, String, Value) {
    assert_eq!(events[0].0, "message_start");
    assert_eq!(events[0].1["message"]["content"], json!([]));
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    let (mut text, mut tools) = (String::new(), Vec::<String>::new());
    let mut stop = None;
    for (i, (name, data)) in events.iter().enumerate().skip(1) {
        assert_eq!(data["type"], json!(name), "type matches the event name");
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "a block starts only after the last stopped");
                assert_eq!(data["index"], json!(next));
                open = Some(next);
                next += 1;
                if data["content_block"]["type"] == "tool_use" {
                    tools.push(String::new());
                }
            }
            "content_block_delta" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                match data["delta"]["type"].as_str().unwrap() {
                    "text_delta" => text.push_str(data["delta"]["text"].as_str().unwrap()),
                    "input_json_delta" => tools
                        .last_mut()
                        .unwrap()
                        .push_str(data["delta"]["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none());
                assert_eq!(
                    events.len(),
                    i + 2,
                    "message_delta is followed by message_stop only"
                );
                stop = Some(data.clone());
            }
            "message_stop" => assert_eq!(i, events.len() - 1),
            other => panic!("unexpected event {other}"),
        }
    }
    let stop = stop.expect("message_delta");
    (
        text,
        tools,
        stop["delta"]["stop_reason"].as_str().unwrap().to_owned(),
        stop["usage"].clone(),
    )
}

/// One OpenAI chunk event as the gateway's own reframers write them.
fn chunk(delta: &Value, finish: Option<&str>) -> String {
    let c = json!({"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
    format!("data: {c}\n\n")
}

/// An OpenAI stream: text pieces, then tool calls each in argument fragments, then the finish
/// chunk, the usage chunk and `[DONE]`.
fn openai_stream(texts: &[String], calls: &[Vec<String>]) -> Vec<u8> {
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
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    s += &chunk(&json!({}), Some(finish));
    s += "data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":1,\
          \"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\
          \"completion_tokens\":7,\"total_tokens\":18}}\n\n";
    s += "data: [DONE]\n\n";
    s.into_bytes()
}

fn whole(kind: &str, data: &[u8]) -> Vec<u8> {
    let (out, err) = common::run(kind, &[data], true);
    assert!(err.is_none(), "{err:?}");
    out
}

#[test]
fn text_and_tool_calls_become_blocks_with_tool_use_stop_reason() {
    let data = openai_stream(
        &["Hel".into(), "lo".into()],
        &[vec!["{\"a\":".into(), "1}".into()], vec!["{}".into()]],
    );
    let events = parse_events(&whole(TO, &data));
    assert_eq!(events[0].1["message"]["model"], json!(common::MODEL));
    assert_eq!(events[0].1["message"]["id"], json!(common::RESPONSE_ID));
    let (text, tools, stop, usage) = check_sequence(&events);
    assert_eq!(text, "Hello");
    assert_eq!(tools, vec!["{\"a\":1}", "{}"]);
    assert_eq!(stop, "tool_use");
    assert_eq!(usage, json!({"input_tokens": 11, "output_tokens": 7}));
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect();
    assert_eq!(
        starts[1],
        &json!({"type":"tool_use","id":"call_0","name":"f0","input":{}})
    );
}

#[test]
fn finish_reasons_map_to_stop_reasons() {
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        let data = format!(
            "{}{}data: [DONE]\n\n",
            chunk(&json!({"content":"x"}), None),
            chunk(&json!({}), Some(finish))
        );
        let (_, _, got, _) = check_sequence(&parse_events(&whole(TO, data.as_bytes())));
        assert_eq!(got, stop, "{finish}");
    }
}

#[test]
fn cached_prompt_tokens_are_reported_as_cache_reads() {
    let data = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":3,\
                \"prompt_tokens_details\":{\"cached_tokens\":60}}}\n\ndata: [DONE]\n\n";
    let (_, _, _, usage) = check_sequence(&parse_events(&whole(TO, data.as_bytes())));
    assert_eq!(
        usage,
        json!({"input_tokens": 40, "cache_read_input_tokens": 60, "output_tokens": 3})
    );
}

/// An OpenAI stream whose tool calls' fragments arrive interleaved: `schedule` picks, step by
/// step, which call sends its next fragment (a call's first chunk carries its id and name);
/// `text` arrives after the first tool chunk.
fn interleaved_stream(calls: &[Vec<String>], schedule: &[usize], text: &str) -> Vec<u8> {
    let mut s = chunk(&json!({"role":"assistant","content":""}), None);
    let mut next = vec![0usize; calls.len()];
    let mut started = vec![false; calls.len()];
    let mut order: Vec<usize> = schedule.iter().map(|w| w % calls.len().max(1)).collect();
    for (i, c) in calls.iter().enumerate() {
        order.extend(std::iter::repeat_n(i, c.len() + 1)); // whatever the schedule left
    }
    let mut text_sent = false;
    for i in order {
        if calls.is_empty() {
            break;
        }
        if !started[i] {
            started[i] = true;
            s += &chunk(
                &json!({"tool_calls":[{"index":i,"id":format!("call_{i}"),"type":"function",
                    "function":{"name":format!("f{i}"),"arguments":""}}]}),
                None,
            );
            if !text_sent && !text.is_empty() {
                text_sent = true;
                s += &chunk(&json!({ "content": text }), None);
            }
        } else if next[i] < calls[i].len() {
            s += &chunk(
                &json!({"tool_calls":[{"index":i,"function":{"arguments":calls[i][next[i]]}}]}),
                None,
            );
            next[i] += 1;
        }
    }
    s += &chunk(&json!({}), Some("tool_calls"));
    s += "data: [DONE]\n\n";
    s.into_bytes()
}

#[test]
fn interleaved_parallel_tool_calls_come_out_as_whole_sequential_blocks() {
    let calls = vec![
        vec!["{\"city\":".into(), "\"Paris\"}".into()],
        vec!["{\"city\":".into(), "\"Rome\"".into(), "}".into()],
    ];
    // 0 start, 1 start, 0, 1, 0, 1, 1: every fragment of 0 and 1 alternates
    let data = interleaved_stream(&calls, &[0, 1, 0, 1, 0, 1, 1], "");
    let events = parse_events(&whole(TO, &data));
    let (text, tools, stop, _) = check_sequence(&events);
    assert_eq!(text, "");
    assert_eq!(tools, vec!["{\"city\":\"Paris\"}", "{\"city\":\"Rome\"}"]);
    assert_eq!(stop, "tool_use");
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect();
    assert_eq!(
        starts,
        vec![
            &json!({"type":"tool_use","id":"call_0","name":"f0","input":{}}),
            &json!({"type":"tool_use","id":"call_1","name":"f1","input":{}}),
        ]
    );
}

#[test]
fn first_tool_call_streams_at_once_and_later_ones_wait_for_the_finish() {
    let calls = vec![vec!["{\"a\":".into(), "1}".into()], vec!["{}".into()]];
    let data = interleaved_stream(&calls, &[0, 1, 0, 1, 0], "");
    let text = String::from_utf8(data).unwrap();
    let finish_at = text.find("\"finish_reason\":\"tool_calls\"").unwrap();
    let before_finish = &text.as_bytes()[..text[..finish_at].rfind("data: ").unwrap()];
    let mut s = common::stream(TO, true);
    let mut out = Vec::new();
    s.feed(before_finish, &mut out).unwrap();
    let early = parse_events(&out);
    let deltas: Vec<&Value> = early
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| &d["delta"]["partial_json"])
        .collect();
    assert_eq!(deltas, vec![&json!("{\"a\":"), &json!("1}")]);
    assert!(
        early
            .iter()
            .all(|(n, d)| n != "content_block_start" || d["index"] == json!(0)),
        "call 1 is held back while call 0's block is open"
    );
}

#[test]
fn text_arriving_while_a_tool_call_is_open_becomes_a_block_after_it() {
    let calls = vec![vec!["{\"q\":".into(), "2}".into()]];
    let data = interleaved_stream(&calls, &[0, 0, 0], "Looking it up");
    let (text, tools, _, _) = check_sequence(&parse_events(&whole(TO, &data)));
    assert_eq!(text, "Looking it up");
    assert_eq!(tools, vec!["{\"q\":2}"]);
}

#[test]
fn vllm_stop_reason_string_becomes_stop_sequence() {
    let finish = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\
                  \"stop_reason\":\"END\"}]}\n\n";
    let data = format!(
        "{}{finish}data: [DONE]\n\n",
        chunk(&json!({"content":"x"}), None)
    );
    let events = parse_events(&whole(TO, data.as_bytes()));
    let (_, _, stop, _) = check_sequence(&events);
    assert_eq!(stop, "stop_sequence");
    let delta = &events[events.len() - 2].1["delta"];
    assert_eq!(delta["stop_sequence"], json!("END"));
    // A stop token id (a number) is not a stop sequence.
    let by_token = finish.replace("\"END\"", "128009");
    let data = format!("{by_token}data: [DONE]\n\n");
    let events = parse_events(&whole(TO, data.as_bytes()));
    assert_eq!(check_sequence(&events).2, "end_turn");
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_sequence"],
        json!(null)
    );
}

#[test]
fn cache_writes_in_the_usage_are_reported_as_cache_creation() {
    let data = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":3,\
                \"prompt_tokens_details\":{\"cached_tokens\":60},\
                \"cache_creation_input_tokens\":30}}\n\ndata: [DONE]\n\n";
    let (_, _, _, usage) = check_sequence(&parse_events(&whole(TO, data.as_bytes())));
    assert_eq!(
        usage,
        json!({"input_tokens": 10, "cache_creation_input_tokens": 30,
               "cache_read_input_tokens": 60, "output_tokens": 3})
    );
}

#[test]
fn tool_call_resumed_after_its_block_closed_is_malformed() {
    let data = openai_stream(&[], &[vec!["{".into()], vec![]]);
    let mut text = String::from_utf8(data).unwrap();
    let resumed = chunk(
        &json!({"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}),
        None,
    );
    let at = text.find("data: [DONE]").unwrap();
    text.insert_str(at, &resumed);
    let (_, err) = common::run(TO, &[text.as_bytes()], true);
    assert!(matches!(err, Some(_core::errors::CoreError::Sse(_))));
}

#[test]
fn openai_stream_without_done_is_cut_off() {
    let data = chunk(&json!({"content":"x"}), None);
    let (_, err) = common::run(TO, &[data.as_bytes()], true);
    assert!(matches!(
        err,
        Some(_core::errors::CoreError::StreamCutOff(_))
    ));
}

#[test]
fn openai_error_event_is_reported_not_relayed() {
    let data = format!(
        "{}data: {{\"error\":{{\"type\":\"server_error\",\"message\":\"boom\"}}}}\n\n",
        chunk(&json!({"content":"x"}), None)
    );
    let mut s = common::stream(TO, true);
    let mut out = Vec::new();
    s.feed(data.as_bytes(), &mut out).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("boom"));
    assert_eq!(
        s.state().upstream_error,
        Some(("server_error".to_owned(), "boom".to_owned()))
    );
}

#[test]
fn recorded_openai_fixtures_translate_to_valid_sequences() {
    for name in ["openai_text_usage", "openai_tool_calls"] {
        let events = parse_events(&whole(TO, &common::read(&format!("{name}.sse"))));
        let (text, tools, stop, _) = check_sequence(&events);
        assert!(!text.is_empty() || !tools.is_empty(), "{name}");
        for t in tools {
            serde_json::from_str::<Value>(&t).unwrap();
        }
        assert_eq!(stop == "tool_use", name == "openai_tool_calls");
    }
}

/// OpenAI tool calls whose arguments hold every kind of escape (`\uXXXX` in either case,
/// surrogate pairs, controls, `\/`, raw UTF-8 and DEL), `null` arguments, escaped names, text
/// while a call is open, and (`openai_tools_interleaved`) calls interleaved: the events recorded
/// at 861f655, before the fragments were copied as they came, whole and at every split.
#[test]
fn recorded_tool_call_escapes_give_their_recorded_events_at_every_split() {
    for name in ["openai_tool_escapes", "openai_tools_interleaved"] {
        let input = common::read(&format!("{name}.sse"));
        let expected = common::read(&format!("{name}.anthropic.expected"));
        for cut in 0..=input.len() {
            let (out, err) = common::run(TO, &[&input[..cut], &input[cut..]], true);
            assert!(err.is_none(), "{name} at {cut}: {err:?}");
            assert!(out == expected, "{name} at {cut}");
        }
    }
}

#[test]
fn passthrough_relays_every_event_and_rewrites_the_model() {
    let input = common::read("anthropic_text_tool_use.sse");
    let mut s = common::stream(PASS, true);
    let mut out = Vec::new();
    s.feed(&input, &mut out).unwrap();
    s.finish(&mut out).unwrap();
    let events = parse_events(&out);
    let upstream = common::events(&input);
    assert_eq!(events.len(), upstream.len());
    assert_eq!(events[0].1["message"]["model"], json!(common::MODEL));
    let original: Value =
        serde_json::from_str(upstream[0].split_once("data: ").unwrap().1).unwrap();
    let mut rewritten = original.clone();
    rewritten["message"]["model"] = json!(common::MODEL);
    assert_eq!(events[0].1, rewritten, "only the model changes");
    for ((name, data), raw) in events.iter().zip(&upstream).skip(1) {
        let (head, body) = raw.split_once("\ndata: ").unwrap();
        assert_eq!(head, format!("event: {name}"));
        assert_eq!(data, &serde_json::from_str::<Value>(body).unwrap());
    }
    let st = s.state();
    assert!(st.done);
    let usage = st.usage.unwrap();
    assert_eq!(usage.cached_tokens, 2048);
    assert_eq!(st.finish_reason.as_deref(), Some("tool_calls"));
    assert!(st.content_chars > 0);
}

#[test]
fn passthrough_relays_repeated_text_deltas_as_they_came_and_counts_their_text() {
    // after the first plain text delta, the next ones are read from their text on (the bytes
    // before it repeat): escaped text, a delta with one more member, another index
    let delta = |index: u32, text: &str, tail: &str| {
        format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\
             \"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"{tail}}}}}\n\n"
        )
    };
    let deltas = [
        delta(0, "Hello", ""),
        delta(0, r#" \"w\u00e9\" "#, ""),
        delta(0, "x", r#","y":1"#),
        delta(1, "ab", ""),
        delta(1, "\\n", ""),
    ];
    let input = [
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\
         \"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n"
            .to_owned(),
        deltas.concat(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
    ]
    .concat();
    let (out, err) = common::run(PASS, &[input.as_bytes()], true);
    assert!(err.is_none());
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(&deltas.concat()), "{out}");
    let mut s = common::stream(PASS, true);
    s.feed(input.as_bytes(), &mut Vec::new()).unwrap();
    // Hello, ` "wé" `, x, ab, a line feed: 5 + 6 + 1 + 2 + 1 characters
    assert_eq!(s.state().content_chars, 15);
}

#[test]
fn passthrough_error_event_is_reported_not_relayed() {
    let input = common::read("anthropic_error.sse");
    let (out, err) = common::run(PASS, &[&input], true);
    assert!(err.is_none());
    assert!(!String::from_utf8_lossy(&out).contains("event: error"));
    let mut s = common::stream(PASS, true);
    s.feed(&input, &mut Vec::new()).unwrap();
    assert!(s.state().upstream_error.is_some());
}

#[test]
fn passthrough_without_message_stop_is_cut_off() {
    let (_, err) = common::run(PASS, &[b"event: ping\ndata: {\"type\":\"ping\"}\n\n"], true);
    assert!(matches!(
        err,
        Some(_core::errors::CoreError::StreamCutOff(_))
    ));
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
        let data = openai_stream(&texts, &calls);
        let expected = whole(TO, &data);
        let (out, err) = common::run(TO, &common::split(&data, &cuts), true);
        prop_assert!(err.is_none());
        prop_assert_eq!(&out, &expected);
        let (text, tools, _, _) = check_sequence(&parse_events(&out));
        prop_assert_eq!(text, texts.concat());
        let args: Vec<String> = calls.iter().map(|c| c.concat()).collect();
        prop_assert_eq!(tools, args);
    }

    #[test]
    fn interleaved_tool_calls_add_up_exactly_at_any_split(
        calls in proptest::collection::vec(pieces(), 1..4),
        schedule in proptest::collection::vec(any::<usize>(), 0..24),
        text in "[a-z ]{0,6}",
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let data = interleaved_stream(&calls, &schedule, &text);
        let expected = whole(TO, &data);
        let (out, err) = common::run(TO, &common::split(&data, &cuts), true);
        prop_assert!(err.is_none());
        prop_assert_eq!(&out, &expected);
        let (got_text, tools, _, _) = check_sequence(&parse_events(&out));
        prop_assert_eq!(got_text, text);
        // blocks in order of each call's first chunk; every argument byte exactly once
        let mut first_seen: Vec<usize> = Vec::new();
        for w in schedule.iter().map(|w| w % calls.len()).chain(0..calls.len()) {
            if !first_seen.contains(&w) {
                first_seen.push(w);
            }
        }
        let args: Vec<String> = first_seen.iter().map(|&i| calls[i].concat()).collect();
        prop_assert_eq!(tools, args);
    }

    #[test]
    fn passthrough_any_split_gives_the_same_events(
        which in 0usize..2,
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let name = ["anthropic_text_tool_use.sse", "anthropic_error.sse"][which];
        let data = common::read(name);
        let (expected, e1) = common::run(PASS, &[&data], true);
        let (out, e2) = common::run(PASS, &common::split(&data, &cuts), true);
        prop_assert_eq!(out, expected);
        prop_assert_eq!(e1, e2);
    }

    #[test]
    fn random_or_mutated_input_never_panics_and_emits_whole_events(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            (0usize..4, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8))
                .prop_map(|(which, edits)| {
                    let names = ["openai_text_usage.sse", "openai_tool_calls.sse",
                                 "anthropic_text_tool_use.sse", "anthropic_error.sse"];
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
        for kind in [TO, PASS] {
            let mut s = Stream::new(kind, &common::opts(true), 512).unwrap();
            for c in common::split(&data, &cuts) {
                let mut out = Vec::new();
                if s.feed(c, &mut out).is_err() {
                    break;
                }
                prop_assert!(s.buffered_bytes() <= 512);
                check_whole_events(&out);
            }
            let mut out = Vec::new();
            if s.finish(&mut out).is_ok() {
                check_whole_events(&out);
            }
        }
    }
}
