//! The span recorder's pure parts (gateway/tracing/): msgpack written as msgspec writes it,
//! random ids cut from a buffer, the frame of span rows, the W3C `traceparent` text.
//!
//! The request path hands each ended span's raw values to the recorder in one call
//! (`py/spans.rs`); it writes the row straight into the frame the exporter child reads
//! (gateway/tracing/rows.py gives the row's shape), so no tuple, list or bytes object is made
//! per span. Every form here is the smallest msgpack form, as msgspec's encoder chooses it, so
//! a frame is the same to the byte as `msgspec.msgpack.encode(rows)` of the same rows
//! (`tests/unit/test_span_pipe.py` checks that against msgspec).

use std::time::{SystemTime, UNIX_EPOCH};

/// The W3C trace flags the gateway sets (`TraceFlags.SAMPLED`, `TraceFlags.RANDOM_TRACE_ID`).
pub const SAMPLED: u8 = 0x01;
pub const RANDOM: u8 = 0x02;
/// One request's ids: a 16-byte trace id, the server span's 8-byte id and its first client
/// span's.
pub const SLOT: usize = 32;

#[inline]
pub fn nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

#[inline]
pub fn boolean(out: &mut Vec<u8>, value: bool) {
    out.push(if value { 0xc3 } else { 0xc2 });
}

#[inline]
pub fn uint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else if value <= 0xff {
        out.extend_from_slice(&[0xcc, value as u8]);
    } else if value <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

