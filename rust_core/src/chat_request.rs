//! The chat route's read of a request body's `messages` (gateway/schemas/openai.py,
//! `decode_chat_request`): whether msgspec surely takes them as `ChatRequest` declares them,
//! the prompt's counts as `ChatRequest.prompt_counts` makes them from them, and where they are
//! in the body, so that they are decoded only when a route reads them (most upstreams take
//! the body's own bytes: the OpenAI pass-through, the Anthropic scan).
//!
//! **Conservative by construction.** `None` for whatever it cannot tell as msgspec would: a
//! message or part msgspec refuses, but also an escaped or repeated key, an escaped enum value,
//! a part whose `type` is not its first member, a number past a double's range, nesting deeper
//! than the gateway's bound (64, gateway/schemas/decoding.py; the scan reads the whole body,
//! so a body it answers for nests no deeper), invalid UTF-8 or JSON anywhere. The caller then
//! decodes the whole body with msgspec, which decides, and refuses with its own message.
//! What it does not read are the other members' types and values (the model, the sampling
//! parameters, the tools, ...): the caller decodes those with msgspec from the body without
//! its messages, so every refusal there is msgspec's own.

use crate::json_scan::{escape_end, once, Scan, MAX_DEPTH};

/// Where a body's `messages` array is, and the prompt's counts over its messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// The array's span in the body (its brackets included).
    pub messages: (usize, usize),
    /// Characters of the text contents, text parts, and tool calls' names and arguments.
    pub chars: u64,
    /// Image parts.
    pub images: u64,
    /// Content parts (a string content counts none).
    pub parts: u64,
    /// Messages.
    pub count: u64,
    /// Characters of the tools' names and of their `parameters` as msgspec writes them again
    /// (`None`: not told, for a form the scan does not write as msgspec would, such as a
    /// number with a fraction; the tools' types are msgspec's to check either way).
    pub tool_chars: Option<u64>,
}

/// The depth at which values inside a message are read (they are 3 to 6 levels down: every
/// place is given more than its own, so what the scan answers for nests at most 64 deep, and
/// a little less is left to msgspec).
const INNER: u32 = 8;

/// The body's messages read and counted, or `None` (above).
pub fn read(body: &[u8]) -> Option<Read> {
    let text = std::str::from_utf8(body).ok()?;
    let mut scan = Scan::new(text);
    let mut read = Read::default();
    let mut seen = [false; 2];
    read.tool_chars = Some(0);
    scan.members(|scan, key| {
        if key == b"messages" {
            once(&mut seen[0])?;
            scan.ws();
            let start = scan.i;
            messages(scan, &mut read)?;
            read.messages = (start, scan.i);
        } else if key == b"tools" {
            once(&mut seen[1])?;
            scan.ws();
            let start = scan.i;
            // Validated as it is counted (as `value` validates, within the same bound); where
            // the count cannot be told, validated alone from its start.
            read.tool_chars = tool_chars(scan);
            if read.tool_chars.is_none() {
                scan.i = start;
                scan.value(1)?;
            }
        } else {
            scan.value(1)?;
        }
        Some(true)
    })?;
    let seen = seen[0];
    (seen && scan.at_end()).then_some(read)
}

fn messages(scan: &mut Scan<'_>, read: &mut Read) -> Option<()> {
    scan.open(b'[')?;
    if scan.empty(b']') {
        return None; // at least one message (msgspec's refusal)
    }
    loop {
        message(scan, read)?;
        read.count += 1;
        if scan.next(b']')? {
            return Some(());
        }
    }
}

