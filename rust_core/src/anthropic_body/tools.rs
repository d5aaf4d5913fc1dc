//! `tools`, `tool_choice` and `parallel_tool_calls` → Anthropic's `tools` and `tool_choice`, as
//! `translate_tools` makes them (gateway/providers/anthropic.py).

use crate::chat_body::messages::Cache;
use crate::chat_body::tools::{self, choice, write_parameters, Choice, Tool};
use crate::json_scan::Scan;

/// The schema of a tool without parameters.
const NO_PARAMETERS: &[u8] = br#"{"type":"object","properties":{}}"#;

/// Writes the `tools` value at the scan's position (`null` or an array) as Anthropic's tools
/// array into `out`; whether there is one (an empty array is none, as Python's `if`).
pub(super) fn read(scan: &mut Scan<'_>, out: &mut Vec<u8>) -> Option<bool> {
    out.push(b'[');
    let mut first = true;
    let any = tools::each(scan, |tool| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_tool(&tool, out)
    })?;
    out.push(b']');
    Some(any)
}

/// Writes `,"tool_choice":{…}` for a `tool_choice` (`raw`: its value when not `null`), or
/// for `serial`: `parallel_tool_calls: false` with tools.
pub(super) fn write_choice(raw: Option<&str>, serial: bool, out: &mut Vec<u8>) -> Option<()> {
    let mut choice = match raw {
        Some(raw) => Some(choice(raw)?),
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

/// One tool: `{"name", "description"? (when not empty), "input_schema", "cache_control"?}`.
fn write_tool(tool: &Tool<'_>, out: &mut Vec<u8>) -> Option<()> {
    out.extend_from_slice(br#"{"name":"#);
    tool.name.write_quoted(out)?;
    if let Some(description) = tool.description.filter(|d| !d.is_empty()) {
        out.extend_from_slice(br#","description":"#);
        description.write_quoted(out)?;
    }
    out.extend_from_slice(br#","input_schema":"#);
    if !write_parameters(tool.parameters, out)? {
        out.extend_from_slice(NO_PARAMETERS); // no parameters, or none named: Python's `or`
    }
    Cache::write(tool.cache, out);
    out.push(b'}');
    Some(())
}
