//! One envelope on arbitrary bytes at an arbitrary base offset: never a panic, and every error
//! offset lies within the envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oplog_core::Envelope;

fuzz_target!(|input: (u16, &[u8])| {
    let (base, data) = (usize::from(input.0), input.1);
    if let Err(err) = Envelope::decode(data, base) {
        let offset = err.offset().expect("a decode error carries its offset");
        assert!(
            (base..=base + data.len()).contains(&offset),
            "{err} is outside [{base}, {}]",
            base + data.len()
        );
    }
});
