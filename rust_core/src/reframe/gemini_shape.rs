//! The Gemini reframer's second fast path: the responses of one stream differ in a few values
//! only. Each repeats the same members (`content`, `role`, `index`, `usageMetadata`,
//! `modelVersion`, `responseId`) around one text and the usage counts so far: [`read_with`]
//! keeps the last text response the scan read whole ([`Shape`]: its bytes, where its text and
//! counts were) and reads the next one by comparing the bytes between those values and reading
//! only the values, with the scan's own readers (`opt_str`, `opt_u64`). The scan's state at each
//! value depends on the bytes before it alone, and what it reads there only on the value, so the
//! answer is the whole scan's (pinned by a test and by `gemini_scan`'s proptest, which reads
//! every mutated stream through one `Shape` too).

use super::gemini::{First, Reading};
use super::gemini_scan::{self, count_slot, Marks};
use crate::json_scan::Scan;
use crate::usage::{GeminiUsage, Usage};

/// A value that changes from one response to the next: the text, or a usage count (its slot).
#[derive(Debug, Clone, Copy)]
enum Hole {
    Text,
    Count(usize),
}

/// The last response of a stream read whole whose first candidate is one text part (no call, no
/// finish reason): its bytes, and where its text and usage counts are in them.
#[derive(Debug, Default)]
pub struct Shape {
    bytes: String,
    /// `(start, end, what)`, in the order of the bytes; empty: nothing kept.
    holes: Vec<(usize, usize, Hole)>,
    /// Its usage (the counts in holes are each response's own).
    usage: Option<GeminiUsage>,
    blocked: bool,
}

/// The response as `gemini_scan` reads it; one that differs from `shape`'s only in its text and
/// its counts is read from those values alone, and `shape` keeps a text response read whole.
pub fn read_with<'a>(data: &'a str, shape: &mut Shape) -> Option<Reading<'a>> {
    if let Some(r) = shape.read(data) {
        return Some(r);
    }
    let mut marks = Marks::default();
    let r = gemini_scan::read_marked(data, &mut marks)?;
    shape.remember(data, &r, marks);
    Some(r)
}

impl Shape {
    /// The bytes between the holes compared, the values in them read as the whole scan reads
    /// them there (`opt_str`, `opt_u64`).
    fn read<'a>(&self, data: &'a str) -> Option<Reading<'a>> {
        if self.holes.is_empty() {
            return None;
        }
        let bytes = self.bytes.as_bytes();
        let mut scan = Scan::new(data);
        let mut text = None;
        let mut usage = self.usage.clone();
        let mut at = 0;
        for &(start, end, hole) in &self.holes {
            scan.literal(&bytes[at..start])?;
            match hole {
                Hole::Text => scan.opt_str(&mut text)?,
                Hole::Count(k) => scan.opt_u64(count_slot(usage.as_mut()?, k))?,
            }
            at = end;
        }
        (data.as_bytes().get(scan.i..)? == &bytes[at..]).then_some(())?;
        Some(Reading {
            error: None,
            usage: usage.as_ref().map(Usage::from),
            first: Some(First {
                text: text.unwrap_or_default(),
                ..First::default()
            }),
            blocked: self.blocked,
        })
    }

    /// Keeps `data` if its first candidate is one text part alone; otherwise keeps what it had.
    fn remember(&mut self, data: &str, r: &Reading<'_>, marks: Marks) {
        let Some(first) = &r.first else {
            return;
        };
        let Some(text) = marks.text.filter(|_| marks.texts == 1) else {
            return;
        };
        if !first.calls.is_empty() || first.finish_reason.is_some() || r.error.is_some() {
            return;
        }
        self.bytes.clear();
        self.bytes.push_str(data);
        self.holes.clear();
        self.holes.push((text.0, text.1, Hole::Text));
        for (k, span) in marks.counts.iter().enumerate() {
            if let Some((start, end)) = *span {
                self.holes.push((start, end, Hole::Count(k)));
            }
        }
        self.holes.sort_unstable_by_key(|hole| hole.0);
        self.usage = marks.usage;
        self.blocked = r.blocked;
    }
}

