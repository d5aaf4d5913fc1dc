//! `messages` read as the translations read msgspec's `Message`s (gateway/schemas/openai.py):
//! each message's role, content parts, tool calls, `tool_call_id`, `name` and breakpoint.

use super::form::{write_value, Text};
use crate::json_scan::{once, Scan};

/// A `cache_control` breakpoint: `{"type": "ephemeral", "ttl"?: "5m" | "1h"}` (members the
/// schema does not name are not read), written as `msgspec.to_builtins` makes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cache {
    ttl: Option<&'static str>,
}

impl Cache {
    /// `null` (`None` in the slot) or a breakpoint, into `slot`.
    pub(crate) fn read(scan: &mut Scan<'_>, slot: &mut Option<Self>) -> Option<()> {
        if scan.null()? {
            *slot = None;
            return Some(());
        }
        let (mut ephemeral, mut ttl) = (false, None);
        let mut seen = [false; 2];
        scan.members(|scan, key| {
            match key {
                b"type" => {
                    once(&mut seen[0])?;
                    scan.ws();
                    ephemeral = scan.plain_string()? == b"ephemeral";
                }
                b"ttl" => {
                    once(&mut seen[1])?;
                    if !scan.null()? {
                        ttl = Some(match scan.plain_string()? {
                            b"5m" => "5m",
                            b"1h" => "1h",
                            _ => return None,
                        });
                    }
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        *slot = Some(ephemeral.then_some(Self { ttl })?);
        Some(())
    }

    /// `,"cache_control":{…}` for a block's or a tool's last member, when there is one.
    pub(crate) fn write(cache: Option<Self>, out: &mut Vec<u8>) {
        if let Some(cache) = cache {
            out.extend_from_slice(br#","cache_control":{"type":"ephemeral""#);
            if let Some(ttl) = cache.ttl {
                out.extend_from_slice(br#","ttl":""#);
                out.extend_from_slice(ttl.as_bytes());
                out.push(b'"');
            }
            out.push(b'}');
        }
    }
}

/// Whether `base64.b64decode(data, validate=True)` takes `data`: the alphabet, at most two
/// `=` at the end, a length a multiple of 4 (Python takes some others too, which are left to
/// it).
pub(crate) fn base64(data: &str) -> bool {
    let b = data.as_bytes();
    let body = b
        .strip_suffix(b"==")
        .or_else(|| b.strip_suffix(b"="))
        .unwrap_or(b);
    b.len().is_multiple_of(4)
        && body
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// An image URL of the form `parse_data_url` takes, `data:<mime>;base64,<data>`: the media
/// type as written and the data, when the data is base64 that Python surely decodes (`None`
/// otherwise: a 400 there, or a form left to it).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let (header, data) = url.split_once(',')?;
    let mime = header.strip_suffix(";base64")?.strip_prefix("data:")?;
    base64(data).then_some((mime, data))
}

/// One content part (a file part is refused by every translation: `None` when read).
#[derive(Clone, Copy)]
pub(crate) enum Part<'a> {
    Text(Text<'a>, Option<Cache>),
    Refusal(Text<'a>),
    /// The image's URL.
    Image(Text<'a>, Option<Cache>),
    /// An `input_audio` part's object (its text: `audio` reads it).
    Audio(&'a str),
}

impl<'a> Part<'a> {
    /// The part's text, as `text_of` reads a part (`None`: not a text, a 400 there).
    pub(crate) fn text(self) -> Option<Text<'a>> {
        match self {
            Self::Text(text, _) | Self::Refusal(text) => Some(text),
            Self::Image(..) | Self::Audio(..) => None,
        }
    }
}

/// An assistant's tool call: its id, function name and arguments (a JSON text in a string).
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) id: Text<'a>,
    pub(crate) name: Text<'a>,
    pub(crate) arguments: Text<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    System, // and developer
    User,
    Assistant,
    Tool,
}

/// One message as the translations read it.
pub(crate) struct Message<'a> {
    pub(crate) role: Role,
    /// A string content is one text part without a breakpoint.
    pub(crate) parts: Vec<Part<'a>>,
    /// Whether the content was a list (a system message's parts are blocks of their own).
    pub(crate) listed: bool,
    pub(crate) calls: Vec<Call<'a>>,
    pub(crate) tool_call_id: Option<Text<'a>>,
    pub(crate) name: Option<Text<'a>>,
    pub(crate) cache: Option<Cache>,
}

/// Reads the `messages` array at the scan's position, handing each message to `each`.
#[inline]
pub(crate) fn each<'a>(
    scan: &mut Scan<'a>,
    mut each: impl FnMut(Message<'a>) -> Option<()>,
) -> Option<()> {
    scan.open(b'[')?;
    if !scan.empty(b']') {
        loop {
            each(message(scan)?)?;
            if scan.next(b']')? {
                break;
            }
        }
    }
    Some(())
}

/// A string or `null` into `slot`.
fn optional<'a>(scan: &mut Scan<'a>, slot: &mut Option<Text<'a>>) -> Option<()> {
    *slot = if scan.null()? {
        None
    } else {
        Some(Text::read(scan)?)
    };
    Some(())
}

/// One message (`None` for a role every translation refuses, `function`, and for what the
/// readers cannot tell).
fn message<'a>(scan: &mut Scan<'a>) -> Option<Message<'a>> {
    let mut role = None;
    let mut message = Message {
        role: Role::User,
        parts: Vec::new(),
        listed: false,
        calls: Vec::new(),
        tool_call_id: None,
        name: None,
        cache: None,
    };
    let mut seen = [false; 6];
    scan.members(|scan, key| {
        match key {
            b"role" => {
                once(&mut seen[0])?;
                scan.ws();
                role = Some(match scan.plain_string()? {
                    b"system" | b"developer" => Role::System,
                    b"user" => Role::User,
                    b"assistant" => Role::Assistant,
                    b"tool" => Role::Tool,
                    _ => return None, // functions: a 400
                });
            }
            b"content" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    if scan.b.get(scan.i) == Some(&b'"') {
                        message.parts.push(Part::Text(Text::read(scan)?, None));
                    } else {
                        message.listed = true;
                        parts(scan, &mut message.parts)?;
                    }
                }
            }
            b"tool_calls" => {
                once(&mut seen[2])?;
                calls(scan, &mut message.calls)?;
            }
            b"tool_call_id" => {
                once(&mut seen[3])?;
                optional(scan, &mut message.tool_call_id)?;
            }
            b"name" => {
                once(&mut seen[4])?;
                optional(scan, &mut message.name)?;
            }
            b"cache_control" => {
                once(&mut seen[5])?;
                Cache::read(scan, &mut message.cache)?;
            }
            _ => return Some(false), // unknown: not read
        }
        Some(true)
    })?;
    message.role = role?;
    Some(message)
}

