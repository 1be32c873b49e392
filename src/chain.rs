//! Entry tags: the authentication code that binds each entry to its place in its aggregate's
//! history (see the README's "Tamper evidence").
//!
//! A tag is HMAC-SHA256, under a key derived from the log's key (the derivation is in Python,
//! `oplog.chain`), over the concatenation of
//!
//! | part | bytes |
//! |---|---|
//! | domain | `oplog entry tag v1` |
//! | aggregate name | u32 big-endian length, UTF-8 |
//! | key id | u32 big-endian length, UTF-8 |
//! | stored data (the blob) | u32 big-endian length, the bytes |
//! | metadata digest | 32 bytes: SHA-256 of the sorted metadata (computed by the caller) |
//! | sequence | u64 big-endian: the entry's position in its aggregate's chain, from 1 |
//! | previous tag | u32 big-endian length, the bytes (empty for sequence 1) |
//!
//! Every variable-length part is length-prefixed, so no two different inputs concatenate to
//! the same bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The domain separator every tag starts with.
pub const DOMAIN: &[u8] = b"oplog entry tag v1";

/// The length of a tag.
pub const TAG_SIZE: usize = 32;

/// A MAC keyed once; every tag starts from a copy of its state.
#[derive(Clone)]
pub struct TagKey {
    mac: Hmac<Sha256>,
}

/// What one tag covers, apart from the key.
pub struct TagInput<'a> {
    pub aggregate: &'a [u8],
    pub key_id: &'a [u8],
    pub data: &'a [u8],
    pub metadata_digest: &'a [u8],
    pub seq: u64,
    pub prev: &'a [u8],
}

fn len32(part: &[u8]) -> [u8; 4] {
    // Parts longer than 4 GiB cannot be stored in a PostgreSQL value; saturate rather than wrap.
    u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes()
}

impl TagKey {
    /// A tag key from the derived key's bytes (HMAC takes a key of any length).
    pub fn new(key: &[u8]) -> Self {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        TagKey { mac }
    }

    /// The tag of one entry.
    pub fn tag(&self, input: &TagInput<'_>) -> [u8; TAG_SIZE] {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        for part in [input.aggregate, input.key_id, input.data] {
            mac.update(&len32(part));
            mac.update(part);
        }
        mac.update(input.metadata_digest);
        mac.update(&input.seq.to_be_bytes());
        mac.update(&len32(input.prev));
        mac.update(input.prev);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(prev: &'a [u8], seq: u64) -> TagInput<'a> {
        TagInput {
            aggregate: b"agg",
            key_id: b"key-1",
            data: b"blob",
            metadata_digest: &[7u8; 32],
            seq,
            prev,
        }
    }

    #[test]
    fn every_part_changes_the_tag() {
        let key = TagKey::new(b"k");
        let base = key.tag(&input(b"", 1));
        assert_ne!(base, key.tag(&input(b"", 2)));
        assert_ne!(base, key.tag(&input(b"x", 1)));
        assert_ne!(base, TagKey::new(b"other").tag(&input(b"", 1)));
        let moved = TagInput {
            aggregate: b"agh",
            ..input(b"", 1)
        };
        assert_ne!(base, key.tag(&moved));
        // Length prefixes: shifting a byte from one part to the next is another input.
        let a = TagInput {
            aggregate: b"ab",
            key_id: b"c",
            ..input(b"", 1)
        };
        let b = TagInput {
            aggregate: b"a",
            key_id: b"bc",
            ..input(b"", 1)
        };
        assert_ne!(key.tag(&a), key.tag(&b));
    }

    #[test]
    fn a_copied_key_gives_the_same_tags() {
        let key = TagKey::new(b"k");
        assert_eq!(key.clone().tag(&input(b"p", 3)), key.tag(&input(b"p", 3)));
    }
}
