//! Small JSON helpers for the reframers: string escaping, whitespace compaction, and a
//! scanner that finds one top-level member's value span.

use serde_json::value::RawValue;

/// Appends `s` as a JSON string literal (quotes included). Escapes `"`, `\` and control
/// characters exactly as `serde_json` does, so the output never contains a raw CR or LF.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// Appends the text [`write_str`] writes between the quotes. Each character is escaped on its
/// own, so the texts of a string's pieces, one after another, are the text of the whole string.
pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The characters of the string that `raw` (a JSON string's text between its quotes) stands
/// for, when [`write_str`] writes that string back as exactly `raw`: no quote or raw control
/// character, and every escape one `write_str` writes (`\"`, `\\`, the five short control
/// escapes, `\u00xx` in lowercase for the other controls). `None` otherwise (not a string's
/// text, or one `write_str` would write otherwise: `\/`, `\u00e9`, uppercase hex, ...). A
/// fragment of escaped JSON that passes is relayed as it came, with no unescaping and
/// escaping again.
pub fn as_written(raw: &str) -> Option<u64> {
    const SHORT: [u8; 5] = [0x08, 0x09, 0x0A, 0x0C, 0x0D];
    let b = raw.as_bytes();
    let mut chars = 0u64;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    let digit = |c: u8| match c {
                        b'0'..=b'9' => Some(c - b'0'),
                        b'a'..=b'f' => Some(c - b'a' + 10),
                        _ => None,
                    };
                    let (high, low) = (digit(hex[2])?, digit(hex[3])?);
                    let value = (high << 4) | low;
                    if &hex[..2] != b"00" || value >= 0x20 || SHORT.contains(&value) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            b'"' | 0x00..=0x1F => return None,
            c => {
                i += 1;
                if c & 0xC0 == 0x80 {
                    continue; // a continuation byte: its character is counted
                }
            }
        }
        chars += 1;
    }
    Some(chars)
}

/// Appends `raw` (valid JSON text) with the insignificant whitespace outside strings removed.
pub fn write_compact(out: &mut Vec<u8>, raw: &str) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
}

/// `s` without the JSON whitespace (space, tab, LF, CR) at its ends, as `str::trim_matches`
/// with those characters trims it, by bytes: they are ASCII, never part of a longer character
/// (an event's data is trimmed so once an event; the `char` walk cost ~38 instructions each).
#[inline]
pub fn trim_ws(s: &str) -> &str {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let b = s.as_bytes();
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

/// Characters (Unicode scalar values) of a string, as relayed text is counted for billing.
pub fn char_count(s: &str) -> u64 {
    s.chars().count() as u64
}

/// The byte range of the value of the first top-level member named `key` in `text`, a JSON
/// object. This is a light scanner, not a validator: callers must also parse `text` with
/// `serde_json` (which rejects invalid JSON), and on valid JSON the scan is exact. Keys written
/// with escapes are unescaped before comparing.
pub fn find_member(text: &str, key: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None; // `}` of an empty object, or invalid
        }
        let key_end = string_end(b, i)?;
        let raw_key = &text[i + 1..key_end - 1];
        let matches = if raw_key.contains('\\') {
            serde_json::from_str::<String>(&text[i..key_end]).is_ok_and(|k| k == key)
        } else {
            raw_key == key
        };
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        if matches {
            return Some((start, end));
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[start]` is `"`: the index just past the closing quote.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        i += 2; // a backslash and the escaped byte
    }
}

/// The index just past the value starting at `b[start]`.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = start;
            while !matches!(
                b.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                i += 1;
            }
            Some(i)
        }
    }
}

