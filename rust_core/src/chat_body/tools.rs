//! `tools` and `tool_choice` read as the translations read msgspec's `Tool`s and
//! `NamedToolChoice` (gateway/schemas/openai.py).

use super::form::{write_value, Text};
use super::messages::Cache;
use crate::json_scan::{once, Scan};

/// `tool_choice` as the client set it.
#[derive(Clone, Copy)]
pub(crate) enum Choice<'a> {
    None,
    Auto,
    Required,
    Named(Text<'a>),
}

/// One tool's function: its name (1 to 64 characters), description and `parameters` (an
/// object's text) when not `null`, and the tool's breakpoint.
pub(crate) struct Tool<'a> {
    pub(crate) name: Text<'a>,
    pub(crate) description: Option<Text<'a>>,
    pub(crate) parameters: Option<&'a str>,
    pub(crate) cache: Option<Cache>,
}

/// Reads the `tools` value at the scan's position (`null` or an array), handing each tool to
/// `each`; whether there is one (an empty array is none, as Python's `if`).
#[inline]
pub(crate) fn each<'a>(
    scan: &mut Scan<'a>,
    mut each: impl FnMut(Tool<'a>) -> Option<()>,
) -> Option<bool> {
    if scan.null()? {
        return Some(false);
    }
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(false);
    }
    loop {
        each(tool(scan)?)?;
        if scan.next(b']')? {
            return Some(true);
        }
    }
}

/// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name": …}}`.
pub(crate) fn choice(raw: &str) -> Option<Choice<'_>> {
    let mut scan = Scan::new(raw);
    scan.ws();
    let choice = if scan.b.get(scan.i) == Some(&b'"') {
        match scan.plain_string()? {
            b"none" => Choice::None,
            b"auto" => Choice::Auto,
            b"required" => Choice::Required,
            _ => return None,
        }
    } else {
        let mut name = None;
        let mut seen = [false; 2];
        scan.members(|scan, key| {
            match key {
                b"type" => {
                    once(&mut seen[0])?;
                    scan.ws();
                    (scan.plain_string()? == b"function").then_some(())?;
                }
                b"function" => {
                    once(&mut seen[1])?;
                    let mut seen = false;
                    scan.members(|scan, key| {
                        if key != b"name" {
                            return Some(false);
                        }
                        once(&mut seen)?;
                        name = Some(Text::read_ws(scan)?);
                        Some(true)
                    })?;
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        Choice::Named(name?)
    };
    scan.at_end().then_some(choice)
}

/// One tool: `{"function", "type"?: "function", "cache_control"?}`.
fn tool<'a>(scan: &mut Scan<'a>) -> Option<Tool<'a>> {
    let (mut function, mut cache) = (None, None);
    let mut seen = [false; 3];
    scan.members(|scan, key| {
        match key {
            b"function" => {
                once(&mut seen[0])?;
                function = Some(definition(scan)?);
            }
            b"type" => {
                once(&mut seen[1])?;
                scan.ws();
                (scan.plain_string()? == b"function").then_some(())?;
            }
            b"cache_control" => {
                once(&mut seen[2])?;
                Cache::read(scan, &mut cache)?;
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    let (name, description, parameters) = function?;
    Some(Tool {
        name,
        description,
        parameters,
        cache,
    })
}

/// A tool's `function`: its name (1 to 64 characters), description and `parameters` (an
/// object's text) when not `null`; `strict` checked, not read.
#[allow(clippy::type_complexity)]
fn definition<'a>(scan: &mut Scan<'a>) -> Option<(Text<'a>, Option<Text<'a>>, Option<&'a str>)> {
    let (mut name, mut description, mut parameters) = (None, None, None);
    let mut seen = [false; 4];
    scan.members(|scan, key| {
        match key {
            b"name" => {
                once(&mut seen[0])?;
                name = Some(Text::read_ws(scan)?);
            }
            b"description" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    description = Some(Text::read(scan)?);
                }
            }
            b"parameters" => {
                once(&mut seen[2])?;
                if !scan.null()? {
                    (scan.b.get(scan.i) == Some(&b'{')).then_some(())?;
                    parameters = Some(scan.span(2)?);
                }
            }
            b"strict" => {
                once(&mut seen[3])?;
                scan.opt_bool(&mut None)?;
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    let name = name?;
    let chars = name.unescaped()?.chars().count();
    (1..=64)
        .contains(&chars)
        .then_some((name, description, parameters))
}

/// Writes a tool's `parameters` as orjson writes them when there are some (an object with a
/// member: Python's truth); whether it wrote them.
pub(crate) fn write_parameters(parameters: Option<&str>, out: &mut Vec<u8>) -> Option<bool> {
    let at = out.len();
    if let Some(parameters) = parameters {
        write_value(&mut Scan::new(parameters), out, 1)?;
    }
    if out.len() == at || out[at..] == *b"{}" {
        out.truncate(at);
        return Some(false);
    }
    Some(true)
}
