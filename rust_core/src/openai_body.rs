//! OpenAI-shaped chat bodies rewritten by one scan of their text, where the Python path parses
//! each into objects and writes it again (orjson's `loads` and `dumps`, twice per single answer):
//!
//! - [`request`]: the client's body for an OpenAI-shaped upstream: `model` renamed to the
//!   upstream's name, the request's own fallbacks (`models`) dropped, `max_tokens` made explicit
//!   when neither it nor `max_completion_tokens` is given, and on a stream `stream_options` with
//!   `include_usage` added (gateway/providers/openai.py, `build_request`).
//! - [`answer`]: the upstream's `chat.completion`: `choices` checked to be an array, `model`
//!   renamed to the catalog id (added at the end when missing), the counts of `usage` read
//!   (`parse_response` and `TokenUsage.from_openai`).
//!
//! **Conservative**, as the stream's scan (`reframe/openai_scan.rs`): each answers only for a
//! body the Python path reads the same way: valid UTF-8, one JSON object whose keys have no
//! escapes and are each given once (also inside `usage` and its `prompt_tokens_details`), every
//! value valid JSON nested at most `json_scan::MAX_DEPTH` deep with no lone surrogate; a count `null` or an
//! integer; a stream's body without `stream_options`. Anything else gives `None` and the caller
//! takes the Python path, the reference: the same result, or the same error, as before. What
//! differs is the form only: the members' values go out as they came (their numbers, escapes
//! and inner whitespace, which orjson wrote again in its own form), the request's members
//! joined without the whitespace between them.

use smallvec::SmallVec;

use crate::json::write_str;
use crate::json_scan::Scan;

/// One member of an object: its key's text, where it starts (the key's opening quote), where
/// its value starts and where it ends.
pub(crate) struct Member<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) start: usize,
    pub(crate) value: usize,
    pub(crate) end: usize,
}

