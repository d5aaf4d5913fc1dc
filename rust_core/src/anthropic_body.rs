//! The client's OpenAI chat body translated to an Anthropic Messages body by one scan of its
//! text, where the Python path (gateway/providers/anthropic.py, `translate_request`) parses it
//! twice (msgspec's view and orjson's dict), builds the Messages body as objects and writes it
//! with orjson.
//!
//! **Conservative**, as `openai_body`: it answers only for a body that the Python path
//! translates without an error and whose every part it writes exactly as that path does:
//! `system`/`developer`/`user`/`assistant` messages whose content is `null`, a string, or text
//! and refusal parts (none with a `cache_control`, no assistant `tool_calls` but an empty list);
//! `max_tokens`, `max_completion_tokens`, `temperature` (at most 1), `top_p`, `stop`, `user`,
//! `n` of 1, and `model`, `models`, `stream`, `stream_options`, `parallel_tool_calls`, which
//! the translation does not read without tools; any other member only as `null`. Anything else
//! (tools, images, tool results, a JSON response format, a neutral value such as `"logprobs":
//! false`, an escaped or repeated key, a lone surrogate, a sampling value written without a
//! fraction or with an exponent) gives `None`, and the caller takes the Python path, the
//! reference: the same body, or the same error. The output is byte for byte what orjson writes
//! for that path's dict (pinned by a Hypothesis test against it,
//! `tests/core/test_anthropic_body.py`): strings are copied as they came unless they hold an
//! escape orjson writes otherwise (`\/`, `\u00e9`, ...), numbers are written as orjson writes
//! the Python values.

use crate::json::write_str;
use crate::json_scan::{once, unescape, Scan};
use crate::openai_body::members;

/// The Messages body for the client's chat `body` (see the module docs), or `None`.
/// `model`: the upstream's model name; `default_max_tokens`: the budget when the body sets
/// none; `stream`: whether `"stream": true` is added.
pub fn request(body: &[u8], model: &str, default_max_tokens: u64, stream: bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let (found, _) = members(text)?;
    let mut messages = None;
    let (mut max_tokens, mut max_completion_tokens) = (None, None);
    let (mut temperature, mut top_p) = (None, None);
    let (mut stop, mut user) = (None, None);
    for m in &found {
        let raw = &text[m.value..m.end];
        match m.key {
            b"model" | b"models" | b"stream" | b"stream_options" | b"parallel_tool_calls" => {}
            b"messages" => messages = Some(raw),
            b"max_tokens" => budget(raw, &mut max_tokens)?,
            b"max_completion_tokens" => budget(raw, &mut max_completion_tokens)?,
            b"temperature" => sampling(raw, &mut temperature)?,
            b"top_p" => sampling(raw, &mut top_p)?,
            b"stop" => stop = (raw != "null").then_some(raw),
            b"user" => nullable_str(raw, &mut user)?,
            b"n" if raw == "1" => {}
            _ if raw == "null" => {}
            _ => return None,
        }
    }
    if temperature.as_ref().is_some_and(|(t, _)| *t > 1.0) {
        return None; // a 400 naming `temperature`
    }
    let mut out = Vec::with_capacity(body.len() + model.len() + 128);
    out.extend_from_slice(b"{\"model\":");
    write_str(&mut out, model);
    out.extend_from_slice(b",\"max_tokens\":");
    let budget = max_completion_tokens
        .or(max_tokens)
        .unwrap_or(default_max_tokens);
    out.extend_from_slice(budget.to_string().as_bytes());
    out.extend_from_slice(b",\"messages\":[");
    let system = turns(messages?, &mut out)?;
    out.push(b']');
    if !system.is_empty() {
        out.extend_from_slice(b",\"system\":\"");
        for (i, text) in system.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(br"\n\n");
            }
            text.write(&mut out)?;
        }
        out.push(b'"');
    }
    if let Some(raw) = stop {
        out.extend_from_slice(b",\"stop_sequences\":");
        stop_sequences(raw, &mut out)?;
    }
    for (name, value) in [("temperature", temperature), ("top_p", top_p)] {
        if let Some((_, raw)) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(raw.as_bytes());
        }
    }
    if let Some(user) = user.filter(|u| !u.is_empty()) {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":\"");
        user.write(&mut out)?;
        out.extend_from_slice(b"\"}");
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true");
    }
    out.push(b'}');
    Some(out)
}

/// A token budget into `slot`: `null` or a positive integer; 0 counts as unset, as the Python
/// path's `or` reads it. `None` for anything else.
fn budget(raw: &str, slot: &mut Option<u64>) -> Option<()> {
    let mut scan = Scan::new(raw);
    scan.opt_u64(slot)?;
    *slot = slot.filter(|&n| n > 0);
    scan.at_end().then_some(())
}

