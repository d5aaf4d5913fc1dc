//! The OpenAI reframer over `make bench`'s static body (50 events in one piece), N streams:
//! a driver for `valgrind --tool=callgrind` (instructions per stream) or `perf record`.
//!
//!     cargo build --release --example reframe_cost
//!     valgrind --tool=callgrind target/release/examples/reframe_cost 110   # and 10: the
//!         difference / 100 is the instructions per stream, start-up cancelled out

use _core::reframe::{Options, Stream};

fn body() -> Vec<u8> {
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

fn main() {
    let streams: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let body = body();
    let opts = Options {
        model: "benchsse/m".to_owned(),
        response_id: "chatcmpl-bench".to_owned(),
        created: 1,
        include_usage: false,
        response_fields: "{}".to_owned(),
    };
    let mut total = 0;
    for _ in 0..streams {
        let mut out = Vec::new();
        let reframed = Stream::new("openai", &opts, 1 << 20).and_then(|mut stream| {
            stream.feed(&body, &mut out)?;
            stream.finish(&mut out)
        });
        if reframed.is_err() {
            std::process::exit(1);
        }
        total += out.len();
    }
    std::process::exit(i32::from(total == 0));
}
