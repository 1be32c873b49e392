"""Queue semantics of the Go original, and this library's stricter checks."""

from __future__ import annotations

import time
from typing import Any

import pytest
from google.protobuf.wrappers_pb2 import UInt32Value

import oplog
from oplog.proto.any_operation_pb2 import WithOnConflict
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from tests.golden import CATALOG


def _user(**fields: Any) -> TestUser:
    return TestUser(id=1, name="Alice", **fields)


def test_operations_come_out_in_the_order_they_went_in() -> None:
    """The queue is FIFO across add, extend and several batches."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(_user(), "user", oplog.OpType.CREATE)
    q.extend(
        [
            oplog.Operation(TestCar(id=2, model="T"), "car", oplog.OpType.CREATE),
            oplog.Operation(TestRental(user_id=1, car_id=2), "rental", oplog.OpType.CREATE),
        ]
    )
    q.add(_user(), "user", oplog.OpType.DELETE)
    types = [(op.type_name, op.op_type) for op in oplog.Queue(bytes(q), catalog=CATALOG)]
    assert types == [
        ("user", oplog.OpType.CREATE),
        ("car", oplog.OpType.CREATE),
        ("rental", oplog.OpType.CREATE),
        ("user", oplog.OpType.DELETE),
    ]


def test_remove_on_an_empty_queue_returns_none() -> None:
    """remove() on an empty queue (Go: io.EOF) returns None, repeatedly."""
    q = oplog.Queue(catalog=CATALOG)
    assert q.remove() is None
    assert q.remove() is None
    assert bytes(q) == b""


def test_remove_consumes_and_add_appends_on_the_same_queue() -> None:
    """A queue is a buffer: removing reads from the front while adding writes at the back."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(_user(), "user", oplog.OpType.CREATE)
    q.add(TestCar(id=3), "car", oplog.OpType.DELETE)
    first = q.remove()
    assert first is not None
    assert first.type_name == "user"
    q.add(TestRental(car_id=3), "rental", oplog.OpType.DELETE)
    assert [op.type_name for op in q] == ["car", "rental"]
    assert q.remove() is None
    assert q.nbytes == 0


def test_iteration_consumes_the_queue() -> None:
    """Iterating removes every operation, so a second iteration yields nothing."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(_user(), "user", oplog.OpType.CREATE)
    assert len(list(q)) == 1
    assert list(q) == []


def test_update_round_trips_masks_null_paths_and_options() -> None:
    """An UPDATE keeps its field mask, null paths and options (v2) through encode and decode."""
    options = oplog.OperationOptions(
        with_version=UInt32Value(value=7),
        with_where_clause="name = ?",
        with_on_conflict=WithOnConflict(constraint="users_pkey", do_nothing=True),
    )
    q = oplog.Queue(catalog=CATALOG)
    q.add(
        _user(email="a@example.com"),
        "user",
        oplog.OpType.UPDATE,
        field_mask=["Name", "email"],
        null_paths=["PhoneNumber"],
        options=options,
    )
    op = oplog.Queue(bytes(q), catalog=CATALOG).remove()
    assert op == oplog.Operation(
        _user(email="a@example.com"),
        "user",
        oplog.OpType.UPDATE,
        ("Name", "email"),
        ("PhoneNumber",),
        options,
    )
    assert isinstance(op.op_type, oplog.OpType)


def test_empty_options_are_kept_as_given() -> None:
    """Options that serialize to nothing are still written (32 00) and read back as options."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(_user(), "user", oplog.OpType.CREATE, options=oplog.OperationOptions())
    data = bytes(q)
    assert data.endswith(bytes.fromhex("22002a003200"))
    op = oplog.Queue(data, catalog=CATALOG).remove()
    assert op is not None
    assert op.options == oplog.OperationOptions()


