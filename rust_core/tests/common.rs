//! Shared helpers for the integration tests (included with `mod common;`).
#![allow(dead_code)] // each test binary uses a subset

use std::path::PathBuf;

use _core::errors::CoreError;
use _core::reframe::{Options, Stream};

pub const MODEL: &str = "prov/model";
pub const RESPONSE_ID: &str = "chatcmpl-klawd1";
pub const CREATED: i64 = 1_700_000_000;

/// `(fixture name, reframer kind)`.
pub const FIXTURES: &[(&str, &str)] = &[
    ("openai_text_usage", "openai"),
    ("openai_tool_calls", "openai"),
    ("anthropic_text_tool_use", "anthropic"),
    ("anthropic_error", "anthropic"),
    ("gemini_text_function_call", "gemini"),
    ("gemini_safety", "gemini"),
];

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| unreachable!("fixture {name}: {e}"))
}

pub fn opts(include_usage: bool) -> Options {
    Options {
        model: MODEL.to_owned(),
        response_id: RESPONSE_ID.to_owned(),
        created: CREATED,
        include_usage,
        response_fields: "{}".to_owned(),
    }
}

pub fn stream(kind: &str, include_usage: bool) -> Stream {
    Stream::new(kind, &opts(include_usage), 1 << 20).unwrap_or_else(|e| unreachable!("{e}"))
}

/// Feeds `chunks` then finishes; returns the output and the first error.
pub fn run(kind: &str, chunks: &[&[u8]], include_usage: bool) -> (Vec<u8>, Option<CoreError>) {
    let mut s = stream(kind, include_usage);
    let mut out = Vec::new();
    for c in chunks {
        let mut part = Vec::new();
        if let Err(e) = s.feed(c, &mut part) {
            return (out, Some(e));
        }
        out.extend_from_slice(&part);
    }
    let mut part = Vec::new();
    let err = s.finish(&mut part).err();
    out.extend_from_slice(&part);
    (out, err)
}

/// Splits `data` at the given cut points (taken modulo `len + 1`).
pub fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points {
        chunks.push(&data[start..p]);
        start = p;
    }
    chunks.push(&data[start..]);
    chunks
}

/// The output's events (without the blank-line separators).
pub fn events(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}
