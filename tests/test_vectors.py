"""The Go original's bytes: encoding matches them exactly and decoding reads them back."""

from __future__ import annotations

from typing import Any

import pytest

import oplog
from tests.golden import CATALOG, VERSIONS, message, queue_cases

CASES = queue_cases()


def _id(case: dict[str, Any]) -> str:
    return f"{case['format']}-{case['name']}"


def _operation(add: dict[str, Any]) -> oplog.Operation:
    return oplog.Operation(
        message(add["type_name"], add["fields"]),
        add["type_name"],
        oplog.OpType(add["op_type_value"]),
        tuple(add.get("with_field_mask_paths") or ()),
        tuple(add.get("with_set_to_null_paths") or ()),
    )


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_encoding_matches_go_byte_for_byte(case: dict[str, Any]) -> None:
    """Adding a case's operations in its own format gives the queue Go wrote."""
    q = oplog.Queue(version=VERSIONS[case["format"]], catalog=CATALOG)
    for add in case["adds"]:
        op = _operation(add)
        q.add(
            op.message, op.type_name, op.op_type, field_mask=op.field_mask, null_paths=op.null_paths
        )
    assert bytes(q).hex() == case["queue_hex"]
    assert len(bytes(q)) == case["queue_len"]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_batch_encoding_matches_go_byte_for_byte(case: dict[str, Any]) -> None:
    """One extend() of all of a case's operations gives the same bytes as adding one by one."""
    q = oplog.Queue(version=VERSIONS[case["format"]])
    q.extend([_operation(add) for add in case["adds"]])
    assert bytes(q).hex() == case["queue_hex"]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_decoding_go_queues_gives_the_recorded_removes(case: dict[str, Any]) -> None:
    """Removing from a Go queue returns what Go's remove returned, then None (Go: io.EOF)."""
    q = oplog.Queue(bytes.fromhex(case["queue_hex"]), catalog=CATALOG)
    for removed in case["removes"]:
        op = q.remove()
        assert op is not None
        assert op.type_name == removed["catalog_type_name"]
        assert op.message == message(removed["catalog_type_name"], removed["fields"])
        assert op.op_type == removed["op_type_value"]
        assert op.field_mask == tuple(removed["field_mask_paths"] or ())
        assert op.null_paths == tuple(removed.get("set_to_null_paths") or ())
        assert op.options is None
    assert q.remove() is None
    assert case["remove_ends_with_eof"]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_frames_sit_where_go_put_them(case: dict[str, Any]) -> None:
    """Each frame's length prefix and envelope are at the offsets Go recorded."""
    data = bytes.fromhex(case["queue_hex"])
    for frame in case["frames"]:
        start = frame["offset"]
        assert data[start : start + 4].hex() == frame["length_prefix_hex"]
        body = data[start + 4 : start + 4 + frame["length"]]
        assert body.hex() == frame["envelope_hex"]
