//! The one error type of the codec.

use std::fmt;

/// Everything that can go wrong while framing, unframing, encoding or decoding.
///
/// Decode variants carry `offset`, the absolute byte offset into the queue being decoded at which
/// the problem was found. Encode variants carry `index`, the position of the offending operation
/// in the batch handed to the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Fewer than four bytes are left where a frame's length prefix should be.
    TruncatedLength { offset: usize, available: usize },
    /// A frame's length prefix claims more bytes than the queue has left.
    FrameOverrun {
        offset: usize,
        length: u32,
        available: usize,
    },
    /// A varint is longer than ten bytes, or overflows 64 bits, or the input ends inside it.
    BadVarint { offset: usize },
    /// A tag with field number 0, or a wire type protobuf does not define (6, 7) or this codec
    /// does not accept (the deprecated groups, 3 and 4).
    BadTag { offset: usize, tag: u64 },
    /// A known field arrived with a wire type other than its declared one.
    WrongWireType {
        offset: usize,
        field: u32,
        wire_type: u8,
    },
    /// A length-delimited or fixed-width field runs past the end of its enclosing message.
    Truncated {
        offset: usize,
        needed: u64,
        available: usize,
    },
    /// `type_name` or a field-mask path is not valid UTF-8.
    InvalidUtf8 { offset: usize, field: &'static str },
    /// `operation_type` holds a value that is not an `OpType`.
    UnknownOpType { offset: usize, value: u64 },
    /// An operation handed to the encoder is not valid; nothing of the batch was encoded.
    InvalidOperation { index: usize, reason: String },
    /// An array has more elements than a PostgreSQL array can hold (`i32::MAX`).
    ArrayTooLong { len: usize },
    /// An array element is larger than a PostgreSQL value can be (its length is an `i32`).
    ElementTooLarge { index: usize, len: usize },
}

/// Result alias used across the codec.
pub type Result<T> = std::result::Result<T, CodecError>;

impl CodecError {
    /// The byte offset of a decode error, `None` for encode errors.
    pub fn offset(&self) -> Option<usize> {
        match *self {
            CodecError::TruncatedLength { offset, .. }
            | CodecError::FrameOverrun { offset, .. }
            | CodecError::BadVarint { offset }
            | CodecError::BadTag { offset, .. }
            | CodecError::WrongWireType { offset, .. }
            | CodecError::Truncated { offset, .. }
            | CodecError::InvalidUtf8 { offset, .. }
            | CodecError::UnknownOpType { offset, .. } => Some(offset),
            CodecError::InvalidOperation { .. }
            | CodecError::ArrayTooLong { .. }
            | CodecError::ElementTooLarge { .. } => None,
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CodecError::*;
        match self {
            TruncatedLength { offset, available } => write!(
                f,
                "truncated frame length at offset {offset}: {available} byte(s) left, 4 needed"
            ),
            FrameOverrun {
                offset,
                length,
                available,
            } => write!(
                f,
                "frame at offset {offset} claims {length} bytes but only {available} remain"
            ),
            BadVarint { offset } => write!(f, "malformed varint at offset {offset}"),
            BadTag { offset, tag } => write!(f, "invalid field tag {tag:#x} at offset {offset}"),
            WrongWireType {
                offset,
                field,
                wire_type,
            } => write!(
                f,
                "field {field} has wire type {wire_type}, not its declared one, at offset {offset}"
            ),
            Truncated {
                offset,
                needed,
                available,
            } => write!(
                f,
                "field at offset {offset} needs {needed} bytes but only {available} remain"
            ),
            InvalidUtf8 { offset, field } => {
                write!(f, "{field} at offset {offset} is not valid UTF-8")
            }
            UnknownOpType { offset, value } => {
                write!(f, "unknown operation type {value} at offset {offset}")
            }
            InvalidOperation { index, reason } => write!(f, "operation {index}: {reason}"),
            ArrayTooLong { len } => write!(
                f,
                "an array of {len} elements is longer than a PostgreSQL array can be ({})",
                i32::MAX
            ),
            ElementTooLarge { index, len } => write!(
                f,
                "array element {index} is {len} bytes, larger than a PostgreSQL value can be"
            ),
        }
    }
}

impl std::error::Error for CodecError {}