fn message(scan: &mut Scan<'_>, read: &mut Read) -> Option<()> {
    let mut seen = [false; 6];
    scan.members(|scan, key| {
        match key {
            b"role" => {
                once(&mut seen[0])?;
                scan.ws();
                let role = scan.plain_string()?;
                matches!(
                    role,
                    b"system" | b"developer" | b"user" | b"assistant" | b"tool" | b"function"
                )
                .then_some(())?;
            }
            b"content" => {
                once(&mut seen[1])?;
                content(scan, read)?;
            }
            b"name" => {
                once(&mut seen[2])?;
                optional_string(scan)?;
            }
            b"tool_call_id" => {
                once(&mut seen[3])?;
                optional_string(scan)?;
            }
            b"tool_calls" => {
                once(&mut seen[4])?;
                tool_calls(scan, read)?;
            }
            b"cache_control" => {
                once(&mut seen[5])?;
                cache_control(scan)?;
            }
            _ => scan.value(INNER)?,
        }
        Some(true)
    })?;
    seen[0].then_some(()) // `role` is required
}

/// `null`, a string, or an array of parts.
fn content(scan: &mut Scan<'_>, read: &mut Read) -> Option<()> {
    scan.ws();
    match *scan.b.get(scan.i)? {
        b'n' => scan.literal(b"null"),
        b'"' => {
            read.chars += scan.counted_string()?;
            Some(())
        }
        b'[' => {
            scan.i += 1;
            if scan.empty(b']') {
                return Some(());
            }
            loop {
                part(scan, read)?;
                read.parts += 1;
                if scan.next(b']')? {
                    return Some(());
                }
            }
        }
        _ => None,
    }
}

/// The part kinds (the union's tags), by their `type`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Image,
    Audio,
    File,
    Refusal,
}

/// A content part: `type` first (the tag), then its kind's members.
fn part(scan: &mut Scan<'_>, read: &mut Read) -> Option<()> {
    scan.open(b'{')?;
    if scan.empty(b'}') || scan.key()? != b"type" {
        return None;
    }
    scan.ws();
    let kind = match scan.plain_string()? {
        b"text" => Kind::Text,
        b"image_url" => Kind::Image,
        b"input_audio" => Kind::Audio,
        b"file" => Kind::File,
        b"refusal" => Kind::Refusal,
        _ => return None,
    };
    let (mut required, mut cache) = (false, false);
    while !scan.next(b'}')? {
        let key = scan.key()?;
        match (kind, key) {
            (_, b"type") => return None, // a repeated tag
            (Kind::Text, b"text") => {
                once(&mut required)?;
                read.chars += string_chars(scan)?;
            }
            (Kind::Refusal, b"refusal") => {
                once(&mut required)?;
                string_chars(scan)?;
            }
            (Kind::Image, b"image_url") => {
                once(&mut required)?;
                image_url(scan)?;
            }
            (Kind::Audio, b"input_audio") | (Kind::File, b"file") => {
                once(&mut required)?;
                scan.ws();
                if scan.b.get(scan.i) != Some(&b'{') {
                    return None;
                }
                scan.value(INNER)?;
            }
            (Kind::Text | Kind::Image, b"cache_control") => {
                once(&mut cache)?;
                cache_control(scan)?;
            }
            _ => scan.value(INNER)?,
        }
    }
    if kind == Kind::Image {
        read.images += 1;
    }
    required.then_some(())
}

/// `{"url": a string of one character or more, "detail"?: null | "auto" | "low" | "high"}`.
fn image_url(scan: &mut Scan<'_>) -> Option<()> {
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"url" => {
                once(&mut seen[0])?;
                (string_chars(scan)? > 0).then_some(())?;
            }
            b"detail" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    matches!(scan.plain_string()?, b"auto" | b"low" | b"high").then_some(())?;
                }
            }
            _ => scan.value(INNER)?,
        }
        Some(true)
    })?;
    seen[0].then_some(())
}

/// `null` or an array of `{"id": str, "function": {"name": str, "arguments": str}, "type"?:
/// "function"}`; the names' and arguments' characters counted.
fn tool_calls(scan: &mut Scan<'_>, read: &mut Read) -> Option<()> {
    if scan.null()? {
        return Some(());
    }
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(());
    }
    loop {
        let mut seen = [false; 3];
        scan.members(|scan, key| {
            match key {
                b"id" => {
                    once(&mut seen[0])?;
                    string_chars(scan)?;
                }
                b"function" => {
                    once(&mut seen[1])?;
                    read.chars += function_call(scan)?;
                }
                b"type" => {
                    once(&mut seen[2])?;
                    scan.ws();
                    (scan.plain_string()? == b"function").then_some(())?;
                }
                _ => scan.value(INNER)?,
            }
            Some(true)
        })?;
        (seen[0] && seen[1]).then_some(())?;
        if scan.next(b']')? {
            return Some(());
        }
    }
}

