"""A pure-Python reference codec of the queue: ``struct`` framing plus the protobuf runtime's
``AnyOperation``. The tests use it as an oracle for the Rust core, the benchmarks as a baseline.

It is deliberately naive (one message object per operation, bytes concatenation) but exact.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from google.protobuf.field_mask_pb2 import FieldMask

import oplog
from oplog.proto.any_operation_pb2 import AnyOperation

_LEN = struct.Struct("<I")


def encode(operations: Iterable[oplog.Operation], version: str = "v2") -> bytes:
    """The queue bytes of `operations` in the given format (no validation)."""
    out = bytearray()
    for op in operations:
        env = AnyOperation(
            type_name=op.type_name,
            value=op.message.SerializeToString(),
            operation_type=int(op.op_type),  # type: ignore[arg-type]
            field_mask=FieldMask(paths=op.field_mask),
        )
        if version == "v2":
            env.null_mask.CopyFrom(FieldMask(paths=op.null_paths))
            if op.options is not None:
                env.options.CopyFrom(op.options)
        body = env.SerializeToString()
        out += _LEN.pack(len(body))
        out += body
    return bytes(out)


def decode(data: bytes, catalog: oplog.TypeCatalog) -> Iterator[oplog.Operation]:
    """The operations of a well-formed queue (raises on anything else, without offsets)."""
    pos = 0
    while pos < len(data):
        (length,) = _LEN.unpack_from(data, pos)
        pos += 4
        if pos + length > len(data):
            raise ValueError("frame overruns the queue")
        env = AnyOperation.FromString(data[pos : pos + length])
        pos += length
        yield oplog.Operation(
            catalog.get(env.type_name).FromString(env.value),
            env.type_name,
            oplog.OpType(env.operation_type),
            tuple(env.field_mask.paths),
            tuple(env.null_mask.paths),
            env.options if env.HasField("options") else None,
        )
