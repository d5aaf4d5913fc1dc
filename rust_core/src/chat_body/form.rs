//! What orjson writes: a string's text copied as it came where orjson writes it the same way,
//! and a parsed JSON value (a tool's `parameters`, a tool call's `arguments`) written again in
//! orjson's form.

use smallvec::SmallVec;

use crate::json::write_str;
use crate::json_scan::{escape_end, special_bytes, unescape, Scan, MAX_DEPTH};

/// A string's text as it came between its quotes (validated as the scan validates strings:
/// its escapes valid, its surrogates paired, no raw control character), whether it has
/// escapes, and whether one of them is not the one orjson writes for its character.
#[derive(Clone, Copy)]
pub(crate) struct Text<'a> {
    pub(crate) raw: &'a str,
    pub(crate) escaped: bool,
    foreign: bool,
}

impl<'a> Text<'a> {
    /// The string at the scan's position: `Scan::string`'s walk (eight bytes at a time up to
    /// the first quote, backslash or control character), each escape checked against orjson's
    /// form on the way.
    pub(crate) fn read(scan: &mut Scan<'a>) -> Option<Self> {
        let b = scan.b;
        if *b.get(scan.i)? != b'"' {
            return None;
        }
        let start = scan.i + 1;
        let mut i = start;
        let (mut escaped, mut foreign) = (false, false);
        loop {
            while let Some(word) = b.get(i..i + 8) {
                let special = special_bytes(u64::from_le_bytes(word.try_into().ok()?));
                if special != 0 {
                    i += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match *b.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        // the common escapes inline; `\/` is not orjson's
                        b'"' | b'\\' | b'n' | b't' | b'r' | b'b' | b'f' => i += 2,
                        _ => {
                            let end = escape_end(b, i)?;
                            foreign |= !orjson_escape(&b[i..end]);
                            i = end;
                        }
                    }
                }
                0..=0x1F => return None, // a raw control character
                _ => i += 1,
            }
        }
        scan.i = i + 1;
        Some(Self {
            raw: scan.s.get(start..i)?,
            escaped,
            foreign,
        })
    }

    /// Whitespace, then the string at the scan's position.
    pub(crate) fn read_ws(scan: &mut Scan<'a>) -> Option<Self> {
        scan.ws();
        Self::read(scan)
    }

    /// (An escape is never empty: the raw text is empty only when the text is.)
    pub(crate) fn is_empty(self) -> bool {
        self.raw.is_empty()
    }

    /// The text without its escapes: borrowed when it has none.
    pub(crate) fn unescaped(self) -> Option<std::borrow::Cow<'a, str>> {
        Some(if self.escaped {
            std::borrow::Cow::Owned(unescape(self.raw)?)
        } else {
            std::borrow::Cow::Borrowed(self.raw)
        })
    }

    /// Writes the text between quotes as orjson writes it: as it came when it has no escape
    /// orjson would write otherwise (the text holds no quote, backslash or control character
    /// that is not escaped: the scan refuses a raw one), else as it came but for those escapes,
    /// each written as orjson writes its character.
    pub(crate) fn write(self, out: &mut Vec<u8>) -> Option<()> {
        if !self.foreign {
            out.extend_from_slice(self.raw.as_bytes());
            return Some(());
        }
        let b = self.raw.as_bytes();
        let mut i = 0;
        while let Some(at) = memchr::memchr(b'\\', &b[i..]).map(|off| i + off) {
            out.extend_from_slice(&b[i..at]);
            let end = escape_end(b, at)?;
            if orjson_escape(&b[at..end]) {
                out.extend_from_slice(&b[at..end]);
            } else {
                // one character (a surrogate pair is one): orjson's escape or its UTF-8
                let start = out.len();
                write_str(out, &unescape(self.raw.get(at..end)?)?);
                let close = out.len() - 1;
                out.copy_within(start + 1..close, start); // without its quotes
                out.truncate(close - 1);
            }
            i = end;
        }
        out.extend_from_slice(&b[i..]);
        Some(())
    }

    /// Writes the text with its quotes.
    pub(crate) fn write_quoted(self, out: &mut Vec<u8>) -> Option<()> {
        out.push(b'"');
        self.write(out)?;
        out.push(b'"');
        Some(())
    }
}

/// Writes `texts` as one string, joined by a blank line (`"\n\n".join`), with its quotes.
pub(crate) fn write_joined(texts: &[Text<'_>], out: &mut Vec<u8>) -> Option<()> {
    out.push(b'"');
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(br"\n\n");
        }
        text.write(out)?;
    }
    out.push(b'"');
    Some(())
}

