//! A validating JSON scan for the reframers' fast paths: the building blocks that walk an
//! event's JSON once, validating it as `serde_json` would, while a reader (`reframe/
//! openai_scan.rs`, ...) picks out the members it needs.
//!
//! **Conservative by construction.** Every method answers `None` for whatever it cannot read
//! exactly as `serde_json` would (invalid JSON, a raw control character or an invalid escape
//! in a string, a lone UTF-16 surrogate anywhere, nesting deeper than [`MAX_DEPTH`]); a reader
//! built on it hands such an event to its typed `serde_json` view, which decides.

use std::borrow::Cow;

/// Nesting deeper than this is left to `serde_json` (whose own limit is 128).
pub(crate) const MAX_DEPTH: u32 = 64;

/// A member the typed view reads may appear once (`serde` refuses a duplicate field).
pub(crate) fn once(seen: &mut bool) -> Option<()> {
    if *seen {
        return None;
    }
    *seen = true;
    Some(())
}

/// A cursor over one event's JSON text.
pub(crate) struct Scan<'a> {
    /// The text.
    pub(crate) s: &'a str,
    /// Its bytes.
    pub(crate) b: &'a [u8],
    /// The position.
    pub(crate) i: usize,
}

impl<'a> Scan<'a> {
    /// A scan from the start of `s`.
    pub(crate) fn new(s: &'a str) -> Self {
        Self {
            s,
            b: s.as_bytes(),
            i: 0,
        }
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Whitespace, then `open` (`{` or `[`).
    pub(crate) fn open(&mut self, open: u8) -> Option<()> {
        self.ws();
        (*self.b.get(self.i)? == open).then(|| self.i += 1)
    }

    /// Right after an opening bracket: whether the closing one follows (consumed).
    pub(crate) fn empty(&mut self, close: u8) -> bool {
        self.ws();
        let empty = self.b.get(self.i) == Some(&close);
        if empty {
            self.i += 1;
        }
        empty
    }

    /// After a member or an element: `true` at the closing bracket, `false` at a comma (either
    /// consumed); `None` at anything else.
    pub(crate) fn next(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = *self.b.get(self.i)?;
        self.i += 1;
        if c == close {
            Some(true)
        } else if c == b',' {
            Some(false)
        } else {
            None
        }
    }

    /// A member's key (without escapes) and its colon.
    pub(crate) fn key(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let key = self.plain_string()?;
        self.ws();
        (*self.b.get(self.i)? == b':').then(|| self.i += 1)?;
        Some(key)
    }

    /// `null` (consumed: `true`), or whitespace before something else (`false`).
    pub(crate) fn null(&mut self) -> Option<bool> {
        self.ws();
        if self.b.get(self.i) == Some(&b'n') {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    /// A string without escapes at `i`: its text.
    pub(crate) fn plain_string(&mut self) -> Option<&'a [u8]> {
        let (start, end, escaped) = self.string()?;
        let b = self.b;
        (!escaped).then(|| &b[start..end])
    }

    /// A string at `i` (its opening quote): the text's span and whether it has escapes.
    pub(crate) fn string(&mut self) -> Option<(usize, usize, bool)> {
        let b = self.b;
        if *b.get(self.i)? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first quote, backslash or control character.
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
                    i = escape_end(b, i)?;
                }
                0..=0x1F => return None, // a raw control character
                _ => i += 1,
            }
        }
        self.i = i + 1;
        Some((start, i, escaped))
    }

    /// A string or `null`: the characters of its text (0 for `null`), as the relayed text is
    /// counted.
    pub(crate) fn counted_string(&mut self) -> Option<u64> {
        if self.null()? {
            return Some(0);
        }
        self.counted_text()
    }

    /// A string at `i` (its opening quote): the characters of its text, as `counted_string`.
    pub(crate) fn counted_text(&mut self) -> Option<u64> {
        // `string`'s walk, counting as it goes the bytes that start a character (valid UTF-8:
        // the text is a slice of a `str` between ASCII quotes) and each escape as one: the
        // text is not walked a second time, byte by byte (421K instructions for the messages
        // of loadtests/bench's agent request, 46 KB, most of their text escaped, against 145K).
        let b = self.b;
        if *b.get(self.i)? != b'"' {
            return None;
        }
        let mut i = self.i + 1;
        let mut chars = 0;
        loop {
            while let Some(word) = b.get(i..i + 8) {
                let word = u64::from_le_bytes(word.try_into().ok()?);
                let special = special_bytes(word);
                let continuation = word & !(word << 1) & HIGH; // 0b10xx_xxxx bytes
                let plain = if special == 0 {
                    8
                } else {
                    special.trailing_zeros() / 8 // the bytes before the first special one
                };
                chars += u64::from(plain);
                if continuation != 0 {
                    let before = u64::MAX.checked_shr(64 - 8 * plain).unwrap_or(0);
                    chars -= u64::from((continuation & before).count_ones());
                }
                i += plain as usize;
                if special != 0 {
                    break;
                }
            }
            match *b.get(i)? {
                b'"' => break,
                b'\\' => i = escape_end(b, i)?,
                0..=0x1F => return None, // a raw control character
                c => {
                    chars -= u64::from(c & 0xC0 == 0x80);
                    i += 1;
                }
            }
            chars += 1;
        }
        self.i = i + 1;
        Some(chars)
    }

    /// A string at `i`, as `serde_json` reads it into a `Cow<str>`: borrowed when it has no
    /// escapes, unescaped otherwise.
    pub(crate) fn str_cow(&mut self) -> Option<Cow<'a, str>> {
        let (start, end, escaped) = self.string()?;
        let text = self.s.get(start..end)?;
        Some(if escaped {
            Cow::Owned(unescape(text)?)
        } else {
            Cow::Borrowed(text)
        })
    }

    /// A string or `null` into `slot`, as an `Option<Cow<str>>` member reads it.
    pub(crate) fn opt_str(&mut self, slot: &mut Option<Cow<'a, str>>) -> Option<()> {
        *slot = if self.null()? {
            None
        } else {
            Some(self.str_cow()?)
        };
        Some(())
    }

    /// A non-negative integer that fits a `u64`, or `null`, as an `Option<u64>` member reads it,
    /// into `slot` (a fraction, an exponent, a sign or an overflow: `None`, left to
    /// `serde_json`).
    pub(crate) fn opt_u64(&mut self, slot: &mut Option<u64>) -> Option<()> {
        if self.null()? {
            *slot = None;
            return Some(());
        }
        let b = self.b;
        let start = self.i;
        let end = digits_end(b, start);
        if end == start || (b[start] == b'0' && end > start + 1) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = b.get(end) {
            return None;
        }
        let n = b[start..end].iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        self.i = end;
        *slot = Some(n);
        Some(())
    }

    /// `true`, `false` or `null` into `slot`, as an `Option<bool>` member reads it.
    pub(crate) fn opt_bool(&mut self, slot: &mut Option<bool>) -> Option<()> {
        self.ws();
        *slot = match *self.b.get(self.i)? {
            b'n' => {
                self.literal(b"null")?;
                None
            }
            b't' => {
                self.literal(b"true")?;
                Some(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Some(false)
            }
            _ => return None,
        };
        Some(())
    }

    /// Any JSON value (validated, as `value`): its text.
    pub(crate) fn span(&mut self, depth: u32) -> Option<&'a str> {
        self.ws();
        let start = self.i;
        self.value(depth)?;
        self.s.get(start..self.i)
    }

    /// The members of an object (not `null`): `member` reads the value of each key it knows
    /// (`Some(false)` for a key it does not, whose value is then skipped).
    #[inline]
    pub(crate) fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, &[u8]) -> Option<bool>,
    ) -> Option<()> {
        self.open(b'{')?;
        if self.empty(b'}') {
            return Some(());
        }
        loop {
            let key = self.key()?;
            if !member(self, key)? {
                self.value(2)?;
            }
            if self.next(b'}')? {
                return Some(());
            }
        }
    }

    /// Any JSON value, validated (nested at most `MAX_DEPTH` deep).
    pub(crate) fn value(&mut self, depth: u32) -> Option<()> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => self.string().map(|_| ()),
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                if !self.empty(b'}') {
                    loop {
                        self.ws();
                        self.string()?;
                        self.ws();
                        (*self.b.get(self.i)? == b':').then(|| self.i += 1)?;
                        self.value(depth + 1)?;
                        if self.next(b'}')? {
                            break;
                        }
                    }
                }
                Some(())
            }
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                if !self.empty(b']') {
                    loop {
                        self.value(depth + 1)?;
                        if self.next(b']')? {
                            break;
                        }
                    }
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    pub(crate) fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, within a double's range: a
    /// number past it (`1e400`) is left to the reader's reference, as orjson refuses one
    /// ("number is infinity when parsed as double": the Python paths' 502 or 400).
    pub(crate) fn number(&mut self) -> Option<()> {
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = i;
        match *b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits_end(b, i + 1),
            _ => return None,
        }
        // (Fewer than 309 digits before the point and no exponent: below f64::MAX, finite.)
        let mut checked = i - digits < 309;
        if b.get(i) == Some(&b'.') {
            let end = digits_end(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits_end(b, i);
            if end == i {
                return None;
            }
            i = end;
            checked = false;
        }
        if !checked {
            let text = std::str::from_utf8(&b[self.i..i]).ok()?;
            if !text.parse::<f64>().ok()?.is_finite() {
                return None;
            }
        }
        self.i = i;
        Some(())
    }
}