/// `temperature` or `top_p` into `slot`: `null`, or a number written with a fraction and
/// without an exponent, 0 or from 0.0001 to 2: its value and the text orjson writes for it (the
/// shortest text that reads back as the same `f64`, as Rust's `Debug` writes it in that range).
/// `None` for anything else (an integer, whose Python value may be an `int`, an exponent, a
/// sign, a value orjson writes otherwise).
fn sampling(raw: &str, slot: &mut Option<(f64, String)>) -> Option<()> {
    if raw == "null" {
        *slot = None;
        return Some(());
    }
    let (whole, fraction) = raw.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let value: f64 = raw.parse().ok()?;
    if value != 0.0 && !(1e-4..=2.0).contains(&value) {
        return None;
    }
    *slot = Some((value, format!("{value:?}")));
    Some(())
}

/// A string or `null` into `slot`.
fn nullable_str<'a>(raw: &'a str, slot: &mut Option<Text<'a>>) -> Option<()> {
    let mut scan = Scan::new(raw);
    *slot = if scan.null()? {
        None
    } else {
        Some(Text::read(&mut scan)?)
    };
    scan.at_end().then_some(())
}

/// `stop` (a string or an array of strings) as `stop_sequences`' array.
fn stop_sequences(raw: &str, out: &mut Vec<u8>) -> Option<()> {
    fn quoted(scan: &mut Scan<'_>, out: &mut Vec<u8>) -> Option<()> {
        out.push(b'"');
        Text::read(scan)?.write(out)?;
        out.push(b'"');
        Some(())
    }
    let mut scan = Scan::new(raw);
    out.push(b'[');
    if raw.starts_with('"') {
        quoted(&mut scan, out)?;
    } else {
        scan.open(b'[')?;
        if !scan.empty(b']') {
            for i in 0.. {
                if i > 0 {
                    out.push(b',');
                }
                scan.ws();
                quoted(&mut scan, out)?;
                if scan.next(b']')? {
                    break;
                }
            }
        }
    }
    out.push(b']');
    scan.at_end().then_some(())
}

/// A string's text as it came between its quotes (validated by the scan: its escapes valid,
/// its surrogates paired), and whether it has escapes.
#[derive(Clone, Copy)]
struct Text<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> Text<'a> {
    /// The string at the scan's position.
    fn read(scan: &mut Scan<'a>) -> Option<Self> {
        let (start, end, escaped) = scan.string()?;
        Some(Self {
            raw: scan.s.get(start..end)?,
            escaped,
        })
    }

    /// (An escape is never empty: the raw text is empty only when the text is.)
    fn is_empty(self) -> bool {
        self.raw.is_empty()
    }

    /// Writes the text between quotes as orjson writes it: as it came when it has no escape
    /// orjson would write otherwise (the text holds no quote, backslash or control character
    /// that is not escaped: the scan refuses a raw one), else unescaped and escaped again.
    fn write(self, out: &mut Vec<u8>) -> Option<()> {
        if !self.escaped || orjson_escapes(self.raw) {
            out.extend_from_slice(self.raw.as_bytes());
        } else {
            let start = out.len();
            write_str(out, &unescape(self.raw)?);
            out.remove(start); // the quotes: the caller writes them
            out.pop();
        }
        Some(())
    }
}

/// Whether every escape in `raw` (a valid string's text) is the one orjson writes for its
/// character: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, and `\u00xx` (lower-case hex) for
/// the other control characters; not `\/` or any other `\u`.
fn orjson_escapes(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &b[i..]).map(|off| i + off) {
        match b.get(at + 1) {
            Some(b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f') => i = at + 2,
            Some(b'u') => {
                let Some(&[b'0', b'0', high @ (b'0' | b'1'), low]) = b.get(at + 2..at + 6) else {
                    return false;
                };
                let hex = b"0123456789abcdef";
                let Some(low) = hex.iter().position(|&h| h == low) else {
                    return false;
                };
                let code = usize::from(high - b'0') * 16 + low;
                if matches!(code, 0x08 | 0x09 | 0x0A | 0x0C | 0x0D) {
                    return false; // written with its short escape
                }
                i = at + 6;
            }
            _ => return false,
        }
    }
    true
}