/// `{"name": str, "arguments": str}`: the characters of both.
fn function_call(scan: &mut Scan<'_>) -> Option<u64> {
    let (mut name, mut arguments) = (None, None);
    scan.members(|scan, key| {
        match key {
            b"name" if name.is_none() => name = Some(string_chars(scan)?),
            b"arguments" if arguments.is_none() => arguments = Some(string_chars(scan)?),
            b"name" | b"arguments" => return None,
            _ => scan.value(INNER)?,
        }
        Some(true)
    })?;
    Some(name? + arguments?)
}

/// `null` or `{"type": "ephemeral", "ttl"?: null | "5m" | "1h"}`.
fn cache_control(scan: &mut Scan<'_>) -> Option<()> {
    if scan.null()? {
        return Some(());
    }
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"type" => {
                once(&mut seen[0])?;
                scan.ws();
                (scan.plain_string()? == b"ephemeral").then_some(())?;
            }
            b"ttl" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    matches!(scan.plain_string()?, b"5m" | b"1h").then_some(())?;
                }
            }
            _ => scan.value(INNER)?,
        }
        Some(true)
    })?;
    seen[0].then_some(())
}

/// `null` or an array of tools: the characters `prompt_counts` counts for them.
fn tool_chars(scan: &mut Scan<'_>) -> Option<u64> {
    if scan.null()? {
        return Some(0);
    }
    scan.open(b'[')?;
    let mut total = 0;
    if scan.empty(b']') {
        return Some(0);
    }
    loop {
        let mut function = None;
        scan.members(|scan, key| {
            if key == b"function" && function.is_none() {
                function = Some(function_chars(scan)?);
            } else if key == b"function" {
                return None;
            } else {
                scan.value(INNER)?;
            }
            Some(true)
        })?;
        total += function?;
        if scan.next(b']')? {
            return Some(total);
        }
    }
}

/// A tool's function: its name's characters and the length of its `parameters` as
/// `msgspec.json.encode` writes them (`null` when there are none).
fn function_chars(scan: &mut Scan<'_>) -> Option<u64> {
    let (mut name, mut parameters) = (None, None);
    scan.members(|scan, key| {
        match key {
            b"name" if name.is_none() => name = Some(string_chars(scan)?),
            // (at the depth `value(1)` reads it from the tools' array: body, tools, tool,
            // function, parameters)
            b"parameters" if parameters.is_none() => parameters = Some(encoded_len(scan, 4)?),
            b"name" | b"parameters" => return None,
            _ => scan.value(INNER)?,
        }
        Some(true)
    })?;
    Some(name? + parameters.unwrap_or(4))
}

/// The length of a JSON value (valid, within the bound) as msgspec writes it again once
/// decoded into Python objects: no whitespace, members and elements in order, a string's
/// characters escaped as msgspec escapes them. `None` for what is not certain: a number with a
/// fraction or an exponent (written in msgspec's own float form), a key with escapes or
/// repeated in its object (a dict keeps one), an object of more than 64 members (the repeat
/// check is quadratic), nesting past the bound (`depth`: as `Scan::value` counts it).
fn encoded_len(scan: &mut Scan<'_>, depth: u32) -> Option<u64> {
    scan.ws();
    let b = scan.b;
    match *b.get(scan.i)? {
        b'"' => {
            let (start, end, escaped) = scan.string()?;
            Some(
                2 + if escaped {
                    escaped_len(b.get(start..end)?)?
                } else {
                    (end - start) as u64
                },
            )
        }
        b'{' if depth < MAX_DEPTH => {
            scan.i += 1;
            let mut len = 2;
            if scan.empty(b'}') {
                return Some(len);
            }
            let mut keys: Vec<&[u8]> = Vec::new();
            loop {
                let key = scan.key()?;
                if keys.len() == 64 || keys.contains(&key) {
                    return None;
                }
                keys.push(key);
                len += key.len() as u64 + 3 + encoded_len(scan, depth + 1)?; // "key":
                if scan.next(b'}')? {
                    return Some(len);
                }
                len += 1;
            }
        }
        b'[' if depth < MAX_DEPTH => {
            scan.i += 1;
            let mut len = 2;
            if scan.empty(b']') {
                return Some(len);
            }
            loop {
                len += encoded_len(scan, depth + 1)?;
                if scan.next(b']')? {
                    return Some(len);
                }
                len += 1;
            }
        }
        b't' => scan.literal(b"true").map(|()| 4),
        b'f' => scan.literal(b"false").map(|()| 5),
        b'n' => scan.literal(b"null").map(|()| 4),
        b'-' | b'0'..=b'9' => {
            let start = scan.i;
            scan.number()?;
            let text = b.get(start..scan.i)?;
            if text.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                return None;
            }
            Some(if text == b"-0" { 1 } else { text.len() as u64 })
        }
        _ => None,
    }
}

