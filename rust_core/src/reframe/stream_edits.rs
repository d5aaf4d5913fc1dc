//! The scans' differential proptests (`anthropic_scan`, `gemini_scan`, `bedrock_scan`, `chunk_scan`):
//! one stream's events with bytes changed, inserted or removed anywhere, JSON's own characters
//! among them.

use proptest::prelude::*;

/// What an edit may write: JSON's own characters, a control character, a UTF-8 lead byte.
const BYTES: &[u8] = b"{}[]\",:\\ \t0123456789.eE+-unltrfasbxd\x01\xc3";

/// One edit: (which event, where, the byte, how: 0 change, 1 insert, 2 remove).
pub type Edit = (usize, usize, u8, u8);

/// One to seven edits over `events` events.
pub fn edits(events: usize) -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        (
            0..events,
            any::<usize>(),
            prop::sample::select(BYTES.to_vec()),
            0u8..3,
        ),
        1..8,
    )
}

/// `seeds` with `edits` made, less the events no longer UTF-8.
pub fn edited(seeds: Vec<String>, edits: Vec<Edit>) -> Vec<String> {
    let mut events: Vec<Vec<u8>> = seeds.into_iter().map(String::into_bytes).collect();
    for (seed, at, byte, how) in edits {
        let bytes = &mut events[seed];
        let at = at % (bytes.len() + 1);
        match how {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    events
        .into_iter()
        .filter_map(|b| String::from_utf8(b).ok())
        .collect()
}