/// `true` when a raw value is JSON `null`.
pub fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failure is the test failing
    use proptest::prelude::*;

    use super::*;

    /// `s` as `write_str` writes it, without its quotes.
    fn written(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out[1..out.len() - 1].to_vec()).unwrap()
    }

    #[test]
    fn a_string_s_text_as_write_str_writes_it_is_relayed_as_it_came() {
        for (raw, chars) in [
            ("", Some(0)),
            ("plain", Some(5)),
            (r#"{\"path\": \"a.txt\"}"#, Some(17)),
            (r"a\nb\tc\\d\re\bf\fg", Some(13)),
            (r"\u0001\u001f\u000b", Some(3)),
            ("é€😀", Some(3)),
            (r"\/", None),     // `write_str` leaves a slash alone
            (r"\u00e9", None), // and writes é as it is
            (r"\u000a", None), // and a line feed as \n
            (r"\u001F", None), // in lowercase
            (r"\u0100", None),
            (r"\ud83d\ude00", None),
            (r"\x", None),
            (r"\u00", None),
            ("\\", None),      // a lone backslash
            (r#"a"b"#, None),  // a quote ends the string
            ("a\u{1}b", None), // a raw control character
        ] {
            assert_eq!(as_written(raw), chars, "{raw}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Whatever `write_str` writes is relayed as it came, its characters counted.
        #[test]
        fn write_str_s_text_is_as_written(
            s in proptest::collection::vec(
                prop::sample::select(vec!['a', ' ', '"', '\\', '/', '\n', '\r', '\t', '\u{8}',
                    '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', 'é', '😀']),
                0..12,
            ),
        ) {
            let s: String = s.into_iter().collect();
            prop_assert_eq!(as_written(&written(&s)), Some(char_count(&s)));
        }

        /// Any text `as_written` takes is a JSON string's, which `write_str` writes back as it
        /// is, with the characters it counted.
        #[test]
        fn what_as_written_takes_is_written_back_the_same(
            parts in proptest::collection::vec(
                prop::sample::select(vec!["a", " ", "\"", "\\", "\\\"", "\\\\", "\\n",
                    "\\/", "\\u00", "\\u0001", "\\u001f", "\\u001F", "\\u000a", "\\u00e9",
                    "é", "\u{1}", "u", "0", "f"]),
                0..10,
            ),
        ) {
            let raw: String = parts.concat();
            if let Some(chars) = as_written(&raw) {
                let s: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
                prop_assert_eq!(written(&s), raw);
                prop_assert_eq!(char_count(&s), chars);
            }
        }
    }

    #[test]
    fn trim_ws_trims_as_trim_matches_does() {
        for s in [
            "",
            " ",
            " \t\r\n",
            "x",
            " x ",
            "\n{\"a\": 1}\r\n",
            "\u{a0}x\u{a0}",
            " é ",
            "\u{2028}",
        ] {
            let chars = s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
            assert_eq!(trim_ws(s), chars, "{s:?}");
        }
    }

    #[test]
    fn write_str_matches_serde_json() {
        for s in [
            "plain",
            "quote\" back\\ nl\n cr\r tab\t",
            "\u{1}\u{1f}\u{8}\u{c}",
            "é€😀",
            "",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn compact_removes_whitespace_outside_strings_only() {
        let mut out = Vec::new();
        write_compact(&mut out, "{ \"a b\" :\n [1, \"x\\\" y\" ]\r\n}");
        assert_eq!(out, b"{\"a b\":[1,\"x\\\" y\"]}");
    }

    #[test]
    fn find_member_finds_top_level_values_only() {
        let t = r#"{"a":{"model":1},"b":"x\"model\":","m\u006fdel" : [1,{"c":"]"}] ,"model":"z"}"#;
        let (s, e) = find_member(t, "model").unwrap();
        assert_eq!(&t[s..e], r#"[1,{"c":"]"}]"#);
        let (s, e) = find_member(t, "b").unwrap();
        assert_eq!(&t[s..e], r#""x\"model\":""#);
        assert_eq!(find_member(r#"{"a":1}"#, "model"), None);
        assert_eq!(find_member("{}", "model"), None);
        assert_eq!(find_member(r#"{"model":null}"#, "model"), Some((9, 13)));
        assert_eq!(
            find_member(r#"{"n": -1.5e3 , "model": true}"#, "n"),
            Some((6, 12))
        );
    }
}