/// The length msgspec writes for a string's text that came with escapes (valid ones): each
/// escape as its character is written (`"`, `\\` and the five short control escapes two bytes,
/// other control characters six, everything else as UTF-8), the rest as it came.
fn escaped_len(text: &[u8]) -> Option<u64> {
    let mut len = 0;
    let mut i = 0;
    while let Some(found) = memchr::memchr(b'\\', text.get(i..)?) {
        let at = i + found;
        let end = escape_end(text, at)?;
        len += (at - i) as u64
            + match *text.get(at + 1)? {
                b'/' => 1,
                b'u' if end - at == 12 => 4, // a surrogate pair: one character of 4 bytes
                b'u' => {
                    let code = std::str::from_utf8(text.get(at + 2..at + 6)?).ok()?;
                    match u32::from_str_radix(code, 16).ok()? {
                        // (a short escape; a character of two bytes)
                        0x08 | 0x09 | 0x0A | 0x0C | 0x0D | 0x22 | 0x5C | 0x80..=0x7FF => 2,
                        0..=0x1F => 6,
                        0x20..=0x7F => 1,
                        _ => 3,
                    }
                }
                _ => 2, // \" \\ \b \f \n \r \t
            };
        i = end;
    }
    Some(len + (text.len() - i) as u64)
}

/// `null` or a string.
fn optional_string(scan: &mut Scan<'_>) -> Option<()> {
    if !scan.null()? {
        scan.string()?;
    }
    Some(())
}