/// The members of the object that is the whole of `text` (whitespace around it allowed) and
/// the index of its closing brace; `None` if `text` is anything else or a key is escaped or
/// given twice.
pub(crate) fn members(text: &str) -> Option<(SmallVec<[Member<'_>; 16]>, usize)> {
    let mut scan = Scan::new(text);
    let mut found: SmallVec<[Member<'_>; 16]> = SmallVec::new();
    scan.open(b'{')?;
    if !scan.empty(b'}') {
        loop {
            scan.ws();
            let start = scan.i;
            let key = scan.key()?;
            if found.iter().any(|m| m.key == key) {
                return None;
            }
            scan.ws();
            let value = scan.i;
            scan.value(1)?;
            found.push(Member {
                key,
                start,
                value,
                end: scan.i,
            });
            if scan.next(b'}')? {
                break;
            }
        }
    }
    let close = scan.i - 1;
    scan.at_end().then_some((found, close))
}

/// The client's chat body for an OpenAI-shaped upstream (see the module docs), or `None`.
pub fn request(body: &[u8], model: &str, default_max_tokens: u64, stream: bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let (found, _) = members(text)?;
    let has = |key: &[u8]| found.iter().any(|m| m.key == key);
    if stream && has(b"stream_options") {
        return None; // merged with the client's options by the Python path
    }
    let mut out = Vec::with_capacity(body.len() + model.len() + 64);
    out.push(b'{');
    let mut named = false;
    for m in &found {
        if m.key == b"models" {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        if m.key == b"model" {
            out.extend_from_slice(&body[m.start..m.value]);
            write_str(&mut out, model);
            named = true;
        } else {
            out.extend_from_slice(&body[m.start..m.end]);
        }
    }
    if !named {
        return None; // (a validated chat body always names its model)
    }
    if !has(b"max_tokens") && !has(b"max_completion_tokens") {
        out.extend_from_slice(b",\"max_tokens\":");
        out.extend_from_slice(default_max_tokens.to_string().as_bytes());
    }
    if stream {
        out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
    }
    out.push(b'}');
    Some(out)
}

/// An upstream `chat.completion` read by [`answer`].
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The answer's text with `model` renamed.
    pub body: Vec<u8>,
    /// `prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens` and
    /// `cache_creation_input_tokens`: a positive integer, else 0.
    pub usage: [u64; 4],
}

/// The upstream's answer with `model` renamed and its usage read (see the module docs), or
/// `None`.
pub fn answer(body: &[u8], model: &str) -> Option<Answer> {
    let text = std::str::from_utf8(body).ok()?;
    let (found, close) = members(text)?;
    let mut usage = [0; 4];
    let mut choices = false;
    let mut renamed: Option<&Member<'_>> = None;
    for m in &found {
        match m.key {
            b"choices" => choices = body[m.value] == b'[',
            b"usage" => usage = counts(&text[m.value..m.end])?,
            b"model" => renamed = Some(m),
            _ => {}
        }
    }
    if !choices {
        return None; // the Python path refuses it (502)
    }
    let mut out = Vec::with_capacity(body.len() + model.len() + 12);
    if let Some(m) = renamed {
        out.extend_from_slice(&body[..m.value]);
        write_str(&mut out, model);
        out.extend_from_slice(&body[m.end..]);
    } else {
        // a new key goes last, as in a Python dict (`choices` is there: not the first member)
        out.extend_from_slice(&body[..close]);
        out.extend_from_slice(b",\"model\":");
        write_str(&mut out, model);
        out.extend_from_slice(&body[close..]);
    }
    Some(Answer { body: out, usage })
}

/// `TokenUsage.from_openai` of a `usage` value: zeros unless it is an object.
fn counts(value: &str) -> Option<[u64; 4]> {
    let mut usage = [0; 4];
    if !value.starts_with('{') {
        return Some(usage);
    }
    let (found, _) = members(value)?;
    for m in &found {
        let raw = &value[m.value..m.end];
        match m.key {
            b"prompt_tokens" => usage[0] = count(raw)?,
            b"completion_tokens" => usage[1] = count(raw)?,
            b"cache_creation_input_tokens" => usage[3] = count(raw)?,
            b"prompt_tokens_details" if raw.starts_with('{') => {
                let (details, _) = members(raw)?;
                for d in &details {
                    if d.key == b"cached_tokens" {
                        usage[2] = count(&raw[d.value..d.end])?;
                    }
                }
            }
            _ => {}
        }
    }
    Some(usage)
}

/// A count: `null` or a negative integer 0, a positive one itself; `None` for any other value
/// (a float, a boolean, a string: the Python path decides) or an integer above `u64`.
fn count(raw: &str) -> Option<u64> {
    if raw == "null" {
        return Some(0);
    }
    if let Some(digits) = raw.strip_prefix('-') {
        return digits.bytes().all(|c| c.is_ascii_digit()).then_some(0);
    }
    if !raw.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_request_is_renamed_its_fallbacks_dropped_and_its_budget_made_explicit() {
        let body = br#"{ "model" : "openai/gpt" , "messages":[{"role":"user","content":"hi \u00e9"}],"models":["a/b"], "x": 1.50 }"#;
        let out = request(body, "gpt-4", 4096, false).unwrap();
        assert_eq!(
            out,
            br#"{"model" : "gpt-4","messages":[{"role":"user","content":"hi \u00e9"}],"x": 1.50,"max_tokens":4096}"#
        );
        let stream = request(br#"{"model":"m","max_tokens":5}"#, "u\"q", 4096, true).unwrap();
        assert_eq!(
            json(&stream),
            json(br#"{"model":"u\"q","max_tokens":5,"stream_options":{"include_usage":true}}"#)
        );
        let completion = request(br#"{"model":"m","max_completion_tokens":5}"#, "u", 1, false);
        assert_eq!(
            completion.unwrap(),
            br#"{"model":"u","max_completion_tokens":5}"#
        );
    }

    #[test]
    fn what_the_request_scan_cannot_tell_is_left_to_python() {
        for body in [
            r#"{"model":"a","model":"b"}"#,              // a duplicate
            r#"{"\u006dodel":"a"}"#,                     // an escaped key
            r#"{"messages":[]}"#,                        // no model
            r#"{"model":"a","x":"\ud800"}"#,             // a lone surrogate
            r#"{"model":"a","x":01}"#,                   // invalid JSON
            r#"{"model":"a"} x"#,                        // trailing text
            r#"["model"]"#,                              // not an object
            r#"{"model":"a","stream_options":{"x":1}}"#, // merged by Python on streams
        ] {
            let stream = body.contains("stream_options");
            assert!(request(body.as_bytes(), "u", 1, stream).is_none(), "{body}");
        }
        assert!(request(b"{\"model\":\"a\xff\"}", "u", 1, false).is_none());
        assert!(request(br#"{"model":"a","stream_options":null}"#, "u", 1, false).is_some());
    }

    #[test]
    fn an_answer_is_renamed_and_its_usage_read() {
        let body = br#"{"id":"c","model":"gpt-4-0613","choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":3},"cache_creation_input_tokens":null}}"#;
        let read = answer(body, "openai/gpt-4").unwrap();
        assert_eq!(read.usage, [12, 7, 3, 0]);
        let mut expected = json(body);
        expected["model"] = "openai/gpt-4".into();
        assert_eq!(json(&read.body), expected);
        let missing = answer(b"{\"choices\": [] \n}", "m").unwrap();
        assert_eq!(missing.body, b"{\"choices\": [] \n,\"model\":\"m\"}");
        assert_eq!(missing.usage, [0; 4]);
        for (usage, counts) in [
            ("null", [0; 4]),
            ("\"x\"", [0; 4]),
            (r#"{"prompt_tokens":-3,"completion_tokens":0}"#, [0; 4]),
            (r#"{"prompt_tokens_details":null,"x":1.5}"#, [0; 4]),
            (
                r#"{"prompt_tokens":18446744073709551615}"#,
                [u64::MAX, 0, 0, 0],
            ),
        ] {
            let body = format!(r#"{{"choices":[],"usage":{usage}}}"#);
            assert_eq!(
                answer(body.as_bytes(), "m").unwrap().usage,
                counts,
                "{usage}"
            );
        }
    }

    #[test]
    fn what_the_answer_scan_cannot_tell_is_left_to_python() {
        for body in [
            r#"{"choices":{}}"#,                                // choices not an array
            r#"{"model":"a"}"#,                                 // no choices
            r#"{"choices":[],"choices":[]}"#,                   // a duplicate
            r#"{"choices":[],"usage":{"prompt_tokens":1.0}}"#,  // a float count
            r#"{"choices":[],"usage":{"prompt_tokens":true}}"#, // a boolean count
            r#"{"choices":[],"usage":{"prompt_tokens":"1"}}"#,  // a string count
            r#"{"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":[]}}}"#,
            r#"{"choices":[{"a":"\ud800"}]}"#,
            r#"{"choices":[],}"#,
            r#"{"choices":[],"x":1e400}"#, // past a double: orjson refuses it (Python's 502)
            r#"{"choices":[{"x":[-1.8e308]}]}"#,
            "[]",
            "",
        ] {
            assert!(answer(body.as_bytes(), "m").is_none(), "{body}");
        }
        let long = format!(r#"{{"choices":[],"x":1{}}}"#, "0".repeat(309));
        assert!(answer(long.as_bytes(), "m").is_none());
        // within range: read by the scan (the largest double, an underflow to 0, 308 digits)
        for x in [
            "1.7976931348623157e308",
            "1e-400",
            &format!("1{}", "0".repeat(308)),
        ] {
            let body = format!(r#"{{"choices":[],"x":{x}}}"#);
            assert!(answer(body.as_bytes(), "m").is_some(), "{x}");
        }
    }
}
