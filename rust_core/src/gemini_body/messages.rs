//! `messages` → Gemini's `contents` and `systemInstruction`, as `translate_messages` makes them
//! (gateway/providers/gemini.py).

use std::borrow::Cow;

use crate::chat_body::form::{write_joined, write_value, Text};
use crate::chat_body::messages::{self, audio, data_url, write_arguments, Message, Part, Role};
use crate::json_depth::nesting_depth;
use crate::json_scan::{escape_end, Scan, MAX_DEPTH};

/// The turns written so far, and what a later message needs of the earlier ones.
#[derive(Default)]
pub(super) struct Turns<'a> {
    /// The `contents` array's elements; the last turn is left open.
    pub(super) contents: Vec<u8>,
    /// The role of the open turn (`User` for user and tool messages alike).
    open: Option<Role>,
    /// The system messages' `{"text": …}` parts.
    pub(super) system: Vec<u8>,
    /// Each tool call's id and function name, in order (a later call with the same id wins,
    /// as in the dict Python keeps).
    names: Vec<(Text<'a>, Text<'a>)>,
}

impl<'a> Turns<'a> {
    /// Reads the `messages` array at the scan's position into the turns.
    pub(super) fn read(&mut self, scan: &mut Scan<'a>) -> Option<()> {
        messages::each(scan, |message| self.message(&message))
    }

    /// Whether a turn was written (none: a 400).
    pub(super) fn any(&self) -> bool {
        self.open.is_some()
    }