/// The index just past the escape at `b[i]` (a backslash), or `None` for an invalid escape or a
/// lone surrogate (refused by `serde_json` where it reads the string; left to it everywhere).
pub(crate) fn escape_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => match hex4(b, i + 2)? {
            0xD800..=0xDBFF => {
                if b.get(i + 6..i + 8)? != b"\\u" {
                    return None;
                }
                matches!(hex4(b, i + 8)?, 0xDC00..=0xDFFF).then_some(i + 12)
            }
            0xDC00..=0xDFFF => None,
            _ => Some(i + 6),
        },
        _ => None,
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4)?
        .iter()
        .try_fold(0, |acc, &c| Some(acc * 16 + char::from(c).to_digit(16)?))
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// A string's text unescaped, as `serde_json` unescapes it (`text` was validated by `string`:
/// every escape valid, surrogates paired).
pub(crate) fn unescape(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &b[i..]).map(|off| i + off) {
        out.push_str(text.get(i..at)?);
        let next = escape_end(b, at)?; // a valid escape, a surrogate paired
        let c = match *b.get(at + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => match hex4(b, at + 2)? {
                high @ 0xD800..=0xDBFF => {
                    let low = hex4(b, at + 8)?;
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + low.checked_sub(0xDC00)?)?
                }
                code => char::from_u32(code)?,
            },
            _ => return None,
        };
        out.push(c);
        i = next;
    }
    out.push_str(text.get(i..)?);
    Some(out)
}

