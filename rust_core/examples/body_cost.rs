//! A chat body's scans over one file, N times: a driver for `valgrind --tool=callgrind`
//! (instructions per body, free of the Python heap's state, which moves a `realloc`'s cost by
//! thousands of instructions from run to run). The second argument names the scan:
//! `anthropic` (`anthropic_body::request`), `gemini` (`gemini_body::request`) or `chat` (the
//! chat route's read of the messages, `chat_request::read`); the third the body's file.
//!
//!     cargo build --release --example body_cost
//!     valgrind --tool=callgrind target/release/examples/body_cost 110 anthropic \
//!         loadtests/bench/agent_request.json   # and 10: the difference / 100 per body

use _core::{anthropic_body, chat_request, gemini_body};

fn main() {
    let mut args = std::env::args().skip(1);
    let bodies: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let kind = args.next().unwrap_or_else(|| "anthropic".to_owned());
    let Some(body) = args.next().and_then(|path| std::fs::read(path).ok()) else {
        std::process::exit(2);
    };
    let mut total = 0;
    for _ in 0..bodies {
        total += match kind.as_str() {
            "anthropic" => anthropic_body::request(&body, "m", 4096, true).map_or(0, |b| b.len()),
            "gemini" => gemini_body::request(&body, 4096).map_or(0, |b| b.len()),
            "chat" => chat_request::read(&body).map_or(0, |r| r.messages.1),
            _ => std::process::exit(2),
        };
    }
    std::process::exit(i32::from(total == 0));
}
