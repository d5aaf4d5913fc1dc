//! `messages` → Anthropic's turns and top-level `system`, as `translate_messages` makes them
//! (gateway/providers/anthropic.py).

use super::form::{write_joined, write_value, Text};
use crate::json_scan::{once, Scan};

/// A `cache_control` breakpoint: `{"type": "ephemeral", "ttl"?: "5m" | "1h"}` (members the
/// schema does not name are not read), written as `msgspec.to_builtins` makes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Cache {
    ttl: Option<&'static str>,
}

impl Cache {
    /// `null` (`None` in the slot) or a breakpoint, into `slot`.
    pub(super) fn read(scan: &mut Scan<'_>, slot: &mut Option<Self>) -> Option<()> {
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
    pub(super) fn write(cache: Option<Self>, out: &mut Vec<u8>) {
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

/// An image part's source: a data URL's media type (lower case) and base64 data, or an
/// http(s) URL.
#[derive(Clone, Copy)]
enum Image<'a> {
    Base64(&'static str, &'a str),
    Url(&'a str),
}

/// The media types Anthropic takes (`IMAGE_TYPES`).
const IMAGE_TYPES: [&str; 4] = ["image/gif", "image/jpeg", "image/png", "image/webp"];

impl<'a> Image<'a> {
    /// The source of `url` (an image part's, without escapes), as `_image_block` reads it;
    /// `None` where it refuses the URL (and for a URL written with escapes).
    fn of(url: Text<'a>) -> Option<Self> {
        if url.escaped || url.is_empty() {
            return None;
        }
        let url = url.raw;
        if url.starts_with("data:") {
            let (header, data) = url.split_once(',')?;
            let mime = header.strip_suffix(";base64")?.get("data:".len()..)?;
            let mime = IMAGE_TYPES
                .into_iter()
                .find(|t| t.eq_ignore_ascii_case(mime))?;
            return base64(data).then_some(Self::Base64(mime, data));
        }
        (url.starts_with("http://") || url.starts_with("https://")).then_some(Self::Url(url))
    }
}

/// Whether `base64.b64decode(data, validate=True)` takes `data`: the alphabet, at most two
/// `=` at the end, a length a multiple of 4 (Python takes some others too, which are left to
/// it).
fn base64(data: &str) -> bool {
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

/// One content part.
#[derive(Clone, Copy)]
enum Part<'a> {
    Text(Text<'a>, Option<Cache>),
    Refusal(Text<'a>),
    Image(Image<'a>, Option<Cache>),
}

impl<'a> Part<'a> {
    /// The part's text, as `text_of` reads a part (`None`: an image, a 400 there).
    fn text(self) -> Option<Text<'a>> {
        match self {
            Self::Text(text, _) | Self::Refusal(text) => Some(text),
            Self::Image(..) => None,
        }
    }
}

/// An assistant's tool call: its id, function name and arguments (a JSON text in a string).
#[derive(Clone, Copy)]
struct Call<'a> {
    id: Text<'a>,
    name: Text<'a>,
    arguments: Text<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    System, // and developer
    User,
    Assistant,
    Tool,
}

/// One message as the translation reads it.
struct Message<'a> {
    role: Role,
    /// A string content is one text part without a breakpoint.
    parts: Vec<Part<'a>>,
    /// Whether the content was a list (a system message's parts are blocks of their own).
    listed: bool,
    calls: Vec<Call<'a>>,
    tool_call_id: Option<Text<'a>>,
    cache: Option<Cache>,
}

/// One block of a turn.
enum Block<'a> {
    Text(Text<'a>, Option<Cache>),
    Image(Image<'a>, Option<Cache>),
    ToolUse(Call<'a>),
    ToolResult(Text<'a>, Vec<Text<'a>>),
}

impl Block<'_> {
    /// Writes the block; `last`: the message's breakpoint, which the message's last block
    /// takes (in place of its own).
    fn write(&self, last: Option<Cache>, out: &mut Vec<u8>) -> Option<()> {
        let own = match self {
            Block::Text(text, cache) => {
                out.extend_from_slice(br#"{"type":"text","text":"#);
                text.write_quoted(out)?;
                *cache
            }
            Block::Image(Image::Base64(mime, data), cache) => {
                out.extend_from_slice(
                    br#"{"type":"image","source":{"type":"base64","media_type":""#,
                );
                out.extend_from_slice(mime.as_bytes());
                out.extend_from_slice(br#"","data":""#);
                out.extend_from_slice(data.as_bytes());
                out.extend_from_slice(br#""}"#);
                *cache
            }
            Block::Image(Image::Url(url), cache) => {
                out.extend_from_slice(br#"{"type":"image","source":{"type":"url","url":""#);
                out.extend_from_slice(url.as_bytes()); // without escapes (`Image::of`)
                out.extend_from_slice(br#""}"#);
                *cache
            }
            Block::ToolUse(call) => {
                out.extend_from_slice(br#"{"type":"tool_use","id":"#);
                call.id.write_quoted(out)?;
                out.extend_from_slice(br#","name":"#);
                call.name.write_quoted(out)?;
                out.extend_from_slice(br#","input":"#);
                arguments(call.arguments, out)?;
                None
            }
            Block::ToolResult(id, texts) => {
                out.extend_from_slice(br#"{"type":"tool_result","tool_use_id":"#);
                id.write_quoted(out)?;
                out.extend_from_slice(br#","content":"#);
                write_joined(texts, out)?;
                None
            }
        };
        Cache::write(last.or(own), out);
        out.push(b'}');
        Some(())
    }
}

/// A tool call's arguments as `parse_arguments` makes them and orjson writes them: `{}` for
/// blank ones, else the JSON object they hold.
fn arguments(text: Text<'_>, out: &mut Vec<u8>) -> Option<()> {
    let json = text.unescaped()?;
    let mut scan = Scan::new(&json);
    if scan.at_end() {
        out.extend_from_slice(b"{}");
        return Some(());
    }
    (scan.b.get(scan.i) == Some(&b'{')).then_some(())?; // else a 400
    write_value(&mut scan, out, 1)?;
    scan.at_end().then_some(())
}

/// The system's texts, kept per message until the end tells whether a breakpoint makes them
/// blocks.
#[derive(Default)]
pub(super) struct System<'a> {
    messages: Vec<Message<'a>>,
    cached: bool,
}

impl System<'_> {
    /// `,"system":…` when there is one: one string (the messages' texts joined by a blank
    /// line, of those whose text is not empty), or text blocks when a system message has a
    /// breakpoint (`_system_blocks`).
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        if self.cached {
            out.extend_from_slice(br#","system":["#);
            let mut first = true;
            for message in &self.messages {
                let blocks: Vec<(Text<'_>, Option<Cache>)> = message
                    .parts
                    .iter()
                    .filter_map(|part| match *part {
                        Part::Text(text, cache) => Some((text, cache)),
                        Part::Refusal(text) => Some((text, None)),
                        Part::Image(..) => None,
                    })
                    .filter(|(text, _)| !text.is_empty())
                    .map(|(text, cache)| (text, if message.listed { cache } else { message.cache }))
                    .collect();
                for (i, (text, cache)) in blocks.iter().enumerate() {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    let last = (i + 1 == blocks.len()).then_some(message.cache).flatten();
                    Block::Text(*text, *cache).write(last, out)?;
                }
            }
            out.push(b']');
            return Some(());
        }
        let mut texts = Vec::new();
        for message in &self.messages {
            // `text_of`: the parts joined by a blank line, so empty only if it is one empty
            // text or none
            if message.parts.len() > 1
                || message
                    .parts
                    .first()
                    .is_some_and(|p| p.text().is_some_and(|t| !t.is_empty()))
            {
                texts.extend(message.parts.iter().filter_map(|p| p.text()));
            }
        }
        if !texts.is_empty() {
            out.extend_from_slice(br#","system":"#);
            write_joined(&texts, out)?;
        }
        Some(())
    }
}

/// Writes the turns of the `messages` array at the scan's position into `out`, consecutive
/// turns of one role as one, empty ones left out; returns the system. `None` when a message is
/// one the module docs leave to Python, or when no turn has content.
pub(super) fn turns<'a>(scan: &mut Scan<'a>, out: &mut Vec<u8>) -> Option<System<'a>> {
    let mut system = System::default();
    let mut open: Option<Role> = None; // the role of the turn written last, still open
    scan.open(b'[')?;
    if !scan.empty(b']') {
        loop {
            let message = message(scan)?;
            if message.role == Role::System {
                system.cached |= message.cache.is_some()
                    || (message.listed
                        && message
                            .parts
                            .iter()
                            .any(|p| matches!(p, Part::Text(_, Some(_)))));
                if message.parts.iter().any(|p| p.text().is_none()) {
                    return None; // an image in a system message: a 400
                }
                system.messages.push(message);
            } else {
                let (role, blocks) = blocks(&message)?;
                if !blocks.is_empty() {
                    if open == Some(role) {
                        out.push(b',');
                    } else {
                        if open.is_some() {
                            out.extend_from_slice(b"]},");
                        }
                        out.extend_from_slice(match role {
                            Role::Assistant => br#"{"role":"assistant","content":["#,
                            _ => br#"{"role":"user","content":["#,
                        });
                        open = Some(role);
                    }
                    for (i, block) in blocks.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        let last = (i + 1 == blocks.len()).then_some(message.cache).flatten();
                        block.write(last, out)?;
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

/// A user, assistant or tool message's blocks and the role of its turn (`_turn`).
fn blocks<'a>(message: &Message<'a>) -> Option<(Role, Vec<Block<'a>>)> {
    if message.role == Role::Tool {
        let id = message.tool_call_id.filter(|id| !id.is_empty())?; // else a 400
        let texts = message
            .parts
            .iter()
            .map(|p| p.text())
            .collect::<Option<Vec<_>>>()?;
        return Some((Role::User, vec![Block::ToolResult(id, texts)]));
    }
    let mut blocks: Vec<Block<'a>> = message
        .parts
        .iter()
        .filter_map(|part| match *part {
            Part::Text(text, cache) => (!text.is_empty()).then_some(Block::Text(text, cache)),
            Part::Refusal(text) => (!text.is_empty()).then_some(Block::Text(text, None)),
            Part::Image(image, cache) => Some(Block::Image(image, cache)),
        })
        .collect();
    if message.role == Role::Assistant {
        blocks.extend(message.calls.iter().map(|&call| Block::ToolUse(call)));
    }
    Some((message.role, blocks))
}

/// One message (`None` for a role or a part the translation refuses, and where the module
/// docs say so).
fn message<'a>(scan: &mut Scan<'a>) -> Option<Message<'a>> {
    let mut role = None;
    let mut message = Message {
        role: Role::User,
        parts: Vec::new(),
        listed: false,
        calls: Vec::new(),
        tool_call_id: None,
        cache: None,
    };
    let mut seen = [false; 5];
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
                message.tool_call_id = if scan.null()? {
                    None
                } else {
                    Some(Text::read(scan)?)
                };
            }
            b"cache_control" => {
                once(&mut seen[4])?;
                Cache::read(scan, &mut message.cache)?;
            }
            _ => return Some(false), // `name`, unknown: not read
        }
        Some(true)
    })?;
    message.role = role?;
    Some(message)
}

/// A content array's parts: text, refusal and image parts (audio and files: a 400).
fn parts<'a>(scan: &mut Scan<'a>, parts: &mut Vec<Part<'a>>) -> Option<()> {
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(());
    }
    loop {
        let (mut kind, mut text, mut url, mut cache) = (None, None, None, None);
        let mut seen = [false; 4];
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
                b"cache_control" => {
                    once(&mut seen[3])?;
                    Cache::read(scan, &mut cache)?;
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        parts.push(match (kind?, text, url) {
            (b"text", Some((true, text)), None) => Part::Text(text, cache),
            // a refusal part has no breakpoint (the schema does not name it: not read)
            (b"refusal", Some((false, text)), None) => Part::Refusal(text),
            (b"image_url", None, Some(url)) => Part::Image(Image::of(url)?, cache),
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
