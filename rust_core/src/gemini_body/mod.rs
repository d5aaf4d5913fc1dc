//! The client's OpenAI chat body translated to a Gemini `GenerateContentRequest` by one scan of
//! its text, where the Python path (gateway/providers/gemini.py, `translate_request`) decodes
//! its messages (msgspec), parses it again (orjson's dict), builds the request as objects and
//! writes it with orjson.
//!
//! **Conservative**, as `anthropic_body` (whose readers it shares, `crate::chat_body`): it
//! answers only for a body the Python path translates without an error and whose every part
//! it writes exactly as that path does: `system`/`developer`/`user`/`assistant`/`tool`
//! messages whose content is `null`, a string, or text, refusal, audio and image parts (an
//! image as a base64 data URL written without escapes), assistant `tool_calls`, tool results
//! (named by the call they answer or their `name`); `tools`, `tool_choice`; `max_tokens`,
//! `max_completion_tokens`, `temperature`, `top_p` (as `anthropic_body` reads them), `stop`,
//! `seed` (an integer), `presence_penalty` and `frequency_penalty` (numbers), `user`, `n` of 1,
//! `response_format`, `parallel_tool_calls` at its neutral value (`true`), `logprobs` and
//! `top_logprobs` at theirs, and `model`, `models`, `stream`, `stream_options`; any member as
//! `null`. Anything else (an http(s) image URL, whose type Python guesses from the machine's
//! tables; an escaped or repeated key; a number orjson writes otherwise) gives `None`, and the
//! caller takes the Python path, the reference: the same body, or the same error. Pinned by a
//! Hypothesis test against it, `tests/core/test_gemini_body.py`.

mod messages;

use crate::chat_body::form::{number, write_value};
use crate::chat_body::tools::{self, choice, write_parameters, Choice, Tool};
use crate::chat_body::{
    budget, equals, nullable_str, response_format, sampling, stop_list, top_level, Format,
};
use crate::json_scan::Scan;
use messages::Turns;