/// Whether `escape` (a valid one, a surrogate pair whole) is the one orjson writes for its
/// character: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, and `\u00xx` (lower-case hex) for
/// the other control characters; not `\/` or any other `\u`.
fn orjson_escape(escape: &[u8]) -> bool {
    match *escape {
        [_, b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f'] => true,
        [_, b'u', b'0', b'0', high @ (b'0' | b'1'), low @ (b'0'..=b'9' | b'a'..=b'f')] => {
            let low = if low.is_ascii_digit() {
                low - b'0'
            } else {
                low - b'a' + 10
            };
            // (the short escapes' characters are written with them)
            !matches!((high - b'0') * 16 + low, 0x08 | 0x09 | 0x0A | 0x0C | 0x0D)
        }
        _ => false,
    }
}

/// Keys of one object compared for repeats; an object with more is left to Python (the
/// comparison is quadratic).
const MAX_KEYS: usize = 64;

/// Writes the JSON value at the scan's position as orjson writes what a parser (orjson's,
/// msgspec's) made of it: no whitespace, strings as [`Text::write`], integers as they came,
/// other numbers as the shortest text of their `f64`. `None` where that form is not certain:
/// an escaped or repeated key, an object of more than [`MAX_KEYS`] keys, an integer beyond
/// `i64` or `-0`, a fraction or exponent whose value is not 0 or from 0.0001 to 10^15 in
/// size (orjson writes others with an exponent, Rust otherwise), nesting deeper than
/// `MAX_DEPTH`.
pub(crate) fn write_value(scan: &mut Scan<'_>, out: &mut Vec<u8>, depth: u32) -> Option<()> {
    scan.ws();
    match *scan.b.get(scan.i)? {
        b'"' => Text::read(scan)?.write_quoted(out)?,
        b'{' if depth < MAX_DEPTH => {
            scan.i += 1;
            out.push(b'{');
            let mut keys: SmallVec<[&str; 16]> = SmallVec::new();
            if !scan.empty(b'}') {
                loop {
                    let key = Text::read_ws(scan)?;
                    if key.escaped || keys.len() == MAX_KEYS || keys.contains(&key.raw) {
                        return None;
                    }
                    scan.ws();
                    (*scan.b.get(scan.i)? == b':').then(|| scan.i += 1)?;
                    if !keys.is_empty() {
                        out.push(b',');
                    }
                    keys.push(key.raw);
                    key.write_quoted(out)?;
                    out.push(b':');
                    write_value(scan, out, depth + 1)?;
                    if scan.next(b'}')? {
                        break;
                    }
                }
            }
            out.push(b'}');
        }
        b'[' if depth < MAX_DEPTH => {
            scan.i += 1;
            out.push(b'[');
            if !scan.empty(b']') {
                for i in 0.. {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_value(scan, out, depth + 1)?;
                    if scan.next(b']')? {
                        break;
                    }
                }
            }
            out.push(b']');
        }
        b't' => {
            scan.literal(b"true")?;
            out.extend_from_slice(b"true");
        }
        b'f' => {
            scan.literal(b"false")?;
            out.extend_from_slice(b"false");
        }
        b'n' => {
            scan.literal(b"null")?;
            out.extend_from_slice(b"null");
        }
        b'-' | b'0'..=b'9' => {
            let start = scan.i;
            scan.number()?;
            out.extend_from_slice(number(scan.s.get(start..scan.i)?)?.as_bytes());
        }
        _ => return None,
    }
    Some(())
}

/// A valid JSON number's text as orjson writes the value a parser made of it (see
/// [`write_value`]).
pub(crate) fn number(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if raw.bytes().all(|c| c == b'-' || c.is_ascii_digit()) {
        // an int: as it came (valid JSON has no leading zero), but not -0 (written 0) nor
        // beyond what orjson writes
        raw.parse::<i64>().ok().filter(|_| raw != "-0")?;
        return Some(std::borrow::Cow::Borrowed(raw));
    }
    let value: f64 = raw.parse().ok()?;
    if value != 0.0 && !(1e-4..=1e15).contains(&value.abs()) {
        return None;
    }
    Some(std::borrow::Cow::Owned(format!("{value:?}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn written(raw: &str) -> Option<String> {
        let mut out = Vec::new();
        let mut scan = Scan::new(raw);
        write_value(&mut scan, &mut out, 1)?;
        scan.at_end().then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_value_is_written_in_orjsons_form() {
        assert_eq!(
            written(
                r#" { "a" : [1, -2, 0.50, 1E2, -0.0, true,false , null], "b":{"c":"\u00e9\/"} } "#
            )
            .unwrap(),
            r#"{"a":[1,-2,0.5,100.0,-0.0,true,false,null],"b":{"c":"é/"}}"#
        );
        for refused in [
            r#"{"a":1,"a":2}"#,
            r#"{"\u0061":1}"#,
            "-0",
            "1e-5",
            "1e16",
            "9223372036854775808",
            "[1,]",
        ] {
            assert!(written(refused).is_none(), "{refused}");
        }
    }
}
