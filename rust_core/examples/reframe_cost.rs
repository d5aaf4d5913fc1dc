//! A reframer over `make bench`'s static body (50 events in one piece), N streams: a driver for
//! `valgrind --tool=callgrind` (instructions per stream) or `perf record`. The second argument
//! names the reframer and its body: `openai` (the default: the bench's OpenAI chunks; so do
//! `openai_to_anthropic` and `openai_to_responses`, the Messages and Responses APIs' reframers) or
//! `anthropic` (the bench's Anthropic Messages events, as `side_by_side`'s `anth` sends them);
//! `anthropic_passthrough` relays the latter as they are (`/v1/messages`); `gemini` (50 Gemini
//! responses of one text part each, with usage, the last one finishing); `bedrock` (a
//! `ConverseStream` of 50 event stream messages, 47 of them text deltas); `bedrock_tools` (a
//! `ConverseStream` tool call: a line of text, then one `toolUse` whose arguments, a 4.1 KB file
//! to write, arrive in 295 `delta.toolUse.input` fragments, as `side_by_side`'s `anth-tools`
//! sends Anthropic's `input_json_delta`s: `loadtests/bench/contenders.py`,
//! `anthropic_tool_events`); `anthropic_tools` (that Anthropic stream itself: a line of text,
//! then one `tool_use` block whose arguments arrive in 295 `input_json_delta` fragments; the
//! recorded `rust_core/tests/fixtures/bench_anthropic_tools.sse`, which the `anthropic` SDK reads
//! as a tool call in `tests/core/test_bench_tool_stream_sdk.py`); `openai_tools` (their OpenAI
//! twin: a line of text, then one tool call whose arguments arrive in 295 `function.arguments`
//! fragments), relayed as chat chunks, and `openai_tools_to_anthropic` /
//! `openai_tools_to_responses`, that stream reframed for the Messages and Responses APIs.
//!
//! A third argument, `events`, feeds the body one event at a time, cut after each `\n\n` (a
//! read per event, as `side_by_side`'s `event` measure sends it) rather than in one piece.
//!
//!     cargo build --release --example reframe_cost
//!     valgrind --tool=callgrind target/release/examples/reframe_cost 110 [anthropic [events]]
//!         # and 10: the difference / 100 is the instructions per stream, start-up cancelled out

use std::fmt::Write as _;

use _core::eventstream::encode_message;
use _core::reframe::{Options, Stream};

fn openai_body() -> Vec<u8> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\
             \"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut out = chunk("{\"role\":\"assistant\",\"content\":\"\"}", "null");
    for i in 0..47 {
        out += &chunk(&format!("{{\"content\":\"tok{i} \"}}"), "null");
    }
    out += &chunk("{}", "\"stop\"");
    out += "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\
            \"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\
            \"completion_tokens\":47,\"total_tokens\":59}}\n\ndata: [DONE]\n\n";
    out.into_bytes()
}

/// `loadtests/bench/contenders.py`'s `anthropic_events()`: 50 events, 45 of them text deltas.
fn anthropic_body() -> Vec<u8> {
    let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
    let mut out = event(
        "message_start",
        "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\
         \"role\":\"assistant\",\"model\":\"claude-bench\",\"content\":[],\"stop_reason\":null,\
         \"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}",
    );
    out += &event(
        "content_block_start",
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\
         \"text\":\"\"}}",
    );
    for i in 0..45 {
        out += &event(
            "content_block_delta",
            &format!(
                "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\
                 \"text_delta\",\"text\":\"tok{i} \"}}}}"
            ),
        );
    }
    out += &event(
        "content_block_stop",
        "{\"type\":\"content_block_stop\",\"index\":0}",
    );
    out += &event(
        "message_delta",
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\
         \"stop_sequence\":null},\"usage\":{\"output_tokens\":45}}",
    );
    out += &event("message_stop", "{\"type\":\"message_stop\"}");
    out.into_bytes()
}