/// A string (not `null`): its characters once unescaped.
fn string_chars(scan: &mut Scan<'_>) -> Option<u64> {
    scan.ws();
    if scan.b.get(scan.i) != Some(&b'"') {
        return None;
    }
    scan.counted_string()
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use super::{read, Read};

    fn counts(body: &str) -> Option<(u64, u64, u64, u64)> {
        read(body.as_bytes()).map(|r| (r.chars, r.images, r.parts, r.count))
    }

    #[test]
    fn counts_what_prompt_counts_counts() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"h\u00e9llo \ud83d\ude00"},
                {"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
                "function":{"name":"ls","arguments":"{\"a\":1}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"ok","cache_control":{"type":"ephemeral"}}
        ],"tools":[{"type":"function","function":{"name":"ls"}}],"stream":true}"#;
        // 9 + 7 ("héllo 😀": each escape one character) + 2 + 7 + 2
        assert_eq!(counts(body), Some((9 + 7 + 2 + 7 + 2, 1, 2, 4)));
        let r = read(body.as_bytes()).unwrap();
        assert!(body[r.messages.0..r.messages.1].starts_with("[\n"));
        assert!(body[r.messages.0..r.messages.1].ends_with(']'));
    }

    #[test]
    fn counts_the_tools_as_msgspec_writes_their_parameters_again() {
        let tools = |tools: &str| {
            let body = format!(r#"{{"messages":[{{"role":"user"}}],"tools":{tools}}}"#);
            read(body.as_bytes()).unwrap().tool_chars
        };
        assert_eq!(tools("null"), Some(0));
        assert_eq!(tools(r#"[{"function":{"name":"ls"}}]"#), Some(2 + 4));
        let parameters = r#"{ "type" : "object", "a": [1, -0, true, null, false, {}],
            "d": "\u00e9\/\n\u0001\ud83d\ude00\"\\x" }"#;
        let written = r#"{"type":"object","a":[1,0,true,null,false,{}],"d":"é/\n\u0001😀\"\\x"}"#;
        let tool = format!(
            r#"[{{"type":"function","function":{{"name":"ü","parameters":{parameters}}}}}]"#
        );
        assert_eq!(tools(&tool), Some(1 + written.len() as u64));
        assert_eq!(
            tools(r#"[{"function":{"name":"f","parameters":{"a":1.5}}}]"#),
            None
        );
        assert_eq!(
            tools(r#"[{"function":{"name":"f","parameters":{"a":1,"a":2}}}]"#),
            None
        );
        assert_eq!(tools(r#"[{"function":{"name":"f","name":"g"}}]"#), None);
        assert_eq!(
            tools(r#"[{"function":{"name":"f","parameters":{"\u0061":1}}}]"#),
            None
        );
    }

    #[test]
    fn leaves_what_msgspec_refuses_or_it_cannot_tell() {
        let refused = [
            r#"{"model":"m"}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","messages":[{"content":"a"}]}"#,
            r#"{"model":"m","messages":[{"role":"bot","content":"a"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":1}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"text":"a","type":"text"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":""}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":[]}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","cache_control":{"type":"persistent"}}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":null,"function":{"name":"f","arguments":"{}"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"us\u0065r"}]}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"messages":[{"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"user"}],"x":1e999}"#,
            r#"{"model":"m","messages":[{"role":"user"}]} x"#,
        ];
        for body in refused {
            assert_eq!(read(body.as_bytes()), None, "{body}");
        }
        assert_eq!(
            read(b"{\"model\":\"\xff\",\"messages\":[{\"role\":\"user\"}]}"),
            None
        );
    }

    #[test]
    fn tools_nested_past_the_bound_are_refused_as_value_refuses_them() {
        let tools = |depth: usize| {
            format!(
                r#"{{"messages":[{{"role":"user"}}],"tools":[{{"function":{{"name":"f","parameters":{}{}}}}}]}}"#,
                "[".repeat(depth - 4),
                "]".repeat(depth - 4)
            )
        };
        // counted where they nest 64 deep with the body, refused past it (not left to
        // `value`, which would refuse them too)
        assert_eq!(
            read(tools(64).as_bytes()).unwrap().tool_chars,
            Some(1 + 2 * 60)
        );
        assert_eq!(read(tools(65).as_bytes()), None);
        // a form the count cannot tell is validated alone: the same answer as before
        let odd = r#"{"messages":[{"role":"user"}],"tools":[{"function":{"name":"f","parameters":{"a":1.5}}}]}"#;
        assert_eq!(read(odd.as_bytes()).unwrap().tool_chars, None);
        let broken = r#"{"messages":[{"role":"user"}],"tools":[{"function":{"name":"f","parameters":{"a":1.5,}}}]}"#;
        assert_eq!(read(broken.as_bytes()), None);
    }

    #[test]
    fn leaves_a_body_nested_past_the_bound() {
        let nested = |depth: usize| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user"}}],"x":{}{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(read(nested(64).as_bytes()).is_some());
        assert_eq!(read(nested(65).as_bytes()), None);
        let inner = |depth: usize| {
            format!(
                r#"{{"messages":[{{"role":"user","x":{}{}}}]}}"#,
                "[".repeat(depth - 3),
                "]".repeat(depth - 3)
            )
        };
        assert_eq!(read(inner(65).as_bytes()), None);
        assert_eq!(
            read(inner(11).as_bytes()),
            Some(Read {
                messages: (12, 50),
                chars: 0,
                images: 0,
                parts: 0,
                count: 1,
                tool_chars: Some(0),
            })
        );
    }
}