def test_a_message_with_no_fields_set_decodes_to_the_default_message() -> None:
    """A frame without a value (Go returns a nil message) decodes to the empty message."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(TestUser(), "user", oplog.OpType.DELETE)
    assert bytes(q).hex() == "0c0000000a047573657218032200" + "2a00"
    op = oplog.Queue(bytes(q), catalog=CATALOG).remove()
    assert op == oplog.Operation(TestUser(), "user", oplog.OpType.DELETE)


def test_decoding_without_a_catalog_is_an_error() -> None:
    """remove() and iteration need a catalog; without one they raise InvalidParameterError."""
    q = oplog.Queue()
    q.add(_user(), "user", oplog.OpType.CREATE)
    with pytest.raises(oplog.InvalidParameterError, match="catalog"):
        q.remove()
    with pytest.raises(oplog.InvalidParameterError, match="catalog"):
        iter(q)
    assert q.nbytes > 0


def test_unknown_type_name_raises_unknown_type_error() -> None:
    """Decoding a type name the catalog lacks raises UnknownTypeError naming it."""
    q = oplog.Queue()
    q.add(_user(), "person", oplog.OpType.CREATE)
    data = bytes(q)
    with pytest.raises(oplog.UnknownTypeError, match="'person'"):
        oplog.Queue(data, catalog=CATALOG).remove()
    reader = oplog.Queue(data, catalog=CATALOG)
    with pytest.raises(oplog.UnknownTypeError):
        list(reader)
    assert reader.nbytes == len(data), "nothing is consumed by a failed read"


@pytest.mark.parametrize(
    ("field_mask", "null_paths", "match"),
    [
        ((), (), "neither|field-mask paths or set-to-null"),
        (("Name",), ("name",), "both"),
        (("PhoneNumber", "email"), ("EMAIL",), "both"),
    ],
)
def test_invalid_updates_are_rejected_and_nothing_is_added(
    field_mask: tuple[str, ...], null_paths: tuple[str, ...], match: str
) -> None:
    """UPDATE with no paths, or with a path in both lists (any case), adds nothing."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(_user(), "user", oplog.OpType.CREATE)
    before = bytes(q)
    with pytest.raises(oplog.InvalidParameterError, match=match):
        q.add(_user(), "user", oplog.OpType.UPDATE, field_mask=field_mask, null_paths=null_paths)
    assert bytes(q) == before


def test_an_invalid_operation_in_a_batch_adds_none_of_the_batch() -> None:
    """extend() validates the whole batch first: one bad operation adds nothing."""
    q = oplog.Queue()
    good = oplog.Operation(_user(), "user", oplog.OpType.CREATE)
    bad = oplog.Operation(_user(), "user", oplog.OpType.UPDATE)
    with pytest.raises(oplog.InvalidParameterError, match="operation 2"):
        q.extend([good, good, bad])
    assert bytes(q) == b""


# Built through an untyped alias: these operations are wrong on purpose.
_op: Any = oplog.Operation


@pytest.mark.parametrize(
    ("operation", "match"),
    [
        (_op("not a message", "user", oplog.OpType.CREATE), "protobuf message, not str"),
        (_op(None, "user", oplog.OpType.CREATE), "protobuf message, not NoneType"),
        (_op(_user(), "", oplog.OpType.CREATE), "missing type name"),
        (_op(_user(), b"user", oplog.OpType.CREATE), "type name must be str"),
        (_op(_user(), "user", oplog.OpType.UNSPECIFIED), "invalid operation type 0"),
        (_op(_user(), "user", 9), "invalid operation type 9"),
        (_op(_user(), "user", -1), "OpType"),
        (_op(_user(), "user", oplog.OpType.UPDATE, "name"), "sequence of str"),
        (_op(_user(), "user", oplog.OpType.UPDATE, (1,)), "sequence of str"),
        (_op(_user(), "user", oplog.OpType.UPDATE, ["name"], [b"x"]), "sequence of str"),
        (_op(_user(), "user", oplog.OpType.CREATE, (), (), "x"), "options must be"),
        (("too", "short"), "expected an oplog.Operation, not tuple"),
    ],
)
def test_malformed_operations_raise_invalid_parameter(operation: Any, match: str) -> None:
    """Each kind of malformed operation raises InvalidParameterError with a clear reason."""
    q = oplog.Queue()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        q.extend([operation])
    assert bytes(q) == b""


