//! The queue: `frame*`, each frame a u32 little-endian length and an envelope (WIRE.md §1).

use crate::envelope::{Envelope, Format};
use crate::error::{CodecError, Result};

const PREFIX: usize = 4;

/// Validates every operation, then returns the exact size of the encoded queue.
///
/// Nothing is encoded unless the whole batch is valid, so a caller that appends the result to a
/// queue never appends half a batch.
pub fn encoded_len(envelopes: &[Envelope<'_>], format: Format) -> Result<usize> {
    let mut total = 0usize;
    for (index, env) in envelopes.iter().enumerate() {
        env.validate(format, index)?;
        let len = env.encoded_len(format);
        if u32::try_from(len).is_err() {
            return Err(CodecError::InvalidOperation {
                index,
                reason: format!("encoded operation is {len} bytes; a frame holds at most 4 GiB"),
            });
        }
        total = total.saturating_add(PREFIX + len);
    }
    Ok(total)
}

/// Encodes a batch of operations as frames appended to `out`. Validates first (see
/// [`encoded_len`]) and reserves the exact size once.
pub fn encode(envelopes: &[Envelope<'_>], format: Format, out: &mut Vec<u8>) -> Result<()> {
    let total = encoded_len(envelopes, format)?;
    out.reserve_exact(total);
    for env in envelopes {
        let len = env.encoded_len(format) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        env.encode_into(format, out);
    }
    Ok(())
}

/// Iterates the frames of a queue from a starting offset, decoding each envelope.
///
/// Yields `(offset of the frame, envelope)`; after an error it yields nothing more.
pub struct Frames<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    pub fn new(data: &'a [u8], start: usize) -> Self {
        Frames {
            data,
            pos: start.min(data.len()),
            failed: false,
        }
    }

    /// The offset of the first byte not yet consumed.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn next_frame(&mut self) -> Result<Envelope<'a>> {
        let offset = self.pos;
        let rest = &self.data[offset..];
        let Some(prefix) = rest.get(..PREFIX) else {
            return Err(CodecError::TruncatedLength {
                offset,
                available: rest.len(),
            });
        };
        let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let body = &rest[PREFIX..];
        let Some(envelope) = body.get(..length as usize) else {
            return Err(CodecError::FrameOverrun {
                offset,
                length,
                available: body.len(),
            });
        };
        let decoded = Envelope::decode(envelope, offset + PREFIX)?;
        self.pos = offset + PREFIX + envelope.len();
        Ok(decoded)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let offset = self.pos;
        let item = self.next_frame().map(|env| (offset, env));
        self.failed = item.is_err();
        Some(item)
    }
}

/// A decoded frame: its offset in the queue and its envelope.
pub type Frame<'a> = (usize, Envelope<'a>);

/// Decodes up to `limit` frames starting at `start`; returns them with the offset after the
/// last one. On error nothing is returned but the error.
pub fn decode(data: &[u8], start: usize, limit: usize) -> Result<(Vec<Frame<'_>>, usize)> {
    let mut frames = Frames::new(data, start);
    let mut out = Vec::new();
    while out.len() < limit {
        match frames.next() {
            None => break,
            Some(item) => out.push(item?),
        }
    }
    Ok((out, frames.position()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(type_name: &str, op_type: u64) -> Envelope<'_> {
        Envelope {
            type_name,
            value: b"\x08\x01",
            op_type,
            ..Envelope::default()
        }
    }

    #[test]
    fn frames_round_trip_in_order() {
        let ops = vec![op("user", 1), op("car", 3), op("rental", 4)];
        let mut out = Vec::new();
        encode(&ops, Format::V2, &mut out).unwrap();
        assert_eq!(out.len(), encoded_len(&ops, Format::V2).unwrap());
        let (decoded, end) = decode(&out, 0, usize::MAX).unwrap();
        let envelopes: Vec<_> = decoded.into_iter().map(|(_, env)| env).collect();
        assert_eq!(envelopes, ops);
        assert_eq!(end, out.len());
    }

    #[test]
    fn limit_and_start_allow_one_at_a_time() {
        let ops = vec![op("a", 1), op("b", 1)];
        let mut out = Vec::new();
        encode(&ops, Format::V1, &mut out).unwrap();
        let (first, first_end) = decode(&out, 0, 1).unwrap();
        let pos = first_end;
        assert_eq!(first[0], (0, op("a", 1)));
        let (second, pos) = decode(&out, pos, 1).unwrap();
        assert_eq!(second[0].1.type_name, "b");
        assert_eq!(second[0].0, first_end);
        let (none, end) = decode(&out, pos, 1).unwrap();
        assert!(none.is_empty());
        assert_eq!(end, out.len());
    }

    #[test]
    fn empty_queue_is_zero_bytes() {
        let mut out = Vec::new();
        encode(&[], Format::V2, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(decode(&out, 0, usize::MAX).unwrap().0, vec![]);
    }

    #[test]
    fn invalid_batch_encodes_nothing() {
        let ops = vec![op("user", 1), op("", 1)];
        let mut out = vec![9];
        let err = encode(&ops, Format::V2, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::InvalidOperation { index: 1, .. }));
        assert_eq!(out, vec![9]);
    }

    #[test]
    fn one_to_three_trailing_bytes_are_a_truncated_length() {
        let mut out = Vec::new();
        encode(&[op("user", 1)], Format::V2, &mut out).unwrap();
        let good = out.len();
        for extra in 1..4 {
            let mut data = out.clone();
            data.extend(std::iter::repeat_n(0, extra));
            assert_eq!(
                decode(&data, 0, usize::MAX).unwrap_err(),
                CodecError::TruncatedLength {
                    offset: good,
                    available: extra
                }
            );
        }
    }

    #[test]
    fn oversized_length_prefix_is_an_overrun_not_a_short_read() {
        let data = [0xff, 0xff, 0xff, 0xff, 0x0a, 0x00];
        assert_eq!(
            decode(&data, 0, usize::MAX).unwrap_err(),
            CodecError::FrameOverrun {
                offset: 0,
                length: u32::MAX,
                available: 2
            }
        );
    }

    #[test]
    fn zero_length_frame_is_an_empty_envelope() {
        let (ops, _) = decode(&[0, 0, 0, 0], 0, usize::MAX).unwrap();
        assert_eq!(ops, vec![(0, Envelope::default())]);
    }

    #[test]
    fn errors_inside_a_later_frame_report_queue_offsets() {
        let mut out = Vec::new();
        encode(&[op("user", 1)], Format::V2, &mut out).unwrap();
        let second = out.len();
        out.extend_from_slice(&[2, 0, 0, 0, 0x0a, 0x05]);
        let err = decode(&out, 0, usize::MAX).unwrap_err();
        assert_eq!(
            err,
            CodecError::Truncated {
                offset: second + 5,
                needed: 5,
                available: 0
            }
        );
    }
}
