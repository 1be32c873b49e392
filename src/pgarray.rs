//! PostgreSQL's binary array format, for sending large arrays as query parameters.
//!
//! `ndim(i32) has_null(i32) element_oid(u32) length(i32) lower_bound(i32)` then, per element,
//! `len(i32)` (-1 for NULL) and the element's binary value. Big-endian throughout.

use crate::error::{CodecError, Result};

/// `text` and `bytea` element OIDs.
pub const TEXT_OID: u32 = 25;
pub const BYTEA_OID: u32 = 17;
pub const INT8_OID: u32 = 20;

/// `ndim has_null element_oid length lower_bound`: five 4-byte fields.
const HEADER_LEN: usize = 20;

fn header(out: &mut Vec<u8>, has_null: bool, oid: u32, len: usize) -> Result<()> {
    let len = i32::try_from(len).map_err(|_| CodecError::ArrayTooLong { len })?;
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&oid.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    Ok(())
}

/// A one-dimensional array of variable-length elements (`text` or `bytea`); `None` is NULL.
///
/// # Errors
/// [`CodecError::ArrayTooLong`] beyond `i32::MAX` elements, [`CodecError::ElementTooLarge`] for
/// an element of 2 GiB or more.
pub fn pack_varlena(oid: u32, items: &[Option<&[u8]>]) -> Result<Vec<u8>> {
    let payload: usize = items.iter().map(|i| 4 + i.map_or(0, <[u8]>::len)).sum();
    let mut array = VarlenaBuilder::new(oid, payload);
    for item in items {
        match item {
            None => array.null(),
            Some(bytes) => {
                array.begin();
                array.body.extend_from_slice(bytes);
                array.end()?;
            }
        }
    }
    array.finish()
}

/// Builds a one-dimensional array of variable-length elements one element at a time, for
/// elements written in place (no intermediate list of slices): [`Self::begin`] an element,
/// write its bytes to [`Self::body`], [`Self::end`] it; or [`Self::null`]. The header's 20
/// bytes are reserved at the start of `body` and filled in by [`Self::finish`].
pub struct VarlenaBuilder {
    oid: u32,
    count: usize,
    has_null: bool,
    start: usize,
    /// The header's place, then the elements so far, each with its length prefix.
    pub body: Vec<u8>,
}

impl VarlenaBuilder {
    pub fn new(oid: u32, capacity: usize) -> Self {
        let mut body = Vec::with_capacity(HEADER_LEN + capacity);
        body.resize(HEADER_LEN, 0);
        Self {
            oid,
            count: 0,
            has_null: false,
            start: HEADER_LEN,
            body,
        }
    }

    /// Starts an element: its bytes follow in `body` until [`Self::end`].
    pub fn begin(&mut self) {
        self.start = self.body.len();
        self.body.extend_from_slice(&[0; 4]);
    }

    /// Drops what was written since [`Self::begin`] (to write the element another way).
    pub fn restart(&mut self) {
        self.body.truncate(self.start + 4);
    }

    /// Ends the element begun last, filling in its length.
    ///
    /// # Errors
    /// [`CodecError::ElementTooLarge`] for an element of 2 GiB or more.
    pub fn end(&mut self) -> Result<()> {
        let len = self.body.len() - self.start - 4;
        let prefix = i32::try_from(len).map_err(|_| CodecError::ElementTooLarge {
            index: self.count,
            len,
        })?;
        self.body[self.start..self.start + 4].copy_from_slice(&prefix.to_be_bytes());
        self.count += 1;
        Ok(())
    }

    /// Ends the element begun last as a NULL instead (what was written for it is dropped).
    pub fn end_null(&mut self) {
        self.body.truncate(self.start);
        self.null();
    }

    pub fn null(&mut self) {
        self.body.extend_from_slice(&(-1i32).to_be_bytes());
        self.has_null = true;
        self.count += 1;
    }

    /// The array: header and elements.
    ///
    /// # Errors
    /// [`CodecError::ArrayTooLong`] beyond `i32::MAX` elements.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let mut head = Vec::with_capacity(HEADER_LEN);
        header(&mut head, self.has_null, self.oid, self.count)?;
        self.body[..HEADER_LEN].copy_from_slice(&head);
        Ok(self.body)
    }
}

/// A one-dimensional `int8[]`.
pub fn pack_int8(items: &[i64]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(20 + 12 * items.len());
    header(&mut out, false, INT8_OID, items.len())?;
    for value in items {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_array_layout() {
        let packed = pack_varlena(TEXT_OID, &[Some(b"ab"), None]).unwrap();
        let expected: Vec<u8> = [
            &1i32.to_be_bytes()[..],
            &1i32.to_be_bytes(),
            &25u32.to_be_bytes(),
            &2i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &2i32.to_be_bytes(),
            b"ab",
            &(-1i32).to_be_bytes(),
        ]
        .concat();
        assert_eq!(packed, expected);
    }

    #[test]
    fn the_builder_packs_as_pack_varlena_does() {
        let mut b = VarlenaBuilder::new(TEXT_OID, 0);
        b.begin();
        b.body.extend_from_slice(b"zz");
        b.restart();
        b.body.extend_from_slice(b"ab");
        b.end().unwrap();
        b.begin();
        b.body.extend_from_slice(b"dropped");
        b.end_null();
        b.begin();
        b.end().unwrap();
        let expected = pack_varlena(TEXT_OID, &[Some(b"ab"), None, Some(b"")]).unwrap();
        assert_eq!(b.finish().unwrap(), expected);
        let empty = VarlenaBuilder::new(TEXT_OID, 0).finish().unwrap();
        assert_eq!(empty, pack_varlena(TEXT_OID, &[]).unwrap());
    }

    #[test]
    fn int8_array_layout() {
        let packed = pack_int8(&[-2]).unwrap();
        assert_eq!(&packed[8..12], &20u32.to_be_bytes());
        assert_eq!(&packed[20..24], &8i32.to_be_bytes());
        assert_eq!(&packed[24..], &(-2i64).to_be_bytes());
    }

    #[test]
    fn an_over_long_array_has_its_own_error() {
        let mut out = Vec::new();
        let err = header(&mut out, false, TEXT_OID, i32::MAX as usize + 1).unwrap_err();
        assert_eq!(
            err,
            CodecError::ArrayTooLong {
                len: i32::MAX as usize + 1
            }
        );
        assert!(err
            .to_string()
            .contains("longer than a PostgreSQL array can be"));
        assert!(out.is_empty());
    }

    #[test]
    fn empty_arrays_have_a_header_only() {
        assert_eq!(pack_varlena(BYTEA_OID, &[]).unwrap().len(), 20);
    }
}
