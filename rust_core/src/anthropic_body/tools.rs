//! `tools`, `tool_choice` and `parallel_tool_calls` → Anthropic's `tools` and `tool_choice`, as
//! `translate_tools` makes them (gateway/providers/anthropic.py).

use super::form::{write_value, Text};
use super::messages::Cache;
use crate::json_scan::{once, Scan};

/// The schema of a tool without parameters.
const NO_PARAMETERS: &[u8] = br#"{"type":"object","properties":{}}"#;

/// `tool_choice` as the client set it.
#[derive(Clone, Copy)]
enum Choice<'a> {
    None,
    Auto,
    Required,
    Named(Text<'a>),
}

/// Writes the `tools` value at the scan's position (`null` or an array) as Anthropic's tools
/// array into `out`; whether there is one (an empty array is none, as Python's `if`).
pub(super) fn read(scan: &mut Scan<'_>, out: &mut Vec<u8>) -> Option<bool> {
    if scan.null()? {
        return Some(false);
    }
    scan.open(b'[')?;
    if scan.empty(b']') {
        return Some(false);
    }
    out.push(b'[');
    for i in 0.. {
        if i > 0 {
            out.push(b',');
        }
        tool(scan, out)?;
        if scan.next(b']')? {
            break;
        }
    }
    out.push(b']');
    Some(true)
}

/// Writes `,"tool_choice":{…}` for a `tool_choice` (`choice`: its value when not `null`), or
/// for `serial`: `parallel_tool_calls: false` with tools.
pub(super) fn write_choice(choice: Option<&str>, serial: bool, out: &mut Vec<u8>) -> Option<()> {
    let mut choice = match choice {
        Some(raw) => Some(read_choice(raw)?),
        None => None,
    };
    if serial {
        choice = choice.or(Some(Choice::Auto));
    }
    if let Some(choice) = choice {
        out.extend_from_slice(br#","tool_choice":{"type":"#);
        match choice {
            Choice::None => out.extend_from_slice(br#""none""#),
            Choice::Auto => out.extend_from_slice(br#""auto""#),
            Choice::Required => out.extend_from_slice(br#""any""#),
            Choice::Named(name) => {
                out.extend_from_slice(br#""tool","name":"#);
                name.write_quoted(out)?;
            }
        }
        if serial && !matches!(choice, Choice::None) {
            out.extend_from_slice(br#","disable_parallel_tool_use":true"#);
        }
        out.push(b'}');
    }
    Some(())
}

/// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name": …}}`.
fn read_choice(raw: &str) -> Option<Choice<'_>> {
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

/// One tool: `{"name", "description"? (when not empty), "input_schema", "cache_control"?}`.
fn tool(scan: &mut Scan<'_>, out: &mut Vec<u8>) -> Option<()> {
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
    out.extend_from_slice(br#"{"name":"#);
    name.write_quoted(out)?;
    if let Some(description) = description.filter(|d| !d.is_empty()) {
        out.extend_from_slice(br#","description":"#);
        description.write_quoted(out)?;
    }
    out.extend_from_slice(br#","input_schema":"#);
    let at = out.len();
    if let Some(parameters) = parameters {
        let mut scan = Scan::new(parameters);
        write_value(&mut scan, out, 1)?;
    }
    if out.len() == at || out[at..] == *b"{}" {
        out.truncate(at); // no parameters, or none named: Python's `or`
        out.extend_from_slice(NO_PARAMETERS);
    }
    Cache::write(cache, out);
    out.push(b'}');
    Some(())
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