def test_a_catalog_queue_rejects_messages_of_the_wrong_class() -> None:
    """With a catalog, a message must be of the class its type name is registered for."""
    q = oplog.Queue(catalog=CATALOG)
    with pytest.raises(oplog.InvalidParameterError, match="registered for TestUser, not TestCar"):
        q.add(TestCar(id=1), "user", oplog.OpType.CREATE)
    with pytest.raises(oplog.UnknownTypeError, match="'truck'"):
        q.add(TestCar(id=1), "truck", oplog.OpType.CREATE)
    assert bytes(q) == b""


def test_v1_queues_refuse_what_v1_cannot_carry() -> None:
    """A v1 queue rejects null paths and options instead of silently dropping them, and
    writes mask paths in the Go field spelling be9f25cce1 resolves ("name" as "Name")."""
    q = oplog.Queue(version="v1")
    with pytest.raises(oplog.InvalidParameterError, match="v1"):
        q.add(_user(), "user", oplog.OpType.UPDATE, field_mask=["name"], null_paths=["email"])
    with pytest.raises(oplog.InvalidParameterError, match="v1"):
        q.add(_user(), "user", oplog.OpType.CREATE, options=oplog.OperationOptions())
    q.add(_user(), "user", oplog.OpType.UPDATE, field_mask=["name"])
    assert bytes(q).endswith(b"\x22\x06\x0a\x04Name")


def test_unknown_versions_are_rejected() -> None:
    """Only the v1 and v2 formats exist."""
    with pytest.raises(oplog.InvalidParameterError, match="v3"):
        oplog.Queue(version="v3")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hex_data", "offset", "match"),
    [
        ("01", 0, "truncated frame length"),
        ("0c000000" + "0a0475736572" + "1801" + "2200" + "2a00" + "ffff", 16, "truncated frame"),
        ("ffffffff0a00", 0, "claims 4294967295 bytes"),
        ("03000000" + "0a0561", 5, "needs 5 bytes"),
        ("02000000" + "1806", 5, "unknown operation type 6"),
        ("04000000" + "0a017518", 8, "malformed varint"),
        ("06000000" + "0a0175180200", 9, "invalid field tag"),
        ("04000000" + "0a0261ff", 7, "not valid UTF-8"),
        ("02000000" + "0801", 4, "field 1 has wire type 0"),
    ],
)
def test_malformed_queues_raise_decode_error_with_the_offset(
    hex_data: str, offset: int, match: str
) -> None:
    """Each kind of malformed queue raises DecodeError carrying the byte offset of the fault."""
    with pytest.raises(oplog.DecodeError, match=match) as info:
        list(oplog.Queue(bytes.fromhex(hex_data), catalog=CATALOG))
    assert info.value.offset == offset


def test_a_bad_frame_after_good_ones_leaves_remove_at_the_bad_frame() -> None:
    """remove() returns the good frames, then raises at the bad one without consuming it."""
    q = oplog.Queue(catalog=CATALOG)
    q.add(_user(), "user", oplog.OpType.CREATE)
    data = bytes(q) + b"\x05\x00"
    reader = oplog.Queue(data, catalog=CATALOG)
    assert reader.remove() is not None
    with pytest.raises(oplog.DecodeError) as info:
        reader.remove()
    assert info.value.offset == len(data) - 2
    assert reader.nbytes == 2


def test_a_value_that_does_not_parse_as_its_type_is_a_decode_error() -> None:
    """An envelope whose value is not a valid message of its type raises DecodeError."""
    value = b"\x0a\xff"  # field 1 length-delimited, but TestUser.id is a varint; truncated
    data = (6 + len(value) + 2).to_bytes(4, "little") + b"\x0a\x04user\x12\x02" + value
    with pytest.raises(oplog.DecodeError, match="'user' message does not parse") as info:
        list(oplog.Queue(data, catalog=CATALOG))
    assert info.value.offset == 0


