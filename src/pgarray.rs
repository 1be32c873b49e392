//! PostgreSQL's binary array format, for sending large arrays as query parameters.
//!
//! `ndim(i32) has_null(i32) element_oid(u32) length(i32) lower_bound(i32)` then, per element,
//! `len(i32)` (-1 for NULL) and the element's binary value. Big-endian throughout.

use crate::error::{CodecError, Result};

/// `text` and `bytea` element OIDs.
pub const TEXT_OID: u32 = 25;
pub const BYTEA_OID: u32 = 17;
pub const INT8_OID: u32 = 20;

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
    let mut out = Vec::with_capacity(20 + payload);
    header(
        &mut out,
        items.iter().any(Option::is_none),
        oid,
        items.len(),
    )?;
    for (index, item) in items.iter().enumerate() {
        match item {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).map_err(|_| CodecError::ElementTooLarge {
                    index,
                    len: bytes.len(),
                })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    Ok(out)
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
