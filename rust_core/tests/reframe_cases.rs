//! Reframer behaviours on small hand-written streams (wire quirks the fixtures do not show).
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use _core::errors::CoreError;
use _core::reframe::Stream;
use common::{events, run, stream};

fn out_of(kind: &str, input: &str) -> (Vec<String>, Stream) {
    let mut s = stream(kind, true);
    let mut out = Vec::new();
    s.feed(input.as_bytes(), &mut out).unwrap();
    s.finish(&mut out).unwrap();
    (events(&out), s)
}

fn delta(ev: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(ev.strip_prefix("data: ").unwrap()).unwrap();
    v["choices"][0]["delta"].clone()
}

#[test]
fn openai_keeps_field_order_numbers_and_escapes_and_rewrites_only_model() {
    let input = "data: {\"id\":\"x\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\u00e9\\n\"},\"logprobs\":{\"content\":[{\"logprob\":-1.0e-5}]},\"finish_reason\":null}],\"z\":1.50}\n\ndata: [DONE]\n\n";
    let (evs, s) = out_of("openai", input);
    assert_eq!(
        evs[0],
        "data: {\"id\":\"x\",\"model\":\"prov/model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\u00e9\\n\"},\"logprobs\":{\"content\":[{\"logprob\":-1.0e-5}]},\"finish_reason\":null}],\"z\":1.50}"
    );
    assert_eq!(evs[1], "data: [DONE]");
    assert_eq!(s.state().content_chars, 2);
}

#[test]
fn openai_model_is_replaced_wherever_and_however_it_is_written() {
    // null, spaced, escaped key, after the choices, and across pretty-printed lines.
    let input =
        "data: {\"id\":\"a\",\"model\":null,\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n\
                 data: {\"choices\":[{\"delta\":{\"content\":\"y\"}}] , \"model\" : \"m\" }\n\n\
                 data: {\"mod\\u0065l\":\"m\",\"choices\":[{\"delta\":{}}]}\n\n\
                 data: {\"choices\": [{\"delta\": {}}],\ndata: \"model\": {\"x\": [1, \"}\"]}}\n\n\
                 data: [DONE]\n\n";
    let (evs, _) = out_of("openai", input);
    assert_eq!(
        evs[..4],
        [
            "data: {\"id\":\"a\",\"model\":\"prov/model\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}",
            "data: {\"choices\":[{\"delta\":{\"content\":\"y\"}}] , \"model\" : \"prov/model\" }",
            "data: {\"mod\\u0065l\":\"prov/model\",\"choices\":[{\"delta\":{}}]}",
            "data: {\"choices\":[{\"delta\":{}}],\"model\":\"prov/model\"}",
        ]
    );
}

