//! The byte-level core of oplog: the operation queue of HashiCorp Boundary's `internal/oplog`.
//!
//! A queue is a sequence of frames, each a u32 little-endian length followed by a protobuf
//! `AnyOperation` envelope (see `WIRE.md`). [`queue`] frames and unframes, [`envelope`] encodes and
//! decodes one envelope, [`wire`] holds the protobuf primitives, [`pgarray`] packs PostgreSQL
//! binary arrays for batch parameters, [`blob`] opens the AES-256-GCM blobs of a page of entries. None of them uses pyo3: the
//! Python extension lives in the `python` module, behind the `python` feature.
//!
//! Decoding never panics and never allocates from a length it has not checked against the input;
//! every malformed input is a [`CodecError`] carrying the byte offset of the problem.

pub mod blob;
pub mod chain;
pub mod envelope;
pub mod error;
pub mod pgarray;
pub mod queue;
pub mod wire;

#[cfg(feature = "python")]
mod python;

pub use envelope::{Envelope, Format};
pub use error::{CodecError, Result};