/// The roles of the turns Anthropic takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// Writes the turns of `messages` (a JSON array) into `out`, consecutive turns of one role as
/// one, empty ones left out; returns the system's texts (the system and developer messages'
/// texts, joined by a blank line within a message and between messages, of the messages whose
/// text is not empty). `None` when a message is one the module docs leave to Python, or when
/// no turn has content.
fn turns<'a>(messages: &'a str, out: &mut Vec<u8>) -> Option<Vec<Text<'a>>> {
    let mut scan = Scan::new(messages);
    let mut system = Vec::new();
    let mut open: Option<Role> = None; // the role of the turn written last, still open
    scan.open(b'[')?;
    if !scan.empty(b']') {
        loop {
            let (role, texts) = message(&mut scan)?;
            match role {
                None => {
                    // `text_of`: the parts joined by a blank line, so empty only if it is one
                    // empty text or none
                    if texts.len() > 1 || texts.first().is_some_and(|t| !t.is_empty()) {
                        system.extend(texts);
                    }
                }
                Some(role) => {
                    let mut blocks = texts.iter().filter(|t| !t.is_empty()).peekable();
                    if blocks.peek().is_some() {
                        if open == Some(role) {
                            out.push(b',');
                        } else {
                            if open.is_some() {
                                out.extend_from_slice(b"]},");
                            }
                            out.extend_from_slice(match role {
                                Role::User => b"{\"role\":\"user\",\"content\":[",
                                Role::Assistant => b"{\"role\":\"assistant\",\"content\":[",
                            });
                            open = Some(role);
                        }
                        for (i, text) in blocks.enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"");
                            text.write(out)?;
                            out.extend_from_slice(b"\"}");
                        }
                    }
                }
            }
            if scan.next(b']')? {
                break;
            }
        }
    }
    open?; // no turn with content: a 400
    out.extend_from_slice(b"]}");
    Some(system)
}

/// One message: its role (`None` for system and developer) and its content's texts (a string
/// content is one text, `null` none; refusal parts count as text).
fn message<'a>(scan: &mut Scan<'a>) -> Option<(Option<Role>, Vec<Text<'a>>)> {
    let mut role: Option<Option<Role>> = None;
    let mut texts = Vec::new();
    let mut seen = [false; 4];
    scan.members(|scan, key| {
        match key {
            b"role" => {
                once(&mut seen[0])?;
                scan.ws();
                role = Some(match scan.plain_string()? {
                    b"system" | b"developer" => None,
                    b"user" => Some(Role::User),
                    b"assistant" => Some(Role::Assistant),
                    _ => return None, // tool results, functions: Python's
                });
            }
            b"content" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    if scan.b.get(scan.i) == Some(&b'"') {
                        texts.push(Text::read(scan)?);
                    } else {
                        parts(scan, &mut texts)?;
                    }
                }
            }
            b"tool_calls" => {
                once(&mut seen[2])?;
                if !scan.null()? {
                    scan.open(b'[')?;
                    scan.empty(b']').then_some(())?;
                }
            }
            b"cache_control" => {
                once(&mut seen[3])?;
                scan.null()?.then_some(())?;
            }
            _ => return Some(false), // `name`, `tool_call_id`, unknown: not read
        }
        Some(true)
    })?;
    Some((role?, texts))
}

