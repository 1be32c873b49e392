//! The page blob reader on arbitrary bytes (the corpus starts from blobs sealed under the
//! target's key): never a panic; a sealed part it finds lies inside the blob, right before the
//! key's `key_info` field, and holds a nonce and a tag; a sealed part that opens gives a
//! plaintext of its length less nonce and tag, and no longer opens with a bit of its nonce,
//! ciphertext or tag changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oplog_core::blob::{own_sealed, Opener, NONCE_SIZE, TAG_SIZE};

/// BlobInfo field 5 holding KeyInfo{key_id: "k1"}.
const KEY_INFO: &[u8] = b"\x2a\x04\x1a\x02k1";

fuzz_target!(|blob: &[u8]| {
    let Some(sealed) = own_sealed(blob, KEY_INFO) else {
        return;
    };
    let start = sealed.as_ptr() as usize - blob.as_ptr() as usize;
    assert!(start == 2 || start == 3);
    assert_eq!(&blob[start + sealed.len()..], KEY_INFO);
    assert!(sealed.len() >= NONCE_SIZE + TAG_SIZE);
    let opener = Opener::new(&[7; 32]).expect("a 32-byte key");
    if let Some(plaintext) = opener.open(sealed) {
        assert_eq!(plaintext.len(), sealed.len() - NONCE_SIZE - TAG_SIZE);
        for at in [0, NONCE_SIZE, sealed.len() - 1, blob.len() % sealed.len()] {
            let mut changed = sealed.to_vec();
            changed[at] ^= 1 << (blob.len() % 8);
            assert_eq!(opener.open(&changed), None);
        }
    }
});
