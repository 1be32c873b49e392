"""Queue codec: the Rust core against the pure-Python reference codec, same corpus, same run.

Groups pair a candidate with its baseline (the name containing ``reference``); `make bench`
reports each group's medians and ratios.
"""

from __future__ import annotations

import struct
from typing import Any

from pytest_benchmark.fixture import BenchmarkFixture

import oplog
from oplog import _core
from oplog.proto.any_operation_pb2 import AnyOperation
from tests import reference_codec

_LEN = struct.Struct("<I")


def _encode_oplog(ops: list[oplog.Operation]) -> bytes:
    q = oplog.Queue()
    q.extend(ops)
    return bytes(q)


def test_encode_oplog(benchmark: BenchmarkFixture, corpus: list[oplog.Operation]) -> None:
    benchmark.group = "encode 10k operations"
    out = benchmark(_encode_oplog, corpus)
    assert out == reference_codec.encode(corpus)


def test_encode_reference(benchmark: BenchmarkFixture, corpus: list[oplog.Operation]) -> None:
    benchmark.group = "encode 10k operations"
    benchmark(reference_codec.encode, corpus)


def test_decode_oplog(
    benchmark: BenchmarkFixture, corpus_bytes: bytes, catalog: oplog.TypeCatalog
) -> None:
    benchmark.group = "decode 10k operations"
    out = benchmark(lambda: list(oplog.Queue(corpus_bytes, catalog=catalog)))
    assert len(out) == 10_000


def test_decode_reference(
    benchmark: BenchmarkFixture, corpus_bytes: bytes, catalog: oplog.TypeCatalog
) -> None:
    benchmark.group = "decode 10k operations"
    benchmark(lambda: list(reference_codec.decode(corpus_bytes, catalog)))


def _unframe_reference(data: bytes) -> list[Any]:
    out = []
    pos = 0
    while pos < len(data):
        (length,) = _LEN.unpack_from(data, pos)
        pos += 4
        env = AnyOperation.FromString(data[pos : pos + length])
        pos += length
        out.append(
            (
                env.type_name,
                env.value,
                env.operation_type,
                tuple(env.field_mask.paths),
                tuple(env.null_mask.paths),
                env.options.SerializeToString() if env.HasField("options") else None,
            )
        )
    return out


def test_unframe_oplog(benchmark: BenchmarkFixture, corpus_bytes: bytes) -> None:
    """Frames and envelopes only, no message parsing: the part the Rust core does."""
    benchmark.group = "unframe 10k envelopes (no message parse)"
    raw, _ = benchmark(_core.decode_operations, corpus_bytes, 0, None)
    assert len(raw) == 10_000


def test_unframe_reference(benchmark: BenchmarkFixture, corpus_bytes: bytes) -> None:
    benchmark.group = "unframe 10k envelopes (no message parse)"
    benchmark(_unframe_reference, corpus_bytes)
