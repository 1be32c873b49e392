//! The `controller.storage.oplog.v1.AnyOperation` envelope (WIRE.md §1).
//!
//! | # | field          | written                                                      |
//! |---|----------------|--------------------------------------------------------------|
//! | 1 | type_name      | when not empty                                               |
//! | 2 | value          | when not empty                                               |
//! | 3 | operation_type | when not 0                                                   |
//! | 4 | field_mask     | always (`22 00` when there are no paths)                     |
//! | 5 | null_mask      | v2 only, always                                              |
//! | 6 | options        | v2 only, when options were given (even if they are empty)    |

use std::borrow::Cow;

use crate::error::{CodecError, Result};
use crate::wire::{self, Reader, WIRE_LEN, WIRE_VARINT};

/// `OpType` values; anything above `MAX_OP_TYPE` is rejected on decode.
pub const OP_UPDATE: u64 = 2;
pub const MAX_OP_TYPE: u64 = 5;

const FIELD_TYPE_NAME: u32 = 1;
const FIELD_VALUE: u32 = 2;
const FIELD_OPERATION_TYPE: u32 = 3;
const FIELD_FIELD_MASK: u32 = 4;
const FIELD_NULL_MASK: u32 = 5;
const FIELD_OPTIONS: u32 = 6;
/// `google.protobuf.FieldMask.paths`.
const FIELD_PATHS: u32 = 1;

/// Which generation of the Go queue format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Boundary be9f25cce1 (2020): fields 1–4.
    V1,
    /// Boundary HEAD: fields 1–6; null_mask always written.
    V2,
}

/// One operation as it sits in an envelope. Decoding borrows every string and byte slice from
/// the input; only the path lists (and a repeated `options` field, which protobuf merges by
/// concatenation) allocate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope<'a> {
    pub type_name: &'a str,
    /// The serialized user message.
    pub value: &'a [u8],
    pub op_type: u64,
    pub field_mask: Vec<&'a str>,
    pub null_mask: Vec<&'a str>,
    /// The serialized `OperationOptions`, when present.
    pub options: Option<Cow<'a, [u8]>>,
}

fn mask_body_len(paths: &[&str]) -> usize {
    paths.iter().map(|p| wire::len_field_size(p.len())).sum()
}

fn put_mask(out: &mut Vec<u8>, field: u8, paths: &[&str]) {
    out.push((field << 3) | WIRE_LEN);
    wire::put_varint(out, mask_body_len(paths) as u64);
    for path in paths {
        wire::put_len_field(out, FIELD_PATHS as u8, path.as_bytes());
    }
}

