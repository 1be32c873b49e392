"""The codec against the protobuf runtime's own floor, for 1000 TestUser operations.

The floor of decoding is what any decoder must do at least: unframe the queue (the Rust core's
raw ``decode_operations``) and parse each message with the protobuf runtime (``FromString``).
The floor of encoding is ``SerializeToString`` of each message. Each candidate is timed
alternating call by call with its floor (see ``alternating`` in conftest.py); the table's
"paired" ratio is floor / candidate, so 0.77x means the candidate takes 1.3 times the floor.
"""

from __future__ import annotations

from typing import cast

from pytest_benchmark.fixture import BenchmarkFixture

import oplog
from benches.conftest import alternating
from oplog import _core
from oplog.proto.oplog_test_pb2 import TestUser
from tests.golden import CATALOG

N = 1000
MESSAGES = [
    TestUser(id=i, name=f"user {i}", email=f"u{i}@example.com", phone_number="555-0100")
    for i in range(N)
]
OPERATIONS = [oplog.Operation(m, "user", oplog.OpType.CREATE) for m in MESSAGES]
_queue = oplog.Queue()
_queue.extend(OPERATIONS)
DATA = bytes(_queue)
PAIRS = 40


def _pairs(benchmark: BenchmarkFixture) -> int:
    return PAIRS if not benchmark.disabled else 1


def _decode() -> list[oplog.Operation]:
    return list(oplog.Queue(DATA, catalog=CATALOG))


def _decode_floor() -> list[object]:
    parse = TestUser.FromString
    raw, _ = _core.decode_operations(DATA, 0, None)
    # Every value here is under 64 KiB, so a bytes copy (cast only for the type checker).
    return [parse(cast(bytes, value)) for _, value, *_ in raw]


def test_decode_vs_floor(benchmark: BenchmarkFixture) -> None:
    """list(Queue(data, catalog=)) against unframe + FromString of each message."""
    benchmark.group = "codec vs protobuf floor (1000 TestUser)"
    assert [op.message for op in _decode()] == MESSAGES
    assert len(_decode_floor()) == N
    alternating(benchmark, _decode, _decode_floor, _pairs(benchmark))


def _encode() -> bytes:
    q = oplog.Queue()
    q.extend(OPERATIONS)
    return bytes(q)


def _encode_floor() -> list[bytes]:
    return [m.SerializeToString() for m in MESSAGES]


def test_encode_vs_floor(benchmark: BenchmarkFixture) -> None:
    """Queue.extend of 1000 operations + bytes() against SerializeToString of each message."""
    benchmark.group = "codec vs protobuf floor (1000 TestUser)"
    assert _encode() == DATA
    alternating(benchmark, _encode, _encode_floor, _pairs(benchmark))


def _add() -> bytes:
    q = oplog.Queue()
    add = q.add
    create = oplog.OpType.CREATE
    for m in MESSAGES:
        add(m, "user", create)
    return bytes(q)


def test_add_vs_extend(benchmark: BenchmarkFixture) -> None:
    """1000 Queue.add calls against one Queue.extend of the same 1000 operations (built
    beforehand): the cost of a call per operation."""
    benchmark.group = "codec vs protobuf floor (1000 TestUser)"
    assert _add() == DATA
    alternating(benchmark, _add, _encode, _pairs(benchmark))
