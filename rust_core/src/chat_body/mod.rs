//! The client's OpenAI chat body read for a translation to a foreign format in one scan
//! (`crate::anthropic_body`, `crate::gemini_body`): what both read alike — the top-level
//! members, the messages and their parts, the tools and the tool choice, the scalar members —
//! and what orjson writes (`form`). Each reader is **conservative** as its callers are: `None`
//! for whatever it cannot tell exactly as the Python path (msgspec's view of the body and
//! orjson's dict of it) would read it, and the caller answers `None` then.

pub(crate) mod form;
pub(crate) mod messages;
pub(crate) mod tools;

use form::Text;
use smallvec::SmallVec;

use crate::json_scan::{once, Scan};

/// Reads the top-level object of `body`: `member` reads each key's value (`None` for a key it
/// refuses). A repeated key is refused (the last one counts in Python); so is anything after
/// the object but whitespace.
#[inline]
pub(crate) fn top_level<'a>(
    body: &'a [u8],
    mut member: impl FnMut(&mut Scan<'a>, &'a [u8]) -> Option<()>,
) -> Option<()> {
    let text = std::str::from_utf8(body).ok()?;
    let mut scan = Scan::new(text);
    let mut keys: SmallVec<[&[u8]; 16]> = SmallVec::new();
    scan.open(b'{')?;
    if !scan.empty(b'}') {
        loop {
            let key = scan.key()?;
            if keys.contains(&key) {
                return None;
            }
            keys.push(key);
            member(&mut scan, key)?;
            if scan.next(b'}')? {
                break;
            }
        }
    }
    scan.at_end().then_some(())
}

/// A `response_format` as the translations read it.
pub(crate) enum Format<'a> {
    /// `null` or of type `text` (the translations write nothing for it).
    Text,
    JsonObject,
    /// Of type `json_schema`: its `json_schema`'s `schema` when that is an object (the text of
    /// it), else `None`.
    JsonSchema(Option<&'a str>),
}

/// A `response_format`: `null` or `{"type", "json_schema"?: null | object}` (other members not
/// read); `None` for anything else.
pub(crate) fn response_format(raw: &str) -> Option<Format<'_>> {
    let mut scan = Scan::new(raw);
    if scan.null()? {
        return Some(Format::Text);
    }
    let mut seen = [false; 2];
    let (mut kind, mut schema) = (None, None);
    scan.members(|scan, key| {
        match key {
            b"type" => {
                once(&mut seen[0])?;
                kind = Some(Text::read_ws(scan)?).filter(|kind| !kind.escaped);
            }
            b"json_schema" => {
                once(&mut seen[1])?;
                if !scan.null()? {
                    (scan.b.get(scan.i) == Some(&b'{')).then_some(())?;
                    let mut seen = false;
                    scan.members(|scan, key| {
                        if key != b"schema" {
                            return Some(false);
                        }
                        once(&mut seen)?;
                        scan.ws();
                        let value = scan.span(3)?;
                        schema = value.starts_with('{').then_some(value);
                        Some(true)
                    })?;
                }
            }
            _ => return Some(false),
        }
        Some(true)
    })?;
    let format = match kind?.raw {
        "text" => Format::Text,
        "json_object" => Format::JsonObject,
        "json_schema" => Format::JsonSchema(schema),
        _ => return None,
    };
    scan.at_end().then_some(format)
}

/// `Some` when a member's value equals `value` as Python's `==` compares what orjson parsed
/// (`false` is 0 and `true` 1: `0 == 0.0 == False`), `None` otherwise and for anything that is
/// not a number or a boolean (`NEUTRAL` in gateway/providers/translate.py is compared so).
#[allow(clippy::float_cmp)] // (Python's `==` on the values: exact)
pub(crate) fn equals(raw: &str, value: f64) -> Option<()> {
    let parsed = match raw {
        "false" => 0.0,
        "true" => 1.0,
        _ => {
            let mut scan = Scan::new(raw);
            scan.number()?;
            scan.at_end().then_some(())?;
            raw.parse::<f64>().ok()?
        }
    };
    (parsed == value).then_some(())
}

