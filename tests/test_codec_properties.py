"""Properties of the Rust codec: agreement with the reference codec, and total decoding."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import oplog
from oplog import _core, queue
from oplog.proto.oplog_test_pb2 import TestUser
from tests import reference_codec
from tests.golden import CATALOG
from tests.strategies import operations


@given(st.lists(operations("v2"), max_size=12))
def test_v2_matches_the_reference_byte_for_byte(ops: list[oplog.Operation]) -> None:
    """Random v2 operations encode exactly as the pure-Python reference does."""
    q = oplog.Queue()
    q.extend(ops)
    assert bytes(q) == reference_codec.encode(ops, "v2")


@given(st.lists(operations("v1"), max_size=12))
def test_v1_matches_the_reference_byte_for_byte(ops: list[oplog.Operation]) -> None:
    """Random v1 operations encode exactly as the reference does without fields 5 and 6 (the
    codec itself: a v1 Queue also rewrites mask paths in the Go spelling first)."""
    assert _core.encode_operations(ops, "v1") == reference_codec.encode(ops, "v1")


@given(st.lists(operations("v2"), max_size=12))
def test_round_trip_is_identity(ops: list[oplog.Operation]) -> None:
    """Encoding then decoding gives back equal operations, options included."""
    q = oplog.Queue()
    q.extend(ops)
    data = bytes(q)
    assert list(oplog.Queue(data, catalog=CATALOG)) == ops
    assert list(reference_codec.decode(data, CATALOG)) == ops


def _decode_only_raises_decode_error(data: bytes) -> None:
    try:
        for _ in oplog.Queue(data, catalog=CATALOG):
            pass
    except (oplog.DecodeError, oplog.UnknownTypeError):
        return
    # Reaching here means the bytes decoded cleanly, which is also fine.


_FRAME = struct.Struct("<I")
_VALID = _FRAME.pack(6) + bytes.fromhex("0a0475736572")


@example(b"\x00\x00\x00\x00")  # a zero-length frame: an empty envelope with no type name
@example(b"\xff\xff\xff\xff")
@example(b"\xff\xff\xff\xff" + b"\x0a\x00")
@example(_VALID + b"\x01")
@example(_VALID + b"\x01\x02")
@example(_VALID + b"\x01\x02\x03")
@example(_FRAME.pack(3) + b"\x0a\x80\x80")  # unterminated varint
@example(_FRAME.pack(3) + b"\x0a\x01\xff")  # invalid UTF-8 type name
@example(_FRAME.pack(2) + b"\x0b\x00")  # a group tag
@example(_FRAME.pack(2) + b"\x08\x01")  # type_name as a varint
@example(_FRAME.pack(12) + b"\x18" + b"\xff" * 10 + b"\x01")  # an 11-byte varint
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_decode_errors(data: bytes) -> None:
    """Any bytes decode or raise DecodeError/UnknownTypeError; nothing else escapes."""
    _decode_only_raises_decode_error(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(operations("v2"), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    st.integers(0, 10**6),
)
def test_mutated_queues_only_raise_decode_errors(
    ops: list[oplog.Operation], flips: list[tuple[int, int]], cut: int
) -> None:
    """Valid queues with flipped bytes or cut short decode or raise DecodeError only."""
    q = oplog.Queue()
    q.extend(ops)
    data = bytearray(bytes(q))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    _decode_only_raises_decode_error(bytes(data))
    _decode_only_raises_decode_error(bytes(data[: cut % (len(data) + 1)]))


def _decoded_alone(data: bytes) -> list[oplog.Operation] | None:
    try:
        return queue.decode(data, CATALOG)
    except (oplog.DecodeError, oplog.UnknownTypeError):
        return None


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.lists(operations("v2"), max_size=3),
            st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2),
        ),
        max_size=6,
    )
)
def test_a_page_of_queues_decodes_as_its_queues_one_by_one(
    page: list[tuple[list[oplog.Operation], list[tuple[int, int]]]],
) -> None:
    """decode_all (one Rust call for a page of entries) gives the operations of the queues
    decoded one by one, up to the first that does not decode (damaged bytes, an unknown
    type), and says which that is."""
    datas = []
    for ops, flips in page:
        q = oplog.Queue()
        q.extend(ops)
        data = bytearray(bytes(q))
        for position, mask in flips:
            if data:
                data[position % len(data)] ^= mask
        datas.append(bytes(data))
    alone = [_decoded_alone(d) for d in datas]
    good = next((i for i, ops in enumerate(alone) if ops is None), len(datas))
    operations, decoded = queue.decode_all(datas, CATALOG)
    assert decoded == good
    assert operations == [op for ops in alone[:good] for op in ops or []]


def test_a_one_mib_frame_and_many_tiny_frames_decode() -> None:
    """A 1 MiB message and 10^5 zero-length frames are decoded, not rejected or crashed on."""
    big = oplog.Queue()
    big.add(TestUser(name="x" * (1 << 20)), "user", oplog.OpType.CREATE)
    (op,) = oplog.Queue(bytes(big), catalog=CATALOG)
    assert len(op.message.name) == 1 << 20  # type: ignore[attr-defined]
    tiny = _VALID * 100_000
    ops = list(oplog.Queue(tiny, catalog=CATALOG))
    assert len(ops) == 100_000
    assert ops[-1] == oplog.Operation(TestUser(), "user", oplog.OpType.UNSPECIFIED)