def test_queue_accepts_bytearray_and_memoryview_input() -> None:
    """Input data may be any bytes-like object; the queue keeps its own copy."""
    q = oplog.Queue()
    q.add(_user(), "user", oplog.OpType.CREATE)
    buf = bytearray(bytes(q))
    reader = oplog.Queue(memoryview(buf), catalog=CATALOG)
    buf[:] = b"\x00" * len(buf)
    assert reader.remove() == oplog.Operation(_user(), "user", oplog.OpType.CREATE)


def test_repr_names_the_version_and_size() -> None:
    """repr() says the format and how many bytes are queued."""
    q = oplog.Queue(version="v1")
    q.add(_user(), "user", oplog.OpType.CREATE)
    assert repr(q) == f"Queue(version='v1', nbytes={len(bytes(q))})"


@pytest.mark.parametrize(
    ("operation", "match"),
    [
        (oplog.Operation(TestUser(), "u\udc80", oplog.OpType.CREATE), "type name is not valid"),
        (
            oplog.Operation(TestUser(), "user", oplog.OpType.UPDATE, ("n\ud800",)),
            "field_mask is not valid UTF-8",
        ),
        (
            oplog.Operation(TestUser(), "user", oplog.OpType.UPDATE, ("a",), ("\udfff",)),
            "null_paths is not valid UTF-8",
        ),
        (
            oplog.Operation(TestUser(), "user", oplog.OpType.CREATE, options=TestUser()),  # type: ignore[arg-type]
            "options must be an oplog.OperationOptions, not TestUser",
        ),
    ],
    ids=["type-name", "field-mask", "null-paths", "foreign-options"],
)
def test_unstorable_strings_and_foreign_options_are_invalid_parameters(
    operation: oplog.Operation, match: str
) -> None:
    """A lone surrogate in a type name or path, or options that are another message, raise
    InvalidParameterError (not UnicodeEncodeError, not silently encoded)."""
    queue = oplog.Queue()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        queue.extend([operation])
    assert bytes(queue) == b""


def _repeated_options_queue(repeats: int) -> bytes:
    """One CREATE whose envelope repeats field 6 (options) `repeats` times, each carrying
    with_skip_vet_for_write = true (protobuf merges repeated message fields)."""
    env = b"\x0a\x04user\x18\x01\x22\x00\x2a\x00" + b"\x32\x02\x10\x01" * repeats
    return len(env).to_bytes(4, "little") + env


def _best_decode_seconds(data: bytes, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        (operation,) = oplog.Queue(data, catalog=CATALOG)
        best = min(best, time.perf_counter() - start)
    assert operation.options is not None
    assert operation.options.with_skip_vet_for_write
    return best


def test_repeated_options_decode_in_linear_time() -> None:
    """A queue that repeats the options field decodes in time linear in its size (it was
    concatenated once per occurrence: a 1.6 MB queue took 12 s). The ladder doubles the size
    three times; quadratic decoding grows 64x over it, linear 8x; the bound is 25x."""
    sizes = [50_000, 100_000, 200_000, 400_000]  # repeats; the last is 1.6 MB
    times = [_best_decode_seconds(_repeated_options_queue(n)) for n in sizes]
    assert len(_repeated_options_queue(sizes[-1])) > 1_600_000
    assert times[-1] / times[0] < 25, times


def test_a_message_class_instead_of_an_instance_is_an_invalid_parameter() -> None:
    """Queue.add and extend name a message class passed where an instance belongs (it used to
    raise TypeError from inside SerializeToString)."""
    queue = oplog.Queue()
    with pytest.raises(oplog.InvalidParameterError, match=r"the class .*TestUser"):
        queue.add(TestUser, "user", oplog.OpType.CREATE)  # type: ignore[arg-type]
    with pytest.raises(oplog.InvalidParameterError, match=r"operation 1: .*the class"):
        queue.extend(
            [
                oplog.Operation(TestUser(), "user", oplog.OpType.CREATE),
                oplog.Operation(TestUser, "user", oplog.OpType.CREATE),  # type: ignore[arg-type]
            ]
        )
    assert queue.nbytes == 0
