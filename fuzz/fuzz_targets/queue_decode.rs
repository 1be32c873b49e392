//! The queue decoder (unframing and every envelope) on arbitrary bytes: never a panic, errors
//! point inside the input, and a queue that decodes and is valid to write re-encodes to bytes
//! that decode to the same operations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oplog_core::{queue, Format};

fuzz_target!(|data: &[u8]| {
    let (frames, end) = match queue::decode(data, 0, usize::MAX) {
        Ok(decoded) => decoded,
        Err(err) => {
            let offset = err.offset().expect("a decode error carries its offset");
            assert!(offset <= data.len(), "{err} points past the input");
            return;
        }
    };
    assert_eq!(
        end,
        data.len(),
        "a successful decode consumes the whole queue"
    );
    let envelopes: Vec<_> = frames.into_iter().map(|(_, env)| env).collect();
    let mut encoded = Vec::new();
    if queue::encode(&envelopes, Format::V2, &mut encoded).is_err() {
        return; // decodable but not writable (an empty type name, op type 0): fine
    }
    let (again, _) = queue::decode(&encoded, 0, usize::MAX).expect("what we encode decodes");
    let again: Vec<_> = again.into_iter().map(|(_, env)| env).collect();
    assert_eq!(again, envelopes);
});