#[inline]
pub fn int(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        uint(out, value as u64);
    } else if value >= -32 {
        out.push(value as u8); // negative fixint
    } else if value >= -0x80 {
        out.extend_from_slice(&[0xd0, value as u8]);
    } else if value >= -0x8000 {
        out.push(0xd1);
        out.extend_from_slice(&(value as i16).to_be_bytes());
    } else if value >= -0x8000_0000 {
        out.push(0xd2);
        out.extend_from_slice(&(value as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

#[inline]
pub fn float(out: &mut Vec<u8>, value: f64) {
    out.push(0xcb);
    out.extend_from_slice(&value.to_be_bytes());
}

#[inline]
fn length(out: &mut Vec<u8>, len: usize, fix: Option<(u8, usize)>, wide: [u8; 3]) {
    match fix {
        Some((base, below)) if len < below => out.push(base | len as u8),
        _ if len <= 0xff && wide[0] != 0 => out.extend_from_slice(&[wide[0], len as u8]),
        _ if len <= 0xffff => {
            out.push(wide[1]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(wide[2]);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

#[inline]
pub fn str(out: &mut Vec<u8>, value: &str) {
    length(out, value.len(), Some((0xa0, 32)), [0xd9, 0xda, 0xdb]);
    out.extend_from_slice(value.as_bytes());
}

#[inline]
pub fn bin(out: &mut Vec<u8>, value: &[u8]) {
    length(out, value.len(), None, [0xc4, 0xc5, 0xc6]);
    out.extend_from_slice(value);
}

#[inline]
pub fn array(out: &mut Vec<u8>, len: usize) {
    length(out, len, Some((0x90, 16)), [0, 0xdc, 0xdd]);
}

#[inline]
pub fn map(out: &mut Vec<u8>, len: usize) {
    length(out, len, Some((0x80, 16)), [0, 0xde, 0xdf]);
}

/// Wall-clock nanoseconds since the epoch, as Python's `time.time_ns()` reads them.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The flags of a root span whose trace id is `trace_id`: the SDK's `TraceIdRatioBased` samples
/// it when the id's low 64 bits are below its `bound` (`bound` above 2^64 - 1: every root).
pub fn root_flags(trace_id: &[u8; 16], bound: u128) -> u8 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    if u128::from(u64::from_be_bytes(low)) < bound {
        SAMPLED | RANDOM
    } else {
        RANDOM
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
}

/// `00-<trace id>-<span id>-<01|00>`, the W3C trace context header of version 00.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    hex_into(&mut out, trace_id);
    out.push(b'-');
    hex_into(&mut out, span_id);
    out.extend_from_slice(if flags & SAMPLED != 0 { b"-01" } else { b"-00" });
    String::from_utf8(out).unwrap_or_default()
}

/// Random ids cut 32 bytes at a time from a buffer of random bytes the caller reads (the
/// gateway's `os.urandom`). A buffer with 8 zero bytes anywhere is refused, so no id (nor half
/// a trace id) is ever the invalid 0.
#[derive(Default)]
pub struct IdPool {
    buffer: Vec<u8>,
    next: usize,
}

impl IdPool {
    /// A slot, or None when the buffer is spent (refill it).
    pub fn take(&mut self) -> Option<[u8; SLOT]> {
        let slot = self.buffer.get(self.next..self.next + SLOT)?;
        let mut ids = [0u8; SLOT];
        ids.copy_from_slice(slot);
        self.next += SLOT;
        Some(ids)
    }

    /// A new buffer of random bytes; false (and kept empty) when it holds 8 zero bytes in a row
    /// or is shorter than a slot.
    pub fn refill(&mut self, random: &[u8]) -> bool {
        self.buffer.clear();
        self.next = 0;
        if random.len() < SLOT || memchr::memmem::find(random, &[0u8; 8]).is_some() {
            return false;
        }
        self.buffer.extend_from_slice(random);
        true
    }

    /// Drops the buffer (a forked process must not hand out its parent's ids).
    pub fn forget(&mut self) {
        self.buffer.clear();
        self.next = 0;
    }
}

/// Span rows written one after the other, framed as one msgpack array when taken.
#[derive(Default)]
pub struct Frame {
    pub rows: Vec<u8>,
    pub count: usize,
}

impl Frame {
    /// The rows as one msgpack array (what `msgspec.msgpack.encode(list_of_rows)` gives), and
    /// the frame emptied; None when it holds no row.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(self.rows.len() + 5);
        array(&mut out, self.count);
        out.extend_from_slice(&self.rows);
        self.rows.clear();
        self.count = 0;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn ints_take_msgspecs_smallest_forms() {
        let cases: [(i64, &[u8]); 12] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (256, &[0xcd, 0x01, 0x00]),
            (65536, &[0xce, 0x00, 0x01, 0x00, 0x00]),
            (1 << 32, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            (-1, &[0xff]),
            (-32, &[0xe0]),
            (-33, &[0xd0, 0xdf]),
            (-129, &[0xd1, 0xff, 0x7f]),
            (-32769, &[0xd2, 0xff, 0xff, 0x7f, 0xff]),
            (
                -2_147_483_649,
                &[0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
            ),
        ];
        for (value, want) in cases {
            assert_eq!(enc(|o| int(o, value)), want, "{value}");
        }
        assert_eq!(enc(|o| uint(o, u64::MAX))[0], 0xcf);
    }

    #[test]
    fn lengths_switch_forms_where_msgspec_does() {
        assert_eq!(enc(|o| str(o, &"a".repeat(31)))[0], 0xbf);
        assert_eq!(enc(|o| str(o, &"a".repeat(32)))[..2], [0xd9, 32]);
        assert_eq!(enc(|o| str(o, &"a".repeat(256)))[..3], [0xda, 1, 0]);
        assert_eq!(enc(|o| bin(o, b"x")), [0xc4, 1, b'x']);
        assert_eq!(enc(|o| bin(o, &[0; 256]))[..3], [0xc5, 1, 0]);
        assert_eq!(enc(|o| array(o, 15)), [0x9f]);
        assert_eq!(enc(|o| array(o, 16)), [0xdc, 0, 16]);
        assert_eq!(enc(|o| map(o, 1)), [0x81]);
        assert_eq!(enc(|o| map(o, 16)), [0xde, 0, 16]);
        assert_eq!(enc(|o| float(o, 1.5)), [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn traceparent_is_lower_hex_with_the_sampled_flag() {
        let trace = [0xab; 16];
        let span = [0x01; 8];
        assert_eq!(
            traceparent(&trace, &span, SAMPLED | RANDOM),
            format!("00-{}-{}-01", "ab".repeat(16), "01".repeat(8))
        );
        assert!(traceparent(&trace, &span, RANDOM).ends_with("-00"));
    }

    #[test]
    fn root_is_sampled_below_the_bound() {
        let mut trace = [0u8; 16];
        trace[15] = 9;
        assert_eq!(root_flags(&trace, 10), SAMPLED | RANDOM);
        assert_eq!(root_flags(&trace, 9), RANDOM);
        trace[8..].copy_from_slice(&[0xff; 8]);
        assert_eq!(root_flags(&trace, 1 << 64), SAMPLED | RANDOM);
    }

    #[test]
    fn pool_refuses_a_buffer_with_a_zero_id_and_hands_out_slots_once() {
        let mut pool = IdPool::default();
        assert!(pool.take().is_none());
        let mut random = vec![7u8; 64];
        random[20..28].copy_from_slice(&[0; 8]);
        assert!(!pool.refill(&random));
        assert!(pool.take().is_none());
        random[20] = 1;
        assert!(pool.refill(&random));
        assert!(pool.take().is_some());
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
        pool.refill(&[5u8; 64]);
        pool.forget();
        assert!(pool.take().is_none());
    }

    #[test]
    fn frame_is_one_array_of_its_rows() {
        let mut frame = Frame::default();
        assert!(frame.take().is_none());
        for _ in 0..16 {
            array(&mut frame.rows, 1);
            nil(&mut frame.rows);
            frame.count += 1;
        }
        let taken = frame.take().unwrap_or_default();
        assert_eq!(taken[..3], [0xdc, 0, 16]);
        assert_eq!(taken.len(), 3 + 32);
        assert!(frame.take().is_none());
    }
}
