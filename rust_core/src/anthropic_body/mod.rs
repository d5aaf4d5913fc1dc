//! The client's OpenAI chat body translated to an Anthropic Messages body by one scan of its
//! text, where the Python path (gateway/providers/anthropic.py, `translate_request`) parses it
//! twice (msgspec's view and orjson's dict), builds the Messages body as objects and writes it
//! with orjson.
//!
//! **Conservative**, as `openai_body`: it answers only for a body that the Python path
//! translates without an error and whose every part it writes exactly as that path does:
//! `system`/`developer`/`user`/`assistant`/`tool` messages whose content is `null`, a string,
//! or text, refusal and image parts (an image as a base64 data URL of a type Anthropic takes, or
//! an http(s) URL, neither written with escapes), assistant `tool_calls`, `cache_control`
//! breakpoints (`chat_body::messages::Cache`) on a message, a part or a tool; `tools`, `tool_choice`,
//! `parallel_tool_calls`; `max_tokens`, `max_completion_tokens`, `temperature` (at most 1),
//! `top_p`, `stop`, `user`, `n` of 1, a `response_format` of type `text`, `logprobs`,
//! `top_logprobs` and the penalties at their neutral values (`false` or 0), and `model`,
//! `models`, `stream`, `stream_options`; any other member only as `null`. Anything else (a JSON
//! response format, an escaped or repeated key, a lone surrogate, a sampling value written
//! with an exponent, a number in a tool's schema or a call's arguments
//! that orjson writes with an exponent) gives `None`, and the caller takes the Python path, the
//! reference: the same body, or the same error. The output is byte for byte what orjson writes
//! for that path's dict (pinned by a Hypothesis test against it,
//! `tests/core/test_anthropic_body.py`): strings are copied as they came unless they hold an
//! escape orjson writes otherwise (`\/`, `\u00e9`, ...), numbers are written as orjson writes
//! the Python values (`chat_body::form`). What it reads as the Gemini translation reads it is
//! shared with it (`crate::chat_body`).

mod messages;
mod tools;

use crate::chat_body::{
    budget, equals, nullable_str, response_format, sampling, stop_list, top_level, Format,
};