/// The high bit of each byte of a word.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` (little-endian) that is a quote, a backslash or below
/// 0x20. The lowest bit set is exact (a borrow only spreads towards higher bytes), which is the
/// one the scan uses.
pub(crate) fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use super::Scan;
    use proptest::prelude::*;

    fn counted(json: &str) -> Option<u64> {
        Scan::new(json).counted_string()
    }

    #[test]
    fn counts_characters_not_bytes_and_an_escape_as_one() {
        assert_eq!(counted(r#""""#), Some(0));
        assert_eq!(counted("null"), Some(0));
        assert_eq!(counted(r#""h\u00e9llo \ud83d\ude00\n\"""#), Some(9));
        assert_eq!(counted("\"héllo wörld, ça va? 😀😀 ünïcödé\""), Some(30));
        assert_eq!(counted("\"a\u{1}b\""), None); // a raw control character
        assert_eq!(counted(r#""a\qb""#), None);
        assert_eq!(counted(r#""abc"#), None);
    }

    proptest! {
        #[test]
        fn counts_what_the_text_holds(text in any::<String>(), escape_some in any::<bool>()) {
            let mut json = serde_json::to_string(&text).unwrap();
            if escape_some {
                json = json.replace('é', "\\u00e9").replace('/', "\\/");
            }
            prop_assert_eq!(counted(&json), Some(text.chars().count() as u64));
        }
    }
}
