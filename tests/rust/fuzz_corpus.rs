//! The committed fuzz corpora (fuzz/corpus) replayed through the decoders on the stable
//! toolchain: every input that libFuzzer kept, decoded again without libFuzzer, never panics
//! and reports errors inside the input. Crashes the fuzzer finds are added here as inputs.

use std::fs;
use std::path::Path;

use oplog_core::{blob, queue, Envelope};

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| fs::read(entry.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus in {}", dir.display());
    out
}

#[test]
fn queue_corpus_decodes_or_fails_inside_the_input() {
    for data in inputs("queue_decode") {
        if let Err(err) = queue::decode(&data, 0, usize::MAX) {
            assert!(err.offset().unwrap() <= data.len(), "{err}");
        }
    }
}

#[test]
fn envelope_corpus_decodes_or_fails_inside_the_input() {
    for data in inputs("envelope_decode") {
        // The fuzz target reads a u16 base offset first; here the whole input is the envelope.
        if let Err(err) = Envelope::decode(&data, 7) {
            let offset = err.offset().unwrap();
            assert!((7..=7 + data.len()).contains(&offset), "{err}");
        }
    }
}

#[test]
fn blob_corpus_opens_only_unchanged_sealed_parts() {
    let opener = blob::Opener::new(&[7; 32]).unwrap();
    let mut opened = 0;
    for data in inputs("blob_open") {
        if let Some(sealed) = blob::own_sealed(&data, b"\x2a\x04\x1a\x02k1") {
            if opener.open(sealed).is_some() {
                opened += 1;
                let mut changed = sealed.to_vec();
                changed[0] ^= 1;
                assert_eq!(opener.open(&changed), None);
            }
        }
    }
    assert!(
        opened > 0,
        "the corpus has no blob sealed under the fuzz target's key"
    );
}
