//! Identifiers that are unique but not secret (gateway/ids.py): request ids, answer ids, ledger
//! entry ids. Random bytes read a buffer at a time (the caller's `os.urandom`), cut into slots
//! of [`SLOT`] bytes, one slot an id, written as lower-case hex after the id's prefix.

use crate::spans::hex_into;

/// Bytes of one id's slot: the longest id (16 random bytes, `resp_`'s).
pub const SLOT: usize = 16;
/// Slots in one read of random bytes.
pub const SLOTS: usize = 256;

/// The random bytes read and not handed out yet.
#[derive(Default)]
pub struct IdBuffer {
    buffer: Vec<u8>,
    next: usize,
}

impl IdBuffer {
    /// `prefix`, then the first `nbytes` (at most [`SLOT`]) of the next slot in hex into `out`;
    /// false (nothing written) when the buffer is spent: refill it.
    pub fn take_into(&mut self, out: &mut Vec<u8>, prefix: &str, nbytes: usize) -> bool {
        let Some(slot) = self.buffer.get(self.next..self.next + SLOT) else {
            return false;
        };
        out.extend_from_slice(prefix.as_bytes());
        hex_into(out, &slot[..nbytes.min(SLOT)]);
        self.next += SLOT;
        true
    }

    /// A new buffer of random bytes (whole slots of it are used).
    pub fn refill(&mut self, random: &[u8]) {
        self.buffer.clear();
        self.buffer.extend_from_slice(random);
        self.next = 0;
    }

    /// Drops the buffer (a forked process must not hand out its parent's ids).
    pub fn forget(&mut self) {
        self.refill(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(ids: &mut IdBuffer, prefix: &str, nbytes: usize) -> Option<String> {
        let mut out = Vec::new();
        ids.take_into(&mut out, prefix, nbytes)
            .then(|| String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn an_empty_buffer_hands_out_nothing() {
        assert_eq!(take(&mut IdBuffer::default(), "req_", 12), None);
    }

    #[test]
    fn each_id_takes_a_whole_slot_in_lower_hex_after_its_prefix() {
        let mut ids = IdBuffer::default();
        let random: Vec<u8> = (0..=255u8).cycle().take(SLOT * 2).collect();
        ids.refill(&random);
        assert_eq!(take(&mut ids, "req_", 4).as_deref(), Some("req_00010203"));
        assert_eq!(
            take(&mut ids, "", 16).as_deref(),
            Some("101112131415161718191a1b1c1d1e1f")
        );
        assert_eq!(take(&mut ids, "x", 1), None);
    }

    #[test]
    fn a_partial_slot_is_not_handed_out_and_forget_empties() {
        let mut ids = IdBuffer::default();
        ids.refill(&[0xab; SLOT + 3]);
        assert_eq!(take(&mut ids, "", 2).as_deref(), Some("abab"));
        assert_eq!(take(&mut ids, "", 2), None);
        ids.refill(&[0xcd; SLOT]);
        ids.forget();
        assert_eq!(take(&mut ids, "", 2), None);
    }
}