impl<'a> Envelope<'a> {
    /// Checks what the Go `Queue.add` checks, plus what the chosen format can carry.
    /// `index` names the operation in errors.
    pub fn validate(&self, format: Format, index: usize) -> Result<()> {
        let invalid = |reason: String| CodecError::InvalidOperation { index, reason };
        if self.type_name.is_empty() {
            return Err(invalid("missing type name".into()));
        }
        if self.op_type == 0 || self.op_type > MAX_OP_TYPE {
            return Err(invalid(format!("invalid operation type {}", self.op_type)));
        }
        if format == Format::V1 && !self.null_mask.is_empty() {
            return Err(invalid(
                "the v1 format cannot carry set-to-null paths".into(),
            ));
        }
        if format == Format::V1 && self.options.is_some() {
            return Err(invalid(
                "the v1 format cannot carry operation options".into(),
            ));
        }
        if self.op_type == OP_UPDATE {
            // Boundary today refuses an UPDATE without paths; be9f25cce1 (v1) accepted one and
            // replays it as a save of the whole row, so a v1 queue may carry it.
            if format == Format::V2 && self.field_mask.is_empty() && self.null_mask.is_empty() {
                return Err(invalid(
                    "UPDATE needs field-mask paths or set-to-null paths".into(),
                ));
            }
            let lowered: Vec<String> = self.field_mask.iter().map(|p| p.to_lowercase()).collect();
            for null_path in &self.null_mask {
                let null_lower = null_path.to_lowercase();
                if lowered.contains(&null_lower) {
                    return Err(invalid(format!(
                        "path {null_path:?} is both in the field mask and in the set-to-null paths"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The size of the encoded envelope, without its frame prefix.
    pub fn encoded_len(&self, format: Format) -> usize {
        let mut len = 0;
        if !self.type_name.is_empty() {
            len += wire::len_field_size(self.type_name.len());
        }
        if !self.value.is_empty() {
            len += wire::len_field_size(self.value.len());
        }
        if self.op_type != 0 {
            len += 1 + wire::varint_len(self.op_type);
        }
        len += wire::len_field_size(mask_body_len(&self.field_mask));
        if format == Format::V2 {
            len += wire::len_field_size(mask_body_len(&self.null_mask));
            if let Some(options) = &self.options {
                len += wire::len_field_size(options.len());
            }
        }
        len
    }

    /// Appends the envelope, fields in ascending number as protobuf-go marshals them.
    pub fn encode_into(&self, format: Format, out: &mut Vec<u8>) {
        if !self.type_name.is_empty() {
            wire::put_len_field(out, FIELD_TYPE_NAME as u8, self.type_name.as_bytes());
        }
        if !self.value.is_empty() {
            wire::put_len_field(out, FIELD_VALUE as u8, self.value);
        }
        if self.op_type != 0 {
            out.push(((FIELD_OPERATION_TYPE as u8) << 3) | WIRE_VARINT);
            wire::put_varint(out, self.op_type);
        }
        put_mask(out, FIELD_FIELD_MASK as u8, &self.field_mask);
        if format == Format::V2 {
            put_mask(out, FIELD_NULL_MASK as u8, &self.null_mask);
            if let Some(options) = &self.options {
                wire::put_len_field(out, FIELD_OPTIONS as u8, options);
            }
        }
    }

    /// Decodes one envelope. `base` is the absolute offset of `buf[0]` in the queue.
    ///
    /// Proto3 rules: unknown fields are skipped, a repeated scalar keeps its last value, repeated
    /// message fields merge. A known field with the wrong wire type is an error.
    pub fn decode(buf: &'a [u8], base: usize) -> Result<Self> {
        let mut env = Envelope::default();
        let mut op_type_offset = base;
        let mut r = Reader::new(buf, base);
        while !r.is_empty() {
            let (field, wire_type, tag_offset) = r.tag()?;
            let expected = match field {
                FIELD_OPERATION_TYPE => WIRE_VARINT,
                FIELD_TYPE_NAME..=FIELD_OPTIONS => WIRE_LEN,
                _ => {
                    r.skip(wire_type)?;
                    continue;
                }
            };
            if wire_type != expected {
                return Err(CodecError::WrongWireType {
                    offset: tag_offset,
                    field,
                    wire_type,
                });
            }
            match field {
                FIELD_OPERATION_TYPE => {
                    op_type_offset = r.offset();
                    env.op_type = r.varint()?;
                }
                FIELD_TYPE_NAME => env.type_name = utf8(r.len_delimited()?, "type_name")?,
                FIELD_VALUE => env.value = r.len_delimited()?.0,
                FIELD_FIELD_MASK => decode_mask(r.len_delimited()?, &mut env.field_mask)?,
                FIELD_NULL_MASK => decode_mask(r.len_delimited()?, &mut env.null_mask)?,
                _ => {
                    let (bytes, _) = r.len_delimited()?;
                    match &mut env.options {
                        None => env.options = Some(Cow::Borrowed(bytes)),
                        // Appending in place keeps a long run of repeats linear (copying the
                        // merged bytes per repeat was quadratic).
                        Some(earlier) => earlier.to_mut().extend_from_slice(bytes),
                    }
                }
            }
        }
        if env.op_type > MAX_OP_TYPE {
            return Err(CodecError::UnknownOpType {
                offset: op_type_offset,
                value: env.op_type,
            });
        }
        // An UPDATE without paths decodes: be9f25cce1 wrote them (a save of the whole row).
        Ok(env)
    }
}

fn utf8<'a>((bytes, offset): (&'a [u8], usize), field: &'static str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| CodecError::InvalidUtf8 {
        offset: offset + e.valid_up_to(),
        field,
    })
}

fn decode_mask<'a>((body, base): (&'a [u8], usize), paths: &mut Vec<&'a str>) -> Result<()> {
    let mut r = Reader::new(body, base);
    while !r.is_empty() {
        let (field, wire_type, tag_offset) = r.tag()?;
        if field != FIELD_PATHS {
            r.skip(wire_type)?;
            continue;
        }
        if wire_type != WIRE_LEN {
            return Err(CodecError::WrongWireType {
                offset: tag_offset,
                field,
                wire_type,
            });
        }
        paths.push(utf8(r.len_delimited()?, "field-mask path")?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const USER: &str =
        "08012205416c6963652a083535352d303130303211616c696365406578616d706c652e636f6d";

    fn user_create(value: &[u8]) -> Envelope<'_> {
        Envelope {
            type_name: "user",
            value,
            op_type: 1,
            ..Envelope::default()
        }
    }

    #[test]
    fn encodes_the_go_v1_and_v2_bytes() {
        let value = hex(USER);
        let env = user_create(&value);
        let mut v1 = Vec::new();
        env.encode_into(Format::V1, &mut v1);
        assert_eq!(v1, hex(&format!("0a0475736572 1226{USER} 1801 2200")));
        assert_eq!(v1.len(), env.encoded_len(Format::V1));
        let mut v2 = Vec::new();
        env.encode_into(Format::V2, &mut v2);
        assert_eq!(v2[..v1.len()], v1[..]);
        assert_eq!(&v2[v1.len()..], &[0x2a, 0x00]);
        assert_eq!(v2.len(), env.encoded_len(Format::V2));
    }

    #[test]
    fn decode_is_the_inverse_of_encode() {
        let env = Envelope {
            type_name: "user",
            value: b"\x08\x01",
            op_type: 2,
            field_mask: vec!["Name", "Email"],
            null_mask: vec!["PhoneNumber"],
            options: Some(Cow::Borrowed(b"\x10\x01")),
        };
        let mut out = Vec::new();
        env.encode_into(Format::V2, &mut out);
        assert_eq!(Envelope::decode(&out, 0).unwrap(), env);
    }

    #[test]
    fn empty_options_are_still_written() {
        let env = Envelope {
            options: Some(Cow::Borrowed(b"")),
            ..user_create(b"")
        };
        let mut out = Vec::new();
        env.encode_into(Format::V2, &mut out);
        assert!(out.ends_with(&[0x22, 0x00, 0x2a, 0x00, 0x32, 0x00]));
        assert_eq!(
            Envelope::decode(&out, 0).unwrap().options.as_deref(),
            Some(&b""[..])
        );
    }

    #[test]
    fn absent_value_decodes_as_empty() {
        let bytes = hex("0a04757365721801 2200");
        assert_eq!(Envelope::decode(&bytes, 0).unwrap().value, b"");
    }

    #[test]
    fn unknown_fields_are_skipped_and_repeated_masks_merge() {
        // field 9 varint, field 4 twice, field 15 fixed32
        let bytes = hex("4801 0a0175 22030a0161 22030a0162 7d01020304");
        let env = Envelope::decode(&bytes, 0).unwrap();
        assert_eq!(env.type_name, "u");
        assert_eq!(env.field_mask, vec!["a", "b"]);
    }

    #[test]
    fn repeated_options_merge_by_concatenation() {
        let bytes = hex("32020801 32021001");
        let env = Envelope::decode(&bytes, 0).unwrap();
        assert_eq!(env.options.as_deref(), Some(&[0x08, 0x01, 0x10, 0x01][..]));
    }

    #[test]
    fn decode_errors_carry_absolute_offsets() {
        // type_name declared as varint
        let err = Envelope::decode(&hex("0801"), 100).unwrap_err();
        assert_eq!(
            err,
            CodecError::WrongWireType {
                offset: 100,
                field: 1,
                wire_type: 0
            }
        );
        // invalid UTF-8 in the second byte of the type name
        let err = Envelope::decode(&hex("0a0261ff"), 10).unwrap_err();
        assert_eq!(
            err,
            CodecError::InvalidUtf8 {
                offset: 13,
                field: "type_name"
            }
        );
        // path in the field mask is truncated
        let err = Envelope::decode(&hex("22030a0561"), 0).unwrap_err();
        assert!(
            matches!(err, CodecError::Truncated { offset: 3, .. }),
            "{err:?}"
        );
        // op type 6
        let err = Envelope::decode(&hex("1806"), 7).unwrap_err();
        assert_eq!(
            err,
            CodecError::UnknownOpType {
                offset: 8,
                value: 6
            }
        );
        // An UPDATE with neither mask decodes, as be9f25cce1 wrote it.
        let bytes = hex("0a01751802");
        let update = Envelope::decode(&bytes, 4).unwrap();
        assert_eq!((update.op_type, update.field_mask.len()), (2, 0));
    }

    #[test]
    fn validate_mirrors_the_go_add_checks() {
        let update = Envelope {
            type_name: "user",
            op_type: 2,
            ..Envelope::default()
        };
        assert!(update.validate(Format::V2, 0).is_err());
        assert!(update.validate(Format::V1, 0).is_ok());
        let both = Envelope {
            field_mask: vec!["Name"],
            null_mask: vec!["name"],
            ..update.clone()
        };
        let err = both.validate(Format::V2, 3).unwrap_err();
        assert!(matches!(err, CodecError::InvalidOperation { index: 3, .. }));
        let ok = Envelope {
            field_mask: vec!["Name"],
            null_mask: vec!["email"],
            ..update.clone()
        };
        assert!(ok.validate(Format::V2, 0).is_ok());
        assert!(
            ok.validate(Format::V1, 0).is_err(),
            "v1 cannot carry null paths"
        );
        let untyped = Envelope {
            type_name: "",
            ..user_create(b"")
        };
        assert!(untyped.validate(Format::V2, 0).is_err());
        let unspecified = Envelope {
            op_type: 0,
            ..user_create(b"")
        };
        assert!(unspecified.validate(Format::V2, 0).is_err());
    }
}