/// 50 Gemini `streamGenerateContent?alt=sse` responses, as `core_bench`'s Gemini stream writes
/// them (CRLF line ends, usage in each) and `side_by_side`'s `gemini` measure sends them
/// (`loadtests/bench/contenders.py`, `gemini_events`).
fn gemini_body() -> Vec<u8> {
    let response = |i: usize| {
        let finish = if i == 49 {
            ",\"finishReason\":\"STOP\""
        } else {
            ""
        };
        format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"tok{i} \"}}],\
             \"role\":\"model\"}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":57,\
             \"candidatesTokenCount\":{i},\"totalTokenCount\":{}}},\"modelVersion\":\
             \"gemini-2.5-flash\",\"responseId\":\"mDAmaL2BNvGhz7IPxeLb4QQ\"}}\r\n\r\n",
            57 + i
        )
    };
    (0..50).map(response).collect::<String>().into_bytes()
}

/// A Bedrock `ConverseStream`: start, 47 text deltas, stop, metadata (50 messages).
fn bedrock_body() -> Vec<u8> {
    let event = |name: &str, payload: &str| {
        encode_message(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    };
    let mut out = event("messageStart", "{\"role\":\"assistant\"}");
    for i in 0..47 {
        out.extend(event(
            "contentBlockDelta",
            &format!("{{\"contentBlockIndex\":0,\"delta\":{{\"text\":\"tok{i} \"}}}}"),
        ));
    }
    out.extend(event("messageStop", "{\"stopReason\":\"end_turn\"}"));
    out.extend(event(
        "metadata",
        "{\"usage\":{\"inputTokens\":12,\"outputTokens\":47,\"totalTokens\":59},\
         \"metrics\":{\"latencyMs\":5}}",
    ));
    out
}

/// `bedrock_body`'s tool-call twin: `contenders.anthropic_tool_events`'s text and 300-line file,
/// its arguments cut into fragments of `ceil(len / 300)` characters (295 of them), each a
/// `contentBlockDelta` of block 1 (`delta.toolUse.input`: JSON text inside a JSON string).
fn bedrock_tools_body() -> Vec<u8> {
    const TOOL_DELTAS: usize = 300;
    let event = |name: &str, payload: &str| {
        encode_message(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    };
    let mut content = String::new();
    for i in 0..TOOL_DELTAS {
        writeln!(content, "line {i}: ok").unwrap_or_default();
    }
    let arguments = serde_json::json!({"path": "src/bench.py", "content": content}).to_string();
    let size = arguments.len().div_ceil(TOOL_DELTAS); // ASCII: bytes are characters
    let mut out = event("messageStart", "{\"role\":\"assistant\"}");
    out.extend(event(
        "contentBlockDelta",
        "{\"contentBlockIndex\":0,\"delta\":{\"text\":\"Writing it.\"}}",
    ));
    out.extend(event("contentBlockStop", "{\"contentBlockIndex\":0}"));
    out.extend(event(
        "contentBlockStart",
        "{\"contentBlockIndex\":1,\"start\":{\"toolUse\":{\"toolUseId\":\"tooluse_bench\",\
         \"name\":\"write_file\"}}}",
    ));
    let mut sent = 0;
    for fragment in arguments.as_bytes().chunks(size) {
        let fragment = std::str::from_utf8(fragment).unwrap_or_default();
        let delta = serde_json::json!(
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": fragment}}}
        );
        out.extend(event("contentBlockDelta", &delta.to_string()));
        sent += 1;
    }
    out.extend(event("contentBlockStop", "{\"contentBlockIndex\":1}"));
    out.extend(event("messageStop", "{\"stopReason\":\"tool_use\"}"));
    out.extend(event(
        "metadata",
        &format!(
            "{{\"usage\":{{\"inputTokens\":12,\"outputTokens\":{},\"totalTokens\":{}}},\
             \"metrics\":{{\"latencyMs\":5}}}}",
            sent + 3,
            sent + 15
        ),
    ));
    out
}

/// `bedrock_tools_body`'s OpenAI twin, what the Messages and Responses reframers read from an
/// OpenAI upstream: a line of text, then one tool call whose arguments (the same 4.1 KB file)
/// arrive in 295 `function.arguments` fragments, the finish, usage and `[DONE]`.
fn openai_tools_body() -> Vec<u8> {
    const TOOL_DELTAS: usize = 300;
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\
             \"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut content = String::new();
    for i in 0..TOOL_DELTAS {
        writeln!(content, "line {i}: ok").unwrap_or_default();
    }
    let arguments = serde_json::json!({"path": "src/bench.py", "content": content}).to_string();
    let size = arguments.len().div_ceil(TOOL_DELTAS); // ASCII: bytes are characters
    let mut out = chunk(
        "{\"role\":\"assistant\",\"content\":\"Writing it.\"}",
        "null",
    );
    out += &chunk(
        "{\"tool_calls\":[{\"index\":0,\"id\":\"call_bench\",\"type\":\"function\",\
         \"function\":{\"name\":\"write_file\",\"arguments\":\"\"}}]}",
        "null",
    );
    let mut sent = 0;
    for fragment in arguments.as_bytes().chunks(size) {
        let fragment = std::str::from_utf8(fragment).unwrap_or_default();
        let delta = serde_json::json!(
            {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
        );
        out += &chunk(&delta.to_string(), "null");
        sent += 1;
    }
    out += &chunk("{}", "\"tool_calls\"");
    write!(
        out,
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\
         \"model\":\"bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\
         \"completion_tokens\":{},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        sent + 3,
        sent + 15
    )
    .unwrap_or_default();
    out.into_bytes()
}

/// The body cut after each blank line (`\n\n`): one piece per event.
fn events(body: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = body;
    while let Some(end) = rest.windows(2).position(|w| w == b"\n\n") {
        let (piece, tail) = rest.split_at(end + 2);
        pieces.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

fn main() {
    let streams: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let kind = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "openai".to_owned());
    let body = match kind.as_str() {
        "openai" | "openai_to_anthropic" | "openai_to_responses" => openai_body(),
        "anthropic" | "anthropic_passthrough" => anthropic_body(),
        "gemini" => gemini_body(),
        "bedrock" => bedrock_body(),
        "bedrock_tools" => bedrock_tools_body(),
        "openai_tools" | "openai_tools_to_anthropic" | "openai_tools_to_responses" => {
            openai_tools_body()
        }
        "anthropic_tools" => include_bytes!("../tests/fixtures/bench_anthropic_tools.sse").to_vec(),
        _ => std::process::exit(2),
    };
    let pieces = if std::env::args().nth(3).as_deref() == Some("events") {
        events(&body)
    } else {
        vec![&body[..]]
    };
    let opts = Options {
        model: "benchsse/m".to_owned(),
        response_id: "chatcmpl-bench".to_owned(),
        created: 1,
        include_usage: false,
        response_fields: "{}".to_owned(),
    };
    let name = match kind.as_str() {
        "bedrock_tools" => "bedrock",
        "anthropic_tools" => "anthropic",
        "openai_tools" => "openai",
        "openai_tools_to_anthropic" => "openai_to_anthropic",
        "openai_tools_to_responses" => "openai_to_responses",
        other => other,
    };
    let mut total = 0;
    for _ in 0..streams {
        let mut out = Vec::new();
        let reframed = Stream::new(name, &opts, 1 << 20).and_then(|mut stream| {
            for piece in &pieces {
                stream.feed(piece, &mut out)?;
            }
            stream.finish(&mut out)
        });
        if reframed.is_err() {
            std::process::exit(1);
        }
        total += out.len();
    }
    std::process::exit(i32::from(total == 0));
}
