//! `messages` → Anthropic's turns and top-level `system`, as `translate_messages` makes them
//! (gateway/providers/anthropic.py).

use crate::chat_body::form::{write_joined, Text};
use crate::chat_body::messages::{
    self, data_url, write_arguments, Cache, Call, Message, Part, Role,
};
use crate::json_scan::Scan;

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
            let (mime, data) = data_url(url)?;
            let mime = IMAGE_TYPES
                .into_iter()
                .find(|t| t.eq_ignore_ascii_case(mime))?;
            return Some(Self::Base64(mime, data));
        }
        (url.starts_with("http://") || url.starts_with("https://")).then_some(Self::Url(url))
    }
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
                write_arguments(call.arguments, out)?;
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

/// The system's texts, kept per message until the end tells whether a breakpoint makes them
/// blocks.
#[derive(Default)]
pub(super) struct System<'a> {
    messages: Vec<Message<'a>>,
    cached: bool,
}

impl System<'_> {
    /// About how many bytes `write` writes, at most (its texts, and a block's members for each).
    pub(super) fn size(&self) -> usize {
        let parts = self.messages.iter().flat_map(|message| &message.parts);
        parts
            .map(|part| part.text().map_or(0, |t| t.raw.len()) + 64)
            .sum()
    }

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
                        Part::Image(..) | Part::Audio(..) => None,
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
    messages::each(scan, |message| {
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
            return Some(());
        }
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
        Some(())
    })?;
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
    let mut blocks = Vec::with_capacity(message.parts.len() + message.calls.len());
    for part in &message.parts {
        match *part {
            Part::Text(text, cache) if !text.is_empty() => blocks.push(Block::Text(text, cache)),
            Part::Refusal(text) if !text.is_empty() => blocks.push(Block::Text(text, None)),
            Part::Text(..) | Part::Refusal(_) => {}
            Part::Image(url, cache) => blocks.push(Block::Image(Image::of(url)?, cache)),
            Part::Audio(_) => return None, // a 400
        }
    }
    if message.role == Role::Assistant {
        blocks.extend(message.calls.iter().map(|&call| Block::ToolUse(call)));
    }
    Some((message.role, blocks))
}