/// A token budget into `slot`: `null` or a positive integer; 0 counts as unset, as the Python
/// path's `or` reads it. `None` for anything else.
pub(crate) fn budget(raw: &str, slot: &mut Option<u64>) -> Option<()> {
    let mut scan = Scan::new(raw);
    scan.opt_u64(slot)?;
    *slot = slot.filter(|&n| n > 0);
    scan.at_end().then_some(())
}

/// `temperature` or `top_p` into `slot`: `null`, or a number written without an exponent or
/// a sign, 0 or from 0.0001 to 2: its value and the text orjson writes for it (msgspec decodes
/// it as a `float`, an integer too: the shortest text that reads back as the same `f64`, as
/// Rust's `Debug` writes it in that range). `None` for anything else (an exponent, a sign, a
/// value orjson writes otherwise).
pub(crate) fn sampling(raw: &str, slot: &mut Option<(f64, String)>) -> Option<()> {
    if raw == "null" {
        *slot = None;
        return Some(());
    }
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let value: f64 = raw.parse().ok()?;
    if value != 0.0 && !(1e-4..=2.0).contains(&value) {
        return None;
    }
    *slot = Some((value, format!("{value:?}")));
    Some(())
}

/// A string or `null` into `slot`.
pub(crate) fn nullable_str<'a>(raw: &'a str, slot: &mut Option<Text<'a>>) -> Option<()> {
    let mut scan = Scan::new(raw);
    *slot = if scan.null()? {
        None
    } else {
        Some(Text::read(&mut scan)?)
    };
    scan.at_end().then_some(())
}

/// `stop` (a string or an array of strings) as an array of strings (`stop_list`).
pub(crate) fn stop_list(raw: &str, out: &mut Vec<u8>) -> Option<()> {
    fn quoted(scan: &mut Scan<'_>, out: &mut Vec<u8>) -> Option<()> {
        Text::read(scan)?.write_quoted(out)
    }
    let mut scan = Scan::new(raw);
    out.push(b'[');
    if raw.starts_with('"') {
        quoted(&mut scan, out)?;
    } else {
        scan.open(b'[')?;
        if !scan.empty(b']') {
            for i in 0.. {
                if i > 0 {
                    out.push(b',');
                }
                scan.ws();
                quoted(&mut scan, out)?;
                if scan.next(b']')? {
                    break;
                }
            }
        }
    }
    out.push(b']');
    scan.at_end().then_some(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sampling_values_are_written_as_orjson_writes_them() {
        for (raw, written) in [
            ("0.0", "0.0"),
            ("0.7000", "0.7"),
            ("1.0", "1.0"),
            ("0.0001", "0.0001"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("0", "0.0"),
            ("2", "2.0"),
        ] {
            let mut slot = None;
            sampling(raw, &mut slot).unwrap();
            assert_eq!(slot.unwrap().1, written, "{raw}");
        }
        for raw in ["3", "-0.5", "1e0", "0.00009", ".5", "5.", "0x1", "-0"] {
            assert!(sampling(raw, &mut None).is_none(), "{raw}");
        }
    }

    #[test]
    fn equals_compares_as_python_compares_what_orjson_parsed() {
        for (raw, value) in [
            ("false", 0.0),
            ("0", 0.0),
            ("-0.0e5", 0.0),
            ("true", 1.0),
            ("1.0", 1.0),
            ("1e0", 1.0),
        ] {
            assert_eq!(equals(raw, value), Some(()), "{raw}");
        }
        for (raw, value) in [
            ("true", 0.0),
            ("2", 1.0),
            ("\"0\"", 0.0),
            ("null", 0.0),
            ("0 1", 0.0),
        ] {
            assert_eq!(equals(raw, value), None, "{raw}");
        }
    }
}