/// A content array's parts: text, refusal, image and audio parts (files: refused).
fn parts<'a>(scan: &mut Scan<'a>, parts: &mut Vec<Part<'a>>) -> Option<()> {
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(());
    }
    loop {
        let (mut kind, mut text, mut url, mut audio, mut cache) = (None, None, None, None, None);
        let mut seen = [false; 5];
        scan.members(|scan, key| {
            match key {
                b"type" => {
                    once(&mut seen[0])?;
                    scan.ws();
                    kind = Some(scan.plain_string()?);
                }
                // (a part has one of the two: both are left to Python)
                b"text" | b"refusal" => {
                    once(&mut seen[1])?;
                    text = Some((key == b"text", Text::read_ws(scan)?));
                }
                b"image_url" => {
                    once(&mut seen[2])?;
                    url = Some(image_url(scan)?);
                }
                b"input_audio" => {
                    once(&mut seen[3])?;
                    scan.ws();
                    (scan.b.get(scan.i) == Some(&b'{')).then_some(())?;
                    audio = Some(scan.span(3)?);
                }
                b"cache_control" => {
                    once(&mut seen[4])?;
                    Cache::read(scan, &mut cache)?;
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        parts.push(match (kind?, text, url, audio) {
            (b"text", Some((true, text)), None, None) => Part::Text(text, cache),
            // a refusal part has no breakpoint (the schema does not name it: not read)
            (b"refusal", Some((false, text)), None, None) => Part::Refusal(text),
            (b"image_url", None, Some(url), None) => Part::Image(url, cache),
            (b"input_audio", None, None, Some(audio)) => Part::Audio(audio),
            _ => return None,
        });
        if scan.next(b']')? {
            return Some(());
        }
    }
}

/// An image part's `image_url`: its `url` (`detail` checked, not read further).
fn image_url<'a>(scan: &mut Scan<'a>) -> Option<Text<'a>> {
    let mut url = None;
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"url" => {
                once(&mut seen[0])?;
                url = Some(Text::read_ws(scan)?);
            }
            b"detail" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    matches!(scan.plain_string()?, b"auto" | b"low" | b"high").then_some(())?;
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    url
}

/// An `input_audio` object's `data` and `format` (`raw`: its text), when both are strings
/// (a dict in msgspec's view: other members are not read; else a 400 where it is translated).
pub(crate) fn audio(raw: &str) -> Option<(Text<'_>, Text<'_>)> {
    let scan = &mut Scan::new(raw);
    let (mut data, mut format) = (None, None);
    let mut seen = [false; 2];
    scan.members(|scan, key| {
        match key {
            b"data" => {
                once(&mut seen[0])?;
                data = Some(Text::read_ws(scan)?);
            }
            b"format" => {
                once(&mut seen[1])?;
                format = Some(Text::read_ws(scan)?);
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    Some((data?, format?))
}

/// An assistant's `tool_calls` (`null` or an array) into `calls`.
fn calls<'a>(scan: &mut Scan<'a>, calls: &mut Vec<Call<'a>>) -> Option<()> {
    if scan.null()? {
        return Some(());
    }
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(());
    }
    loop {
        let (mut id, mut function) = (None, None);
        let mut seen = [false; 3];
        scan.members(|scan, key| {
            match key {
                b"id" => {
                    once(&mut seen[0])?;
                    id = Some(Text::read_ws(scan)?);
                }
                b"type" => {
                    once(&mut seen[1])?;
                    scan.ws();
                    (scan.plain_string()? == b"function").then_some(())?;
                }
                b"function" => {
                    once(&mut seen[2])?;
                    let (mut name, mut arguments) = (None, None);
                    let mut seen = [false; 2];
                    scan.members(|scan, key| {
                        match key {
                            b"name" => {
                                once(&mut seen[0])?;
                                name = Some(Text::read_ws(scan)?);
                            }
                            b"arguments" => {
                                once(&mut seen[1])?;
                                arguments = Some(Text::read_ws(scan)?);
                            }
                            _ => return Some(false),
                        }
                        Some(true)
                    })?;
                    function = Some((name?, arguments?));
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        let (name, arguments) = function?;
        calls.push(Call {
            id: id?,
            name,
            arguments,
        });
        if scan.next(b']')? {
            return Some(());
        }
    }
}

/// A tool call's arguments as `parse_arguments` makes them and orjson writes them: `{}` for
/// blank ones, else the JSON object they hold (`None` for anything else: a 400).
pub(crate) fn write_arguments(text: Text<'_>, out: &mut Vec<u8>) -> Option<()> {
    let json = text.unescaped()?;
    let mut scan = Scan::new(&json);
    if scan.at_end() {
        out.extend_from_slice(b"{}");
        return Some(());
    }
    (scan.b.get(scan.i) == Some(&b'{')).then_some(())?;
    write_value(&mut scan, out, 1)?;
    scan.at_end().then_some(())
}