#[test]
fn openai_chunks_read_from_their_text_are_written_as_each_alone_is() {
    // Text chunks of several shapes, each repeated (a chunk like the last text chunk is read,
    // and written, from its text alone), between chunks of other shapes: every event out is
    // the one the same chunk gives fed alone to a new stream (read by the whole scan).
    let head = r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"gpt-x","#;
    let text = |body: &str| {
        format!(
            r#"{head}"choices":[{{"index":0,"delta":{{"content":"{body}"}},"finish_reason":null}}]}}"#
        )
    };
    let other = |body: &str| {
        format!(
            r#"{{"id":"c1","choices":[{{"delta":{{"content":"{body}"}},"logprobs":null}}],"model" : "m"}}"#
        )
    };
    let bare = |body: &str| format!(r#"{{"choices":[{{"delta":{{"content":"{body}"}}}}]}}"#);
    let args = |body: &str| {
        format!(
            r#"{head}"choices":[{{"delta":{{"tool_calls":[{{"function":{{"arguments":"{body}"}}}}]}}}}]}}"#
        )
    };
    let chunks = [
        text(""),
        text("a"),
        text(r#"b\n\u00e9 \"q\" é😀"#),
        other("c"),
        other("d"),
        text("e"),
        text("f"),
        bare("g"),
        bare("h"),
        args(r#"{\"x"#),
        args(r#"\":1}"#),
        text("i"),
        format!(r#"{head}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#),
        text("j"),
    ];
    let mut input = String::new();
    let mut alone = Vec::new();
    for chunk in &chunks {
        let event = format!("data: {chunk}\n\n");
        input += &event;
        alone.extend(out_of("openai", &(event + "data: [DONE]\n\n")).0);
        alone.pop(); // its [DONE]
    }
    input += "data: [DONE]\n\n";
    let (evs, s) = out_of("openai", &input);
    assert_eq!(evs[..chunks.len()], alone[..]);
    assert_eq!(evs.len(), chunks.len() + 1);
    assert_eq!(s.state().content_chars, 26);
}

#[test]
fn openai_pretty_printed_multi_line_data_is_compacted_to_one_line() {
    let input = "data: {\"id\": \"x\",\ndata:  \"choices\": [ ],\ndata: \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 4, \"total_tokens\": 7}}\n\ndata: [DONE]\n\n";
    let (evs, s) = out_of("openai", input);
    assert_eq!(
        evs[0],
        "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7},\"model\":\"prov/model\"}"
    );
    assert_eq!(s.state().usage.unwrap().total_tokens, 7);
}

#[test]
fn openai_error_event_sets_upstream_error_and_stops() {
    let input = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"Rate limit\",\"type\":null,\"code\":\"rate_limit_exceeded\"}}\n\ndata: [DONE]\n\n";
    let (evs, s) = out_of("openai", input);
    assert_eq!(evs.len(), 1);
    assert_eq!(
        s.state().upstream_error,
        Some(("rate_limit_exceeded".to_owned(), "Rate limit".to_owned()))
    );
    assert!(!s.state().done);
}

#[test]
fn openai_chunk_without_choices_or_usage_is_not_relayed() {
    // Azure OpenAI streams this first: prompt filter results only, empty id and model.
    let input = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0}]}\n\ndata: {\"id\":\"x\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
    let (evs, _) = out_of("openai", input);
    assert_eq!(evs.len(), 2);
    assert!(evs[0].contains("\"content\":\"hi\""));
}

#[test]
fn openai_compatible_top_level_error_object_sets_upstream_error() {
    let input = "data: {\"object\":\"error\",\"message\":\"context too long\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}\n\n";
    let (evs, s) = out_of("openai", input);
    assert!(evs.is_empty());
    assert_eq!(
        s.state().upstream_error,
        Some(("BadRequestError".to_owned(), "context too long".to_owned()))
    );
}

#[test]
fn openai_done_without_final_blank_line_still_terminates() {
    let (out, err) = run(
        "openai",
        &[b"data: {\"choices\":[]}\n\ndata: [DONE]\n"],
        true,
    );
    assert_eq!(err, None);
    assert!(out.ends_with(b"data: [DONE]\n\n"));
}

#[test]
fn openai_non_json_data_is_an_sse_error() {
    let (_, err) = run("openai", &[b"data: hello\n\n"], true);
    assert!(matches!(err, Some(CoreError::Sse(_))));
}

#[test]
fn a_failing_chunk_leaves_its_whole_events_before_the_failure_in_out() {
    // (the Python side sends them before the error event, as when the error comes later)
    let good =
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    for kind in ["openai", "anthropic"] {
        let (first, bad) = if kind == "openai" {
            (good.to_owned(), "data: hello\n\n")
        } else {
            (
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n\
                 event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n"
                    .to_owned(),
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\n\n",
            )
        };
        let mut whole = Vec::new();
        stream(kind, true)
            .feed(first.as_bytes(), &mut whole)
            .unwrap();
        assert!(!whole.is_empty(), "{kind}");
        let mut out = Vec::new();
        let failed = stream(kind, true).feed(format!("{first}{bad}").as_bytes(), &mut out);
        assert!(
            matches!(failed, Err(CoreError::Sse(_))),
            "{kind}: {failed:?}"
        );
        assert_eq!(out, whole, "{kind}");
    }
}

#[test]
fn anthropic_thinking_and_ping_are_not_relayed() {
    let input = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (evs, s) = out_of("anthropic", input);
    assert_eq!(
        delta(&evs[0]),
        serde_json::json!({"role":"assistant","content":""})
    );
    assert_eq!(delta(&evs[1]), serde_json::json!({"content":"Hi"}));
    assert!(evs[2].contains("\"finish_reason\":\"length\""));
    assert!(evs[3]
        .contains("\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"total_tokens\":14}"));
    assert_eq!(evs[4], "data: [DONE]");
    assert_eq!(evs.len(), 5);
    assert_eq!(s.state().content_chars, 2);
}

#[test]
fn anthropic_second_tool_use_block_gets_tool_index_one() {
    let input = concat!(
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":{}}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"b\",\"name\":\"g\",\"input\":{}}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let (evs, _) = out_of("anthropic", input);
    assert_eq!(delta(&evs[2])["tool_calls"][0]["index"], 1);
    assert_eq!(delta(&evs[2])["tool_calls"][0]["id"], "b");
    assert_eq!(
        delta(&evs[3]),
        serde_json::json!({"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]})
    );
}

#[test]
fn anthropic_stop_reasons_map_to_openai_vocabulary() {
    for (reason, expected) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let input = format!(
            "data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{reason}\"}},\"usage\":{{\"output_tokens\":1}}}}\n\n"
        );
        let mut s = stream("anthropic", false);
        s.feed(input.as_bytes(), &mut Vec::new()).unwrap();
        assert_eq!(s.state().finish_reason.as_deref(), Some(expected));
    }
}

#[test]
fn anthropic_stop_sequence_names_the_matched_string_as_vllm_does() {
    let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":\
                 {\"input_tokens\":3}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\
                 \"delta\":{\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\"},\
                 \"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\n\
                 data: {\"type\":\"message_stop\"}\n\n";
    let (evs, s) = out_of("anthropic", input);
    let finish: serde_json::Value =
        serde_json::from_str(evs[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["stop_reason"], "END");
    assert_eq!(s.state().finish_reason.as_deref(), Some("stop"));
    // and back: the same chunks through openai_to_anthropic give stop_sequence again
    let chunks = evs.iter().fold(String::new(), |acc, e| acc + e + "\n\n");
    let (back, _) = out_of("openai_to_anthropic", &chunks);
    let delta = back.iter().find(|e| e.contains("message_delta")).unwrap();
    assert!(delta.contains("\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\""));
}

#[test]
fn gemini_error_object_sets_upstream_error() {
    let input = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\r\n\r\ndata: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
    let (evs, s) = out_of("gemini", input);
    assert_eq!(evs.len(), 2);
    assert_eq!(
        s.state().upstream_error,
        Some((
            "UNAVAILABLE".to_owned(),
            "The model is overloaded.".to_owned()
        ))
    );
}

#[test]
fn gemini_finish_reasons_map_to_openai_vocabulary() {
    for (reason, expected) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
    ] {
        let input = format!("data: {{\"candidates\":[{{\"finishReason\":\"{reason}\"}}]}}\n\n");
        let (evs, s) = out_of("gemini", &input);
        assert_eq!(s.state().finish_reason.as_deref(), Some(expected));
        assert_eq!(evs.last().map(String::as_str), Some("data: [DONE]"));
    }
}

#[test]
fn gemini_blocked_prompt_finishes_with_content_filter() {
    let input = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":7,\"totalTokenCount\":7}}\n\n";
    let (evs, s) = out_of("gemini", input);
    assert_eq!(s.state().finish_reason.as_deref(), Some("content_filter"));
    assert_eq!(evs.len(), 4); // role, finish, usage, [DONE]
}

#[test]
fn gemini_usage_after_the_finish_reason_is_still_counted() {
    let input = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]},\"finishReason\":\"STOP\"}]}\n\ndata: {\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1,\"totalTokenCount\":3}}\n\n";
    let (evs, s) = out_of("gemini", input);
    assert_eq!(s.state().usage.unwrap().total_tokens, 3);
    assert!(evs[evs.len() - 2].contains("\"total_tokens\":3"));
}

#[test]
fn unknown_kind_is_an_invalid_argument() {
    let err = Stream::new("replicate", &common::opts(true), 1024).err();
    assert!(matches!(err, Some(CoreError::InvalidArgument(_))));
}