    fn message(&mut self, message: &Message<'a>) -> Option<()> {
        let mut first = true;
        match message.role {
            Role::System => {
                let texts = texts(message)?;
                if !text_is_empty(&texts) {
                    if !self.system.is_empty() {
                        self.system.push(b',');
                    }
                    self.system.extend_from_slice(br#"{"text":"#);
                    write_joined(&texts, &mut self.system)?;
                    self.system.push(b'}');
                }
            }
            Role::User => self.parts(message, &mut first)?,
            Role::Assistant => {
                self.parts(message, &mut first)?;
                for call in &message.calls {
                    self.names.push((call.id, call.name));
                    self.begin(Role::Assistant, &mut first);
                    let out = &mut self.contents;
                    out.extend_from_slice(br#"{"functionCall":{"name":"#);
                    call.name.write_quoted(out)?;
                    out.extend_from_slice(br#","args":"#);
                    write_arguments(call.arguments, out)?;
                    out.extend_from_slice(b"}}");
                }
            }
            Role::Tool => {
                let name = self.name_of(message)?;
                let texts = texts(message)?;
                self.begin(Role::User, &mut first);
                let out = &mut self.contents;
                out.extend_from_slice(br#"{"functionResponse":{"name":"#);
                name.write_quoted(out)?;
                out.extend_from_slice(br#","response":"#);
                response(&texts, out)?;
                out.extend_from_slice(b"}}");
            }
        }
        Some(())
    }

    /// Before a part of a message: the comma after the part before it, or the turn opened
    /// (the open one closed) when the message's first part starts a turn of another role.
    fn begin(&mut self, role: Role, first: &mut bool) {
        let out = &mut self.contents;
        if std::mem::take(first) && self.open != Some(role) {
            if self.open.is_some() {
                out.extend_from_slice(b"]},");
            }
            out.extend_from_slice(match role {
                Role::Assistant => br#"{"role":"model","parts":["#,
                _ => br#"{"role":"user","parts":["#,
            });
            self.open = Some(role);
        } else {
            out.push(b',');
        }
    }

    /// A user or assistant message's content parts (`_parts`): texts that are not empty,
    /// images as data URLs, audio.
    fn parts(&mut self, message: &Message<'a>, first: &mut bool) -> Option<()> {
        let role = message.role;
        for part in &message.parts {
            match *part {
                Part::Text(text, _) | Part::Refusal(text) => {
                    if !text.is_empty() {
                        self.begin(role, first);
                        self.contents.extend_from_slice(br#"{"text":"#);
                        text.write_quoted(&mut self.contents)?;
                        self.contents.push(b'}');
                    }
                }
                Part::Image(url, _) => {
                    // an http(s) URL's type is `mimetypes.guess_type`'s (the machine's
                    // tables): left to Python, as an escaped URL is
                    let (mime, data) = data_url(url.raw).filter(|_| !url.escaped)?;
                    // `lower()`, the same as ASCII's only for ASCII
                    mime.is_ascii().then_some(())?;
                    self.begin(role, first);
                    let out = &mut self.contents;
                    out.extend_from_slice(br#"{"inlineData":{"mimeType":""#);
                    out.extend(mime.bytes().map(|c| c.to_ascii_lowercase()));
                    out.extend_from_slice(br#"","data":""#);
                    out.extend_from_slice(data.as_bytes());
                    out.extend_from_slice(br#""}}"#);
                }
                Part::Audio(raw) => {
                    let (data, format) = audio(raw)?;
                    // ("mp3" and "wav" are named in Python's table, with the same types)
                    self.begin(role, first);
                    let out = &mut self.contents;
                    out.extend_from_slice(br#"{"inlineData":{"mimeType":"audio/"#);
                    format.write(out)?;
                    out.extend_from_slice(br#"","data":"#);
                    data.write_quoted(out)?;
                    out.extend_from_slice(b"}}");
                }
            }
        }
        Some(())
    }

    /// The function a tool message answers (`_function_response`): the name of the latest
    /// call with its `tool_call_id` (`""` for none), else the message's `name`; `None` when
    /// neither is a name (a 400).
    fn name_of(&self, message: &Message<'a>) -> Option<Text<'a>> {
        let id = match message.tool_call_id {
            Some(id) => id.unescaped()?,
            None => Cow::Borrowed(""),
        };
        let mut found = None;
        for (call, name) in self.names.iter().rev() {
            if call.unescaped()? == id {
                found = Some(*name);
                break;
            }
        }
        found
            .filter(|name| !name.is_empty())
            .or(message.name)
            .filter(|name| !name.is_empty())
    }
}

/// The texts `text_of` joins (by a blank line): `None` when a part is not a text (a 400).
fn texts<'a>(message: &Message<'a>) -> Option<Vec<Text<'a>>> {
    message.parts.iter().map(|part| part.text()).collect()
}

/// Whether `text_of` of `texts` is empty: none, or one empty one.
fn text_is_empty(texts: &[Text<'_>]) -> bool {
    match texts {
        [] => true,
        [text] => text.is_empty(),
        _ => false,
    }
}

/// A tool result's `response`: the JSON object its text holds, when (JSON whitespace aside) it
/// starts with `{` and orjson parses it, written as orjson writes it; else `{"content": text}`.
/// (Python tests `text.lstrip().startswith("{")`, whose whitespace is Unicode's, then parses
/// the whole text: a text that starts with other whitespace before its `{` is not parsed.)
fn response(texts: &[Text<'_>], out: &mut Vec<u8>) -> Option<()> {
    if opens_object(texts)? {
        let mut joined = String::new();
        for (i, text) in texts.iter().enumerate() {
            if i > 0 {
                joined.push_str("\n\n");
            }
            joined.push_str(&text.unescaped()?);
        }
        let mut check = Scan::new(&joined);
        if check.value(1).is_some() && check.at_end() {
            return write_value(&mut Scan::new(&joined), out, 1);
        }
        // Invalid JSON for orjson too, unless it only nests deeper than the scan reads.
        (nesting_depth(joined.as_bytes(), MAX_DEPTH as usize) < MAX_DEPTH as usize).then_some(())?;
    }
    out.extend_from_slice(br#"{"content":"#);
    write_joined(texts, out)?;
    out.push(b'}');
    Some(())
}

/// Whether the first character of the joined texts that is not JSON whitespace is `{`.
fn opens_object(texts: &[Text<'_>]) -> Option<bool> {
    for text in texts {
        let raw = text.raw.as_bytes();
        let mut i = 0;
        while let Some(&c) = raw.get(i) {
            match c {
                b' ' => i += 1,
                b'\\' => {
                    let end = escape_end(raw, i)?;
                    let escape = text.raw.get(i..end)?;
                    let blank = matches!(escape, r"\n" | r"\t" | r"\r")
                        || escape.get(2..).is_some_and(|code| {
                            matches!(code, "0009" | "000a" | "000A" | "000d" | "000D" | "0020")
                        });
                    if !blank {
                        return Some(false);
                    }
                    i = end;
                }
                c => return Some(c == b'{'),
            }
        }
        // (the blank line between two texts is whitespace)
    }
    Some(false)
}
