//! Protobuf wire primitives: varints, tags and length-delimited fields.
//!
//! Only what the AnyOperation envelope needs. The reader borrows its input and never allocates;
//! every length it reads is checked against what is left before a slice is taken.

use crate::error::{CodecError, Result};

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_FIXED64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_FIXED32: u8 = 5;

/// A cursor over one protobuf message. `base` is the absolute offset of `buf[0]` in the queue,
/// so every error reports a position the caller can find in the bytes it passed in.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Absolute offset of the next unread byte.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn varint(&mut self) -> Result<u64> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(CodecError::BadVarint { offset: start });
            };
            self.pos += 1;
            // The tenth byte may only carry the single remaining bit of a u64.
            if i == 9 && byte > 1 {
                return Err(CodecError::BadVarint { offset: start });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::BadVarint { offset: start })
    }

    /// Reads a tag; returns (field number, wire type, offset of the tag).
    pub fn tag(&mut self) -> Result<(u32, u8, usize)> {
        let offset = self.offset();
        let tag = self.varint()?;
        let field = tag >> 3;
        let wire_type = (tag & 7) as u8;
        let valid_type = matches!(
            wire_type,
            WIRE_VARINT | WIRE_FIXED64 | WIRE_LEN | WIRE_FIXED32
        );
        if field == 0 || field > u64::from(u32::MAX >> 3) || !valid_type {
            return Err(CodecError::BadTag { offset, tag });
        }
        Ok((field as u32, wire_type, offset))
    }

    /// Reads a length-delimited payload; returns it with the absolute offset of its first byte.
    pub fn len_delimited(&mut self) -> Result<(&'a [u8], usize)> {
        let len_offset = self.offset();
        let len = self.varint()?;
        self.take(len, len_offset)
    }

    fn take(&mut self, len: u64, field_offset: usize) -> Result<(&'a [u8], usize)> {
        let available = self.remaining();
        if len > available as u64 {
            return Err(CodecError::Truncated {
                offset: field_offset,
                needed: len,
                available,
            });
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok((&self.buf[start..self.pos], self.base + start))
    }

    /// Skips the payload of a field with the given wire type (an unknown field).
    pub fn skip(&mut self, wire_type: u8) -> Result<()> {
        let offset = self.offset();
        match wire_type {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8, offset).map(drop),
            WIRE_FIXED32 => self.take(4, offset).map(drop),
            _ => self.len_delimited().map(drop),
        }
    }
}

pub fn varint_len(value: u64) -> usize {
    // ceil(significant bits / 7), with 0 taking one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Encoded size of a length-delimited field with a one-byte tag.
pub fn len_field_size(payload_len: usize) -> usize {
    1 + varint_len(payload_len as u64) + payload_len
}

/// Writes a length-delimited field (one-byte tag: field numbers up to 15).
pub fn put_len_field(out: &mut Vec<u8>, field: u8, payload: &[u8]) {
    out.push((field << 3) | WIRE_LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_boundaries() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "length of {v}");
            let mut r = Reader::new(&out, 0);
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_rejects_eleven_bytes_and_overflow() {
        let eleven = [0xff; 10].iter().copied().chain([0x01]).collect::<Vec<_>>();
        assert_eq!(
            Reader::new(&eleven, 5).varint(),
            Err(CodecError::BadVarint { offset: 5 })
        );
        let mut overflow = vec![0xff; 9];
        overflow.push(0x02);
        assert!(Reader::new(&overflow, 0).varint().is_err());
    }

    #[test]
    fn varint_rejects_truncation() {
        assert_eq!(
            Reader::new(&[0x80, 0x80], 3).varint(),
            Err(CodecError::BadVarint { offset: 3 })
        );
    }

    #[test]
    fn tag_rejects_field_zero_and_groups() {
        assert!(matches!(
            Reader::new(&[0x02], 0).tag(),
            Err(CodecError::BadTag { .. })
        ));
        assert!(matches!(
            Reader::new(&[0x0b], 0).tag(),
            Err(CodecError::BadTag { .. })
        ));
        assert!(matches!(
            Reader::new(&[0x0e], 0).tag(),
            Err(CodecError::BadTag { .. })
        ));
    }

    #[test]
    fn len_delimited_checks_length_before_slicing() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00], 10);
        assert_eq!(
            r.len_delimited(),
            Err(CodecError::Truncated {
                offset: 10,
                needed: u32::MAX as u64,
                available: 1
            })
        );
    }

    #[test]
    fn skip_handles_every_wire_type() {
        let data = [
            0x08, 0x96, 0x01, // varint
            0x11, 1, 2, 3, 4, 5, 6, 7, 8, // fixed64
            0x1a, 0x02, b'h', b'i', // len
            0x25, 1, 2, 3, 4, // fixed32
        ];
        let mut r = Reader::new(&data, 0);
        while !r.is_empty() {
            let (_, wt, _) = r.tag().unwrap();
            r.skip(wt).unwrap();
        }
        let mut short = Reader::new(&[0x11, 1, 2], 0);
        let (_, wt, _) = short.tag().unwrap();
        assert!(matches!(
            short.skip(wt),
            Err(CodecError::Truncated { offset: 1, .. })
        ));
    }
}
