//! Opening the encrypted blobs of a page of entries (WIRE.md §3).
//!
//! A blob is a serialized go-kms-wrapping `BlobInfo`. The Python `AeadWrapper` writes exactly
//! `0a <len> nonce(12) ciphertext tag(16)` followed by its key's `key_info` field (`2a ...`),
//! and nothing else; [`own_sealed`] recognises that layout without a protobuf parser and
//! [`Opener`] decrypts it with AES-256-GCM (no associated data). Any other layout, and any blob
//! that does not authenticate, is left to the protobuf parser on the Python side, which says
//! what is wrong with it: this module only ever answers "here is the plaintext" or "not mine".

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;

pub const KEY_SIZE: usize = 32;
pub const NONCE_SIZE: usize = 12;
pub const TAG_SIZE: usize = 16;

/// The sealed part (`nonce || ciphertext || tag`) of a blob laid out as this key writes its
/// blobs: field 1 with a one- or two-byte length, then exactly `key_info_field`. None for any
/// other layout (a longer length, other fields, trailing bytes, a sealed part too short to hold
/// a nonce and a tag).
pub fn own_sealed<'a>(blob: &'a [u8], key_info_field: &[u8]) -> Option<&'a [u8]> {
    if blob.len() < 3 || blob[0] != 0x0a {
        return None;
    }
    let (size, start) = if blob[1] < 0x80 {
        (usize::from(blob[1]), 2)
    } else if blob[2] < 0x80 {
        (usize::from(blob[1] & 0x7f) | usize::from(blob[2]) << 7, 3)
    } else {
        return None;
    };
    let end = start + size;
    if size < NONCE_SIZE + TAG_SIZE || blob.get(end..)? != key_info_field {
        return None;
    }
    Some(&blob[start..end])
}

/// AES-256-GCM with one key, for opening sealed parts. The key schedule is wiped when the
/// opener is dropped.
pub struct Opener {
    cipher: Aes256Gcm,
}

impl Opener {
    /// None unless `key` is [`KEY_SIZE`] bytes.
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.len() != KEY_SIZE {
            return None;
        }
        Some(Opener {
            cipher: Aes256Gcm::new(GenericArray::from_slice(key)),
        })
    }

    /// The plaintext length of a sealed part, None when it cannot hold a nonce and a tag.
    pub fn plaintext_len(sealed: &[u8]) -> Option<usize> {
        sealed.len().checked_sub(NONCE_SIZE + TAG_SIZE)
    }

    /// Decrypts `sealed` into `out` (exactly [`Opener::plaintext_len`] bytes). False, with
    /// `out` holding no plaintext, when the tag does not authenticate: the tag is checked
    /// before anything is decrypted.
    pub fn open_into(&self, sealed: &[u8], out: &mut [u8]) -> bool {
        let Some(len) = Self::plaintext_len(sealed) else {
            return false;
        };
        if out.len() != len {
            return false;
        }
        let (nonce, rest) = sealed.split_at(NONCE_SIZE);
        let (ciphertext, tag) = rest.split_at(len);
        out.copy_from_slice(ciphertext);
        let opened = self
            .cipher
            .decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                b"",
                out,
                GenericArray::from_slice(tag),
            )
            .is_ok();
        if !opened {
            out.fill(0);
        }
        opened
    }

    /// [`Opener::open_into`] into a new vector.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0; Self::plaintext_len(sealed)?];
        self.open_into(sealed, &mut out).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    // BlobInfo field 5 holding KeyInfo{key_id: "k1"}.
    const KEY_INFO: &[u8] = b"\x2a\x04\x1a\x02k1";

    fn seal(plaintext: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(GenericArray::from_slice(&KEY));
        let nonce = [3u8; NONCE_SIZE];
        let mut body = plaintext.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut body)
            .unwrap();
        [&nonce[..], &body, &tag].concat()
    }

    fn blob(sealed: &[u8]) -> Vec<u8> {
        let mut out = vec![0x0a];
        let mut size = sealed.len();
        while size >= 0x80 {
            out.push((size as u8 & 0x7f) | 0x80);
            size >>= 7;
        }
        out.push(size as u8);
        out.extend(sealed);
        out.extend(KEY_INFO);
        out
    }

    #[test]
    fn opens_own_blobs_of_one_and_two_byte_lengths() {
        let opener = Opener::new(&KEY).unwrap();
        for size in [0, 1, 99, 100, 101, 5000] {
            let plaintext: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let sealed = seal(&plaintext);
            let b = blob(&sealed);
            assert_eq!(own_sealed(&b, KEY_INFO), Some(&sealed[..]));
            assert_eq!(opener.open(&sealed), Some(plaintext));
        }
    }

    #[test]
    fn other_layouts_are_not_own() {
        let sealed = seal(b"hello");
        let b = blob(&sealed);
        let mut trailing = b.clone();
        trailing.push(0);
        let mut other_key = b.clone();
        *other_key.last_mut().unwrap() = b'2';
        let mut cut = b.clone();
        cut.pop();
        let three_byte = blob(&seal(&[0; 20000]));
        for bad in [&trailing, &other_key, &cut, &b[1..], &three_byte] {
            assert_eq!(own_sealed(bad, KEY_INFO), None);
        }
        // Too short to hold a nonce and a tag.
        let short = blob(&[0; NONCE_SIZE + TAG_SIZE - 1]);
        assert_eq!(own_sealed(&short, KEY_INFO), None);
        assert_eq!(own_sealed(b"\x0a", KEY_INFO), None);
    }

    #[test]
    fn a_changed_bit_or_another_key_does_not_open_and_leaves_no_plaintext() {
        let opener = Opener::new(&KEY).unwrap();
        let sealed = seal(b"secret plaintext");
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = vec![0xff; bad.len() - NONCE_SIZE - TAG_SIZE];
            assert!(!opener.open_into(&bad, &mut out));
            assert!(out.iter().all(|&b| b == 0));
        }
        let other = Opener::new(&[8; 32]).unwrap();
        assert_eq!(other.open(&sealed), None);
        assert!(Opener::new(&[0; 16]).is_none());
    }
}
