"""The Rust codec of the oplog queue. Private: use ``oplog.Queue``."""

from collections.abc import Iterable
from typing import Any

__all__ = ["decode_operations", "encode_operations", "pack_array", "pack_int8_array"]

_RawOperation = tuple[
    str, bytes | memoryview, int, tuple[str, ...], tuple[str, ...], bytes | None, int
]
"""(type_name, value, op_type, field_mask, null_paths, options, frame_offset) as decoded."""

def encode_operations(operations: Iterable[tuple[Any, ...]], version: str) -> bytes:
    """Encodes a batch of ``oplog.Operation`` into queue bytes in the given format.

    Each operation's message and options are serialized with ``SerializeToString()``. The whole
    batch is validated before anything is encoded.

    Raises:
        oplog.InvalidParameterError: An operation is invalid, or the version is unknown.
    """

def decode_operations(
    data: bytes, start: int, limit: int | None
) -> tuple[list[_RawOperation], int]:
    """Decodes up to ``limit`` frames of ``data`` from offset ``start``.

    Values of 64 KiB or more are memoryview slices of ``data``; smaller ones are copies.

    Returns:
        The raw operations and the offset after the last frame decoded.

    Raises:
        oplog.DecodeError: The queue is malformed; ``offset`` says where.
    """

def pack_array(items: Iterable[str | bytes | None], bytea: bool) -> bytes:
    """A PostgreSQL binary ``text[]`` (or, with ``bytea``, ``bytea[]``) of ``items``.

    Raises:
        oplog.InvalidParameterError: An element is not str, bytes or None.
    """

def pack_int8_array(items: list[int]) -> bytes:
    """A PostgreSQL binary ``int8[]`` of ``items``."""