/// The Messages body for the client's chat `body` (see the module docs), or `None`.
/// `model`: the upstream's model name; `default_max_tokens`: the budget when the body sets
/// none; `stream`: whether `"stream": true` is added.
pub fn request(body: &[u8], model: &str, default_max_tokens: u64, stream: bool) -> Option<Vec<u8>> {
    // The messages and the tools are translated as they are read, each into a buffer of its
    // own (the budget, written before them, may come after them); the other members are read
    // from their values' text.
    let mut turns = Vec::with_capacity(body.len() + 64);
    let mut tools = Vec::new();
    let (mut system, mut any_tools) = (None, false);
    let (mut max_tokens, mut max_completion_tokens) = (None, None);
    let (mut temperature, mut top_p) = (None, None);
    let (mut stop, mut user) = (None, None);
    let (mut tool_choice, mut serial) = (None, false);
    top_level(body, |scan, key| {
        match key {
            b"messages" => system = Some(messages::turns(scan, &mut turns)?),
            b"tools" => any_tools = tools::read(scan, &mut tools)?,
            _ => {
                let raw = scan.span(1)?;
                match key {
                    // (a member's `null` is no value, or its default, wherever it is read)
                    _ if raw == "null" => {}
                    b"model" | b"models" | b"stream" | b"stream_options" => {}
                    b"max_tokens" => budget(raw, &mut max_tokens)?,
                    b"max_completion_tokens" => budget(raw, &mut max_completion_tokens)?,
                    b"temperature" => sampling(raw, &mut temperature)?,
                    b"top_p" => sampling(raw, &mut top_p)?,
                    b"stop" => stop = Some(raw),
                    b"user" => nullable_str(raw, &mut user)?,
                    b"tool_choice" => tool_choice = Some(raw),
                    // read as the Python path reads it: only `false` asks for anything
                    b"parallel_tool_calls" => serial = raw == "false",
                    b"n" if raw == "1" => {}
                    // a JSON format: a 400
                    b"response_format" => {
                        matches!(response_format(raw)?, Format::Text).then_some(())?;
                    }
                    // the neutral values (`NEUTRAL`) only
                    b"logprobs" | b"top_logprobs" | b"frequency_penalty" | b"presence_penalty" => {
                        equals(raw, 0.0)?;
                    }
                    _ => return None,
                }
            }
        }
        Some(())
    })?;
    if temperature.as_ref().is_some_and(|(t, _)| *t > 1.0) {
        return None; // a 400 naming `temperature`
    }
    let system = system?;
    let mut out = Vec::with_capacity(turns.len() + tools.len() + model.len() + system.size() + 256);
    out.extend_from_slice(b"{\"model\":");
    crate::json::write_str(&mut out, model);
    out.extend_from_slice(b",\"max_tokens\":");
    let budget = max_completion_tokens
        .or(max_tokens)
        .unwrap_or(default_max_tokens);
    out.extend_from_slice(budget.to_string().as_bytes());
    out.extend_from_slice(b",\"messages\":[");
    out.extend_from_slice(&turns);
    out.push(b']');
    system.write(&mut out)?;
    if let Some(raw) = stop {
        out.extend_from_slice(b",\"stop_sequences\":");
        stop_list(raw, &mut out)?;
    }
    for (name, value) in [("temperature", temperature), ("top_p", top_p)] {
        if let Some((_, raw)) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(raw.as_bytes());
        }
    }
    if any_tools {
        out.extend_from_slice(b",\"tools\":");
        out.extend_from_slice(&tools);
    }
    tools::write_choice(tool_choice, any_tools && serial, &mut out)?;
    if let Some(user) = user.filter(|u| !u.is_empty()) {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        user.write_quoted(&mut out)?;
        out.push(b'}');
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true");
    }
    out.push(b'}');
    Some(out)
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
            "max_completion_tokens":7,"stop":[],"user":"","response_format":{"type":"text",
            "json_schema":null},"logprobs":false,"top_logprobs":0,"frequency_penalty":0.0,
            "presence_penalty":-0e1}"#;
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
            format!(r#"{{{user},"temperature":1e-1}}"#), // an exponent
            format!(r#"{{{user},"top_p":0.00001}}"#),    // orjson writes it otherwise
            format!(r#"{{{user},"n":2}}"#),
            format!(r#"{{{user},"seed":0}}"#),
            format!(r#"{{{user},"tools":[{{"function":{{"name":""}}}}]}}"#), // a name of 0 chars
            format!(r#"{{{user},"tool_choice":"any"}}"#),
            format!(r#"{{{user},"tools":[{{"function":{{"name":"f","parameters":{{"a":1,"a":2}}}}}}]}}"#),
            format!(r#"{{{user},"response_format":{{"type":"json_object"}}}}"#), // a 400
            format!(r#"{{{user},"response_format":{{"type":"text","json_schema":1}}}}"#),
            format!(r#"{{{user},"frequency_penalty":0.5}}"#), // a 400
            format!(r#"{{{user},"logprobs":true}}"#),         // a 400
            format!(r#"{{{user},"top_logprobs":"0"}}"#),      // a 400
            format!(r#"{{{user},"\u0073top":"x"}}"#),
            format!(r#"{{{user},"stop":"a","stop":"b"}}"#),
            format!(r#"{{{user},"user":"\ud800"}}"#),
            r#"{"messages":[{"role":"tool","content":"x"}]}"#.to_owned(), // no tool_call_id
            r#"{"messages":[{"role":"tool","content":"x","tool_call_id":""}]}"#.to_owned(),
            r#"{"messages":[{"role":"function","content":"x","name":"f"}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/bmp;base64,AAAA"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAA"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https:\/\/x"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x"}}]},{"role":"user","content":"a"}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":"a","cache_control":{"type":"persistent"}}]}"#.to_owned(),
            r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":1e400}"}}]}]}"#.to_owned(),
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
    fn an_agents_request_is_translated_as_orjson_writes_the_python_path() {
        let body = r#"{"model":"a/b","tools":[{"type":"function","function":{"name":"read",
            "description":"Read a file.","parameters":{"type":"object","properties":{"path":
            {"type":"string"}},"required":["path"]},"strict":true}},{"function":{"name":"now",
            "description":"","parameters":{}},"cache_control":{"type":"ephemeral","ttl":"1h"}}],
            "tool_choice":{"type":"function","function":{"name":"read"}},"parallel_tool_calls":false,
            "messages":[{"role":"system","content":[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}]},
              {"role":"user","content":[{"type":"text","text":"look"},
                {"type":"image_url","image_url":{"url":"data:IMAGE/PNG;base64,iVBO","detail":"low"}},
                {"type":"image_url","image_url":{"url":"https://x/y.png"},"cache_control":{"type":"ephemeral"}}]},
              {"role":"assistant","content":"ok","tool_calls":[{"id":"t1","type":"function",
                "function":{"name":"read","arguments":"{\"path\": \"a.py\", \"n\": 1.50}"}},
                {"id":"t2","function":{"name":"now","arguments":" "}}]},
              {"role":"tool","tool_call_id":"t1","content":[{"type":"text","text":"x"},{"type":"text","text":""}]},
              {"role":"tool","tool_call_id":"t2","content":"12:00","cache_control":{"type":"ephemeral"}}]}"#;
        assert_eq!(
            request(body.as_bytes(), "m", 4096, false)
                .map(|b| String::from_utf8(b).unwrap())
                .unwrap(),
            concat!(
                r#"{"model":"m","max_tokens":4096,"messages":["#,
                r#"{"role":"user","content":[{"type":"text","text":"look"},"#,
                r#"{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBO"}},"#,
                r#"{"type":"image","source":{"type":"url","url":"https://x/y.png"},"cache_control":{"type":"ephemeral"}}]},"#,
                r#"{"role":"assistant","content":[{"type":"text","text":"ok"},"#,
                r#"{"type":"tool_use","id":"t1","name":"read","input":{"path":"a.py","n":1.5}},"#,
                r#"{"type":"tool_use","id":"t2","name":"now","input":{}}]},"#,
                r#"{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"x\n\n"},"#,
                r#"{"type":"tool_result","tool_use_id":"t2","content":"12:00","cache_control":{"type":"ephemeral"}}]}],"#,
                r#""system":[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}],"#,
                r#""tools":[{"name":"read","description":"Read a file.","input_schema":{"type":"object","#,
                r#""properties":{"path":{"type":"string"}},"required":["path"]}},"#,
                r#"{"name":"now","input_schema":{"type":"object","properties":{}},"#,
                r#""cache_control":{"type":"ephemeral","ttl":"1h"}}],"#,
                r#""tool_choice":{"type":"tool","name":"read","disable_parallel_tool_use":true}}"#
            )
        );
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
            (
                r#"a\n\u00e9\"b\/\u001F\t\u0001"#,
                r#"a\né\"b/\u001f\t\u0001"#,
            ),
        ] {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"{raw}"}}]}}"#);
            let out = translated(&body).unwrap();
            let expected = format!(r#"[{{"type":"text","text":"{written}"}}]"#);
            assert!(out.contains(&expected), "{out} {expected}");
        }
    }
}