/// The texts of a content array of text and refusal parts (none with a `cache_control`).
fn parts<'a>(scan: &mut Scan<'a>, texts: &mut Vec<Text<'a>>) -> Option<()> {
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(());
    }
    loop {
        let (mut kind, mut text, mut refusal) = (None, None, None);
        let mut seen = [false; 4];
        scan.members(|scan, key| {
            match key {
                b"type" => {
                    once(&mut seen[0])?;
                    scan.ws();
                    kind = Some(scan.plain_string()?);
                }
                b"text" => {
                    once(&mut seen[1])?;
                    scan.ws();
                    text = Some(Text::read(scan)?);
                }
                b"refusal" => {
                    once(&mut seen[2])?;
                    scan.ws();
                    refusal = Some(Text::read(scan)?);
                }
                b"cache_control" => {
                    once(&mut seen[3])?;
                    scan.null()?.then_some(())?;
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        texts.push(match kind? {
            b"text" => text?,
            b"refusal" => refusal?,
            _ => return None, // images, audio, files: Python's
        });
        if scan.next(b']')? {
            return Some(());
        }
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn translated(body: &str) -> Option<String> {
        request(body.as_bytes(), "claude-x", 4096, true).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn a_conversation_is_translated_as_orjson_writes_the_python_path() {
        let body = r#"{"model":"anthropic/c","stream":true,"temperature":0.70,"top_p":1.0,
            "max_tokens":100,"stop":"\u0045ND","user":"u\"1","n":1,"seed":null,
            "messages":[{"role":"system","content":"Be brief."},
              {"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":""}]},
              {"role":"user","content":"hi \u00e9\n"},
              {"role":"user","content":[{"type":"text","text":"more"},{"type":"refusal","refusal":"no"}]},
              {"role":"assistant","content":null,"tool_calls":[]},
              {"role":"assistant","content":"ok","name":"bot"},
              {"role":"user","content":""},
              {"role":"user","content":[{"type":"text","text":"x","cache_control":null}]}]}"#;
        assert_eq!(
            translated(body).unwrap(),
            concat!(
                r#"{"model":"claude-x","max_tokens":100,"messages":["#,
                r#"{"role":"user","content":[{"type":"text","text":"hi é\n"},"#,
                r#"{"type":"text","text":"more"},{"type":"text","text":"no"}]},"#,
                r#"{"role":"assistant","content":[{"type":"text","text":"ok"}]},"#,
                r#"{"role":"user","content":[{"type":"text","text":"x"}]}],"#,
                r#""system":"Be brief.\n\na\n\n","stop_sequences":["END"],"temperature":0.7,"#,
                r#""top_p":1.0,"metadata":{"user_id":"u\"1"},"stream":true}"#
            )
        );
        let plain = r#"{"model":"a/b","messages":[{"role":"user","content":"hi"}],"max_tokens":5,
            "max_completion_tokens":7,"stop":[],"user":""}"#;
        assert_eq!(
            request(plain.as_bytes(), "m", 4096, false).unwrap(),
            br#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stop_sequences":[]}"#
        );
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_python() {
        let user = r#""messages":[{"role":"user","content":"hi"}]"#;
        for body in [
            format!(r#"{{{user},"temperature":1.5}}"#),  // a 400
            format!(r#"{{{user},"temperature":1}}"#),    // maybe an int in Python
            format!(r#"{{{user},"temperature":1e-1}}"#), // an exponent
            format!(r#"{{{user},"top_p":0.00001}}"#),    // orjson writes it otherwise
            format!(r#"{{{user},"n":2}}"#),
            format!(r#"{{{user},"seed":0}}"#),
            format!(r#"{{{user},"tools":[]}}"#),
            format!(r#"{{{user},"response_format":{{"type":"text"}}}}"#),
            format!(r#"{{{user},"\u0073top":"x"}}"#),
            format!(r#"{{{user},"stop":"a","stop":"b"}}"#),
            format!(r#"{{{user},"user":"\ud800"}}"#),
            r#"{"messages":[{"role":"tool","content":"x","tool_call_id":"t"}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":"a","cache_control":{"type":"ephemeral"}}]}"#.to_owned(),
            r#"{"messages":[{"role":"assistant","content":"a","tool_calls":[{"id":"c"}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","role":"user","content":"a"}]}"#.to_owned(),
            r#"{"messages":[{"role":"system","content":"only a system"}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":""}]}"#.to_owned(),
            r#"{"messages":[{"content":"no role"}]}"#.to_owned(),
            r#"{"model":"a"}"#.to_owned(),
        ] {
            assert!(translated(&body).is_none(), "{body}");
        }
    }

    #[test]
    fn a_text_is_written_as_it_came_unless_orjson_escapes_it_otherwise() {
        for (raw, written) in [
            ("plain é", "plain é"),
            (
                r#"a\"b\\c\nd\re\tf\bg\fh\u0001\u001f"#,
                r#"a\"b\\c\nd\re\tf\bg\fh\u0001\u001f"#,
            ),
            (r"\/", "/"),
            (r"\u00e9\u0041", "éA"),
            (r"\u000a\u0009\u001F", r"\n\t\u001f"),
            (r"\ud83d\ude00", "😀"),
        ] {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"{raw}"}}]}}"#);
            let out = translated(&body).unwrap();
            let expected = format!(r#"[{{"type":"text","text":"{written}"}}]"#);
            assert!(out.contains(&expected), "{out} {expected}");
        }
    }

    #[test]
    fn sampling_values_are_written_as_orjson_writes_them() {
        for (raw, written) in [
            ("0.0", "0.0"),
            ("0.7000", "0.7"),
            ("1.0", "1.0"),
            ("0.0001", "0.0001"),
            ("0.30000000000000004", "0.30000000000000004"),
        ] {
            let mut slot = None;
            sampling(raw, &mut slot).unwrap();
            assert_eq!(slot.unwrap().1, written, "{raw}");
        }
        for raw in ["1", "-0.5", "1e0", "0.00009", ".5", "5.", "0x1"] {
            assert!(sampling(raw, &mut None).is_none(), "{raw}");
        }
    }
}