/// The `GenerateContentRequest` for the client's chat `body` (see the module docs), or
/// `None`. `default_max_tokens`: the budget when the body sets none.
pub fn request(body: &[u8], default_max_tokens: u64) -> Option<Vec<u8>> {
    let mut turns = Turns::default();
    turns.contents.reserve(body.len() + 64);
    let mut declarations = Vec::new();
    let mut any_tools = false;
    let mut config = Config::default();
    top_level(body, |scan, key| {
        match key {
            b"messages" => turns.read(scan)?,
            b"tools" => any_tools = tools::each(scan, |tool| declare(&tool, &mut declarations))?,
            _ => config.read(key, scan.span(1)?)?,
        }
        Some(())
    })?;
    turns.any().then_some(())?; // no turn with content: a 400
    let mut out =
        Vec::with_capacity(turns.contents.len() + turns.system.len() + declarations.len() + 256);
    out.extend_from_slice(br#"{"contents":["#);
    out.extend_from_slice(&turns.contents);
    out.extend_from_slice(b"]}]");
    if !turns.system.is_empty() {
        out.extend_from_slice(br#","systemInstruction":{"parts":["#);
        out.extend_from_slice(&turns.system);
        out.extend_from_slice(b"]}");
    }
    if any_tools {
        out.extend_from_slice(br#","tools":[{"functionDeclarations":["#);
        out.extend_from_slice(&declarations);
        out.extend_from_slice(b"]}]");
    }
    config.write(default_max_tokens, &mut out)?;
    out.push(b'}');
    Some(out)
}

/// Writes one tool's function declaration (`_tools`): its name, its description and its
/// `parametersJsonSchema` when they are not empty.
fn declare(tool: &Tool<'_>, out: &mut Vec<u8>) -> Option<()> {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(br#"{"name":"#);
    tool.name.write_quoted(out)?;
    if let Some(description) = tool.description.filter(|d| !d.is_empty()) {
        out.extend_from_slice(br#","description":"#);
        description.write_quoted(out)?;
    }
    let at = out.len();
    out.extend_from_slice(br#","parametersJsonSchema":"#);
    if !write_parameters(tool.parameters, out)? {
        out.truncate(at);
    }
    out.push(b'}');
    Some(())
}

/// The other members, as the tool choice and the generation config read them.
#[derive(Default)]
struct Config<'a> {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<(f64, String)>,
    top_p: Option<(f64, String)>,
    stop: Option<&'a str>,
    tool_choice: Option<Choice<'a>>,
    format: Option<Format<'a>>,
    seed: Option<&'a str>,
    presence: Option<String>,
    frequency: Option<String>,
}

impl<'a> Config<'a> {
    /// One member's value (`raw`, its text); `None` for one the module docs leave to Python.
    fn read(&mut self, key: &[u8], raw: &'a str) -> Option<()> {
        match key {
            // (a member's `null` is no value, or its default, wherever it is read)
            _ if raw == "null" => {}
            b"model" | b"models" | b"stream" | b"stream_options" => {}
            b"max_tokens" => budget(raw, &mut self.max_tokens)?,
            b"max_completion_tokens" => budget(raw, &mut self.max_completion_tokens)?,
            b"temperature" => sampling(raw, &mut self.temperature)?,
            b"top_p" => sampling(raw, &mut self.top_p)?,
            b"stop" => self.stop = Some(raw),
            b"user" => nullable_str(raw, &mut None)?, // accepted, not sent
            b"tool_choice" => self.tool_choice = Some(choice(raw)?),
            b"seed" => self.seed = Some(integer(raw)?),
            b"presence_penalty" => self.presence = Some(penalty(raw)?),
            b"frequency_penalty" => self.frequency = Some(penalty(raw)?),
            b"response_format" => self.format = Some(response_format(raw)?),
            b"n" if raw == "1" => {}
            // the neutral values (`NEUTRAL`) only
            b"parallel_tool_calls" => equals(raw, 1.0)?,
            b"logprobs" | b"top_logprobs" => equals(raw, 0.0)?,
            _ => return None,
        }
        Some(())
    }

    /// Writes `toolConfig` when there is a tool choice, and `generationConfig`.
    fn write(&self, default_max_tokens: u64, out: &mut Vec<u8>) -> Option<()> {
        if let Some(choice) = self.tool_choice {
            let (mode, named) = match choice {
                Choice::None => ("NONE", None),
                Choice::Auto => ("AUTO", None),
                Choice::Required => ("ANY", None),
                Choice::Named(name) => ("ANY", Some(name)),
            };
            out.extend_from_slice(br#","toolConfig":{"functionCallingConfig":{"mode":""#);
            out.extend_from_slice(mode.as_bytes());
            out.push(b'"');
            if let Some(name) = named {
                out.extend_from_slice(br#","allowedFunctionNames":["#);
                name.write_quoted(out)?;
                out.push(b']');
            }
            out.extend_from_slice(b"}}");
        }
        out.extend_from_slice(br#","generationConfig":{"maxOutputTokens":"#);
        let budget = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_max_tokens);
        out.extend_from_slice(budget.to_string().as_bytes());
        write_members(
            &[
                ("temperature", sampled(self.temperature.as_ref())),
                ("topP", sampled(self.top_p.as_ref())),
            ],
            out,
        );
        if let Some(raw) = self.stop {
            out.extend_from_slice(br#","stopSequences":"#);
            stop_list(raw, out)?;
        }
        write_members(
            &[
                ("seed", self.seed),
                ("presencePenalty", self.presence.as_deref()),
                ("frequencyPenalty", self.frequency.as_deref()),
            ],
            out,
        );
        match self.format {
            None | Some(Format::Text) => {}
            Some(Format::JsonObject) => {
                out.extend_from_slice(br#","responseMimeType":"application/json""#);
            }
            Some(Format::JsonSchema(schema)) => {
                out.extend_from_slice(br#","responseMimeType":"application/json""#);
                out.extend_from_slice(br#","responseJsonSchema":"#);
                write_value(&mut Scan::new(schema?), out, 1)?; // (not an object: a 400)
            }
        }
        out.push(b'}');
        Some(())
    }
}

/// Writes `,"name":value` for each member that has a value (its text as written).
fn write_members(members: &[(&str, Option<&str>)], out: &mut Vec<u8>) {
    for (name, value) in members {
        if let Some(value) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value.as_bytes());
        }
    }
}

/// A sampling value's text as written.
fn sampled(value: Option<&(f64, String)>) -> Option<&str> {
    value.map(|(_, raw)| raw.as_str())
}

/// `seed`: an integer msgspec takes as an `int` and orjson writes as it came.
fn integer(raw: &str) -> Option<&str> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    (!digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())).then_some(())?;
    number(raw).map(|_| raw)
}

/// A penalty, a number orjson parses and writes again (a boolean or anything else: a 400).
fn penalty(raw: &str) -> Option<String> {
    let mut scan = Scan::new(raw);
    scan.number()?;
    scan.at_end().then_some(())?;
    Some(number(raw)?.into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn translated(body: &str) -> Option<String> {
        request(body.as_bytes(), 4096).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn an_agents_conversation_is_translated_as_orjson_writes_the_python_path() {
        let body = r#"{"model":"google/g","temperature":1,"seed":7,"stop":"END",
            "tools":[{"type":"function","function":{"name":"read","description":"Read.",
              "parameters":{"type":"object","properties":{"p":{"type":"string"}}}}},
              {"function":{"name":"now","parameters":{}}}],"tool_choice":"auto",
            "messages":[{"role":"system","content":[{"type":"text","text":"S"},{"type":"text","text":""}]},
              {"role":"user","content":[{"type":"text","text":"look \u00e9"},
                {"type":"image_url","image_url":{"url":"data:Image/PNG;base64,iVBO"}}]},
              {"role":"assistant","content":"ok","tool_calls":[{"id":"t1","type":"function",
                "function":{"name":"read","arguments":"{\"p\": \"a.py\", \"n\": 1.50}"}}]},
              {"role":"tool","tool_call_id":"t1","content":" {\"lines\": 2}"},
              {"role":"tool","tool_call_id":"t1","content":"{'not': json}"},
              {"role":"user","content":"thanks"}]}"#;
        assert_eq!(
            translated(body).unwrap(),
            concat!(
                r#"{"contents":[{"role":"user","parts":[{"text":"look é"},"#,
                r#"{"inlineData":{"mimeType":"image/png","data":"iVBO"}}]},"#,
                r#"{"role":"model","parts":[{"text":"ok"},"#,
                r#"{"functionCall":{"name":"read","args":{"p":"a.py","n":1.5}}}]},"#,
                r#"{"role":"user","parts":[{"functionResponse":{"name":"read","response":{"lines":2}}},"#,
                r#"{"functionResponse":{"name":"read","response":{"content":"{'not': json}"}}},"#,
                r#"{"text":"thanks"}]}],"#,
                r#""systemInstruction":{"parts":[{"text":"S\n\n"}]},"#,
                r#""tools":[{"functionDeclarations":[{"name":"read","description":"Read.","#,
                r#""parametersJsonSchema":{"type":"object","properties":{"p":{"type":"string"}}}},"#,
                r#"{"name":"now"}]}],"toolConfig":{"functionCallingConfig":{"mode":"AUTO"}},"#,
                r#""generationConfig":{"maxOutputTokens":4096,"temperature":1.0,"#,
                r#""stopSequences":["END"],"seed":7}}"#
            )
        );
    }

    #[test]
    fn what_the_scan_cannot_tell_is_left_to_python() {
        let user = r#""messages":[{"role":"user","content":"hi"}]"#;
        for body in [
            format!(r#"{{{user},"n":2}}"#),
            format!(r#"{{{user},"parallel_tool_calls":false}}"#),
            format!(r#"{{{user},"presence_penalty":true}}"#),
            format!(r#"{{{user},"seed":-0}}"#),
            format!(r#"{{{user},"response_format":{{"type":"json_schema"}}}}"#),
            format!(r#"{{{user},"metadata":{{}}}}"#),
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":"a"},{"role":"tool","tool_call_id":"t","content":"r"}]}"#.to_owned(),
            r#"{"messages":[{"role":"user","content":"a"},{"role":"tool","name":"f","content":"{\"a\":1,\"a\":2}"}]}"#.to_owned(),
            r#"{"messages":[{"role":"system","content":"only a system"}]}"#.to_owned(),
        ] {
            assert!(translated(&body).is_none(), "{body}");
        }
    }
}
