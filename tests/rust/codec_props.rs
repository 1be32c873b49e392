//! Property tests of the codec: decoding is total (any bytes give a value or an error, never a
//! panic) and encode → decode is the identity.

use std::borrow::Cow;

use oplog_core::{queue, CodecError, Envelope, Format};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct OwnedOp {
    type_name: String,
    value: Vec<u8>,
    op_type: u64,
    field_mask: Vec<String>,
    null_mask: Vec<String>,
    options: Option<Vec<u8>>,
}

impl OwnedOp {
    fn envelope(&self) -> Envelope<'_> {
        Envelope {
            type_name: &self.type_name,
            value: &self.value,
            op_type: self.op_type,
            field_mask: self.field_mask.iter().map(String::as_str).collect(),
            null_mask: self.null_mask.iter().map(String::as_str).collect(),
            options: self.options.as_deref().map(Cow::Borrowed),
        }
    }
}

/// Valid operations for `format`: non-UPDATE ops, and UPDATEs with disjoint masks.
fn op(format: Format) -> impl Strategy<Value = OwnedOp> {
    let v2 = format == Format::V2;
    (
        "\\PC{1,12}",
        proptest::collection::vec(any::<u8>(), 0..64),
        1u64..=5,
        proptest::collection::vec("[a-z_]{1,8}", 0..4),
        // A trailing digit keeps null paths apart from the (digit-free) field-mask paths.
        proptest::collection::vec("[A-Z]{1,8}[0-9]", 0..3),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
    )
        .prop_map(
            move |(type_name, value, op_type, field_mask, null_mask, options)| {
                let mut op = OwnedOp {
                    type_name,
                    value,
                    op_type,
                    field_mask,
                    null_mask: if v2 { null_mask } else { vec![] },
                    options: if v2 { options } else { None },
                };
                if op.op_type == 2 && op.field_mask.is_empty() && op.null_mask.is_empty() {
                    op.field_mask.push("name".into());
                }
                op
            },
        )
}

fn round_trip(ops: &[OwnedOp], format: Format) -> Result<(), TestCaseError> {
    let envelopes: Vec<_> = ops.iter().map(OwnedOp::envelope).collect();
    let mut bytes = Vec::new();
    queue::encode(&envelopes, format, &mut bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (decoded, end) = queue::decode(&bytes, 0, usize::MAX).unwrap();
    prop_assert_eq!(end, bytes.len());
    let decoded: Vec<_> = decoded.into_iter().map(|(_, env)| env).collect();
    prop_assert_eq!(decoded, envelopes);
    Ok(())
}

fn assert_total(bytes: &[u8]) {
    match queue::decode(bytes, 0, usize::MAX) {
        Ok((_, end)) => assert_eq!(end, bytes.len()),
        Err(err) => {
            let offset = err.offset().expect("decode errors carry an offset");
            assert!(offset <= bytes.len(), "{err} points past the input");
        }
    }
}

proptest! {
    // Failures print their minimal input; nothing is persisted beside this non-standard path.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn v2_encode_then_decode_is_identity(ops in proptest::collection::vec(op(Format::V2), 0..8)) {
        round_trip(&ops, Format::V2)?;
    }

    #[test]
    fn v1_encode_then_decode_is_identity(ops in proptest::collection::vec(op(Format::V1), 0..8)) {
        round_trip(&ops, Format::V1)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        assert_total(&bytes);
    }

    #[test]
    fn framed_arbitrary_envelopes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        assert_total(&bytes);
    }

    #[test]
    fn mutated_valid_queues_never_panic(
        ops in proptest::collection::vec(op(Format::V2), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let envelopes: Vec<_> = ops.iter().map(OwnedOp::envelope).collect();
        let mut bytes = Vec::new();
        queue::encode(&envelopes, Format::V2, &mut bytes).unwrap();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] ^= byte;
        }
        assert_total(&bytes);
        assert_total(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

#[test]
fn huge_length_prefixes_allocate_nothing() {
    for prefix in [
        [0xff; 4],
        [0xff, 0xff, 0xff, 0x7f],
        [0x00, 0x00, 0x00, 0x80],
    ] {
        let err = queue::decode(&prefix, 0, usize::MAX).unwrap_err();
        assert!(matches!(err, CodecError::FrameOverrun { offset: 0, .. }));
    }
}

#[test]
fn many_tiny_frames_decode() {
    let zero_frames = vec![0u8; 4 * 100_000];
    let (ops, end) = queue::decode(&zero_frames, 0, usize::MAX).unwrap();
    assert_eq!(ops.len(), 100_000);
    assert_eq!(end, zero_frames.len());
}