/// Each response read through one `Shape`, in order, as the reframer reads them: the same
/// reading as the whole scan's.
#[cfg(test)]
pub(super) fn same_through_the_shape(events: &[String]) {
    let mut shape = Shape::default();
    for data in events {
        assert_eq!(
            read_with(data, &mut shape),
            gemini_scan::read(data),
            "{data}"
        );
    }
}

#[cfg(test)]
mod tests {
    // Tests may unwrap: a failure is the test failing.
    #![allow(clippy::unwrap_used)]
    use std::borrow::Cow;

    use super::*;
    use crate::reframe::gemini_scan::read;

    /// The bench's responses (loadtests/bench/contenders.py, `gemini_events`): the `i`-th.
    fn bench(i: usize, text: &str) -> String {
        format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}},"index":0}}],"usageMetadata":{{"promptTokenCount":57,"candidatesTokenCount":{i},"totalTokenCount":{}}},"modelVersion":"gemini-2.5-flash","responseId":"mDAmaL2BNvGhz7IPxeLb4QQ"}}"#,
            57 + i
        )
    }

    #[test]
    fn text_responses_after_the_first_are_read_from_their_text_and_counts() {
        let mut shape = Shape::default();
        let first = bench(0, "tok0 ");
        assert_eq!(read_with(&first, &mut shape), read(&first));
        for (i, text) in [
            (1, "tok1 "),
            (12, r#"a \"q\" \u00e9\n"#),
            (3, ""),
            (1000, "x"),
        ] {
            let data = bench(i, text);
            let r = shape.read(&data).unwrap();
            assert_eq!(Some(&r), read(&data).as_ref(), "{data}");
            assert_eq!(r.usage.unwrap().completion_tokens, i as u64);
        }
        let escaped = bench(2, r#"\"w\u00e9\""#);
        let text = shape.read(&escaped).unwrap().first.unwrap().text;
        assert!(matches!(text, Cow::Owned(_)));
        assert_eq!(text, "\"wé\"");
        // `null` in a value's place: read as the whole scan reads it
        for null in [
            bench(1, "a").replace(
                r#""candidatesTokenCount":1"#,
                r#""candidatesTokenCount":null"#,
            ),
            bench(1, "a").replace(r#""text":"a""#, r#""text":null"#),
        ] {
            assert_eq!(shape.read(&null), read(&null), "{null}");
            assert!(shape.read(&null).is_some());
        }
        // other bytes between the values, or values the whole scan reads otherwise: left to it
        for other in [
            bench(1, "a").replace(r#""index":0"#, r#""index":1"#),
            bench(1, "a").replace(
                r#""candidatesTokenCount":1"#,
                r#""candidatesTokenCount":1.0"#,
            ),
            bench(1, "a").replace(
                r#""candidatesTokenCount":1"#,
                r#""candidatesTokenCount":01"#,
            ),
            bench(1, "a").replace(
                r#""candidatesTokenCount":1"#,
                r#""candidatesTokenCount":-1"#,
            ),
            bench(1, "a").replace(r#""text":"a""#, r#""text":"a","thought":true"#),
            bench(1, "a").replace(r#""text":"a""#, r#""text":"\ud800""#),
            bench(1, "a").replace(r#""text":"a""#, r#""text": "a" "#),
            bench(1, "a").replace(r#","index":0"#, r#","finishReason":"STOP","index":0"#),
            bench(1, "a") + " ",
            bench(1, "a") + "x",
            bench(1, "a")[..40].to_owned(),
        ] {
            assert_eq!(shape.read(&other), None, "{other}");
            let mut kept = Shape::default();
            read_with(&first, &mut kept);
            assert_eq!(read_with(&other, &mut kept), read(&other), "{other}");
        }
        // a finishing response is read whole and not kept
        let last = bench(4, "end").replace(r#","index":0"#, r#","finishReason":"STOP","index":0"#);
        read_with(&last, &mut shape);
        assert!(shape.read(&bench(5, "more")).is_some());
        let events: Vec<String> = (0..50).map(|i| bench(i, &format!("tok{i} "))).collect();
        same_through_the_shape(&events);
    }
}
