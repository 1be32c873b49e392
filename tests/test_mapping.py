"""Messages to rows and the statements that write them, composed without I/O
(oplog/mapping.py); tests/test_writer.py runs them."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

import oplog
from oplog import _core, pgarray
from oplog.mapping import TEXT_INTEGER, TEXT_STRING, Statements, as_text, to_db
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from tests.db import CATALOG
from tests.strategies import documents, users


@pytest.fixture
def statements(conn: psycopg.Connection[Any]) -> Statements:
    """Statements composed for the test connection's encoding."""
    return Statements(conn, CATALOG)


def test_mask_paths_match_columns_in_every_spelling(statements: Statements) -> None:
    """A field-mask path names a column by its field name, case-insensitively, or in the Go
    spelling; anything else is refused."""
    m = statements.map(TestUser(), None)
    for path in ("phone_number", "PhoneNumber", "PHONE_NUMBER", "phoneNumber"):
        assert m.resolve(path).name == "phone_number"
    with pytest.raises(oplog.InvalidParameterError, match="names no column"):
        m.resolve("phone")
    assert [c.name for c in m.primary_key] == ["id"]
    assert statements.map(TestUser(), "other").table.name == "other"


def test_an_update_sets_the_mask_nulls_the_paths_and_matches_the_key(
    statements: Statements,
) -> None:
    """The update statement sets the mask's columns from the message and the null paths to
    NULL, by the key; its parameters are the set values, then the key."""
    query, params = statements.update(
        TestUser(id=7, name="n", email="e"), ["name"], ["email"], None, None
    )
    assert query == b'update "users" set "name" = %s, "email" = null where "id" = %s'
    assert params == ["n", 7]


@pytest.mark.parametrize(
    ("op", "match"),
    [
        (oplog.Operation(TestUser(), "user", oplog.OpType.CREATE), "primary key set"),
        (
            oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE_ITEMS),
            "not CREATE_ITEMS",
        ),
        (
            oplog.Operation(
                TestUser(id=1), "user", oplog.OpType.CREATE, options=oplog.OperationOptions()
            ),
            "options",
        ),
    ],
)
def test_a_ticket_gated_statement_refuses_what_apply_cannot_do(
    statements: Statements, op: oplog.Operation, match: str
) -> None:
    """apply's statements need the key set, one of CREATE/UPDATE/DELETE, and no options."""
    with pytest.raises(oplog.InvalidParameterError, match=match):
        statements.ticket_gated(op)


def test_a_ticket_gated_statement_changes_nothing_without_the_ticket(
    statements: Statements,
) -> None:
    """apply's insert selects from the ticket CTE, and its update and delete require it, so
    no data changes unless the redeem returned a row; the identity names the row."""
    insert, params, identity = statements.ticket_gated(
        oplog.Operation(TestCar(id=3, model="T"), "car", oplog.OpType.CREATE)
    )
    assert insert.endswith(b"from ticket")
    assert params == [3, "T", 0]
    assert identity == ("cars", 3)
    delete, _, _ = statements.ticket_gated(
        oplog.Operation(TestCar(id=3), "car", oplog.OpType.DELETE)
    )
    assert delete.endswith(b"and exists (select from ticket)")


def test_items_with_generated_and_given_keys_are_not_one_statement(
    statements: Statements,
) -> None:
    """Items whose keys are all given (or all generated) share one insert; a mix does not."""
    given = statements.insert_items([TestCar(id=1), TestCar(id=2)], None, False)
    assert given is not None
    assert len(given[2]) == 2
    assert statements.insert_items([TestCar(id=1), TestCar()], None, False) is None
    with pytest.raises(oplog.InvalidParameterError, match="one type"):
        statements.insert_items([TestCar(id=1), TestUser(id=1)], None, False)


def test_text_with_a_nul_character_is_refused_before_it_is_sent() -> None:
    """PostgreSQL text cannot hold NUL: the value is refused while mapping, naming the field."""
    m = Statements(None, CATALOG).map(TestUser(), None)  # type: ignore[arg-type]
    with pytest.raises(oplog.InvalidParameterError, match=r"TestUser\.name contains a NUL"):
        to_db(TestUser(name="a\x00b"), m.by_name["name"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(documents(), users))
def test_a_columns_text_converter_gives_what_the_general_path_gives(message: Message) -> None:
    """Each column's text converter (the set-based replay's fast path) gives exactly what
    as_text(to_db(...)) gives, for every kind of column, set or unset, and refuses what it
    refuses (text with NUL) with the same error."""
    mapping = Statements(None, CATALOG).map(message, None)  # type: ignore[arg-type]
    for column in mapping.columns:
        try:
            expected = as_text(to_db(message, column))
        except oplog.InvalidParameterError as exc:
            with pytest.raises(oplog.InvalidParameterError, match=re.escape(str(exc))):
                mapping.text_of[column.name](message)
            continue
        assert mapping.text_of[column.name](message) == expected


def _columns_one_by_one(mapping: Any, messages: list[Message]) -> list[bytes] | str:
    """Each column's text[] packed from the converters one message at a time, or the error
    the first refused value raises."""
    try:
        return [
            pgarray.TextArray.of([mapping.text_of[c.name](msg) for msg in messages])
            for c in mapping.columns
        ]
    except oplog.InvalidParameterError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(documents(), max_size=12), st.lists(users, max_size=12)))
def test_the_rust_core_packs_columns_as_the_converters_do(messages: list[Message]) -> None:
    """The column arrays the Rust core packs for a set-based statement are byte for byte the
    converters' values packed one by one, for every kind of column (str, integer, bool, bytes,
    and those it hands to the converter), and a refused value (text with NUL) raises the same
    error."""
    if not messages:
        messages = [TestUser()]
    mapping = Statements(None, CATALOG).map(messages[0], None)  # type: ignore[arg-type]
    expected = _columns_one_by_one(mapping, messages)
    specs = [mapping.text_specs[c.name] for c in mapping.columns]
    if isinstance(expected, str):
        with pytest.raises(oplog.InvalidParameterError, match=re.escape(expected)):
            _core.pack_text_columns(messages, specs)
    else:
        assert _core.pack_text_columns(messages, specs) == expected


_rentals = st.builds(
    TestRental, user_id=st.integers(0, 2**32 - 1), car_id=st.sampled_from([0, 1, 2**32 - 1])
)


@given(st.one_of(documents(), users, _rentals))
def test_the_given_key_is_the_key_text_unless_it_is_unset(message: Message) -> None:
    """given_key (one call per operation of a set-based replay; a fast one for a single
    integer key) is None exactly when the key is unset (every key column), else the key's
    text, as key_unset and key_text say."""
    mapping = Statements(None, CATALOG).map(message, None)  # type: ignore[arg-type]
    expected = None if mapping.key_unset(message) else mapping.key_text(message)
    assert mapping.given_key(message) == expected


def test_packing_hands_the_converter_what_its_kind_does_not_expect() -> None:
    """Values a fast kind cannot format (an int beyond 64 bits, a str where an int was
    expected, a str with NUL) are the converter's; 64-bit unsigned values and NULLs pack."""
    rows = [SimpleNamespace(v=v) for v in (2**64 - 1, -(2**63), 2**70, "x", True, None)]

    def text(row: Any) -> str | None:
        return None if row.v is None else f"<{row.v}>"

    (packed,) = _core.pack_text_columns(rows, [("v", TEXT_INTEGER, text)])
    expected = [str(2**64 - 1), str(-(2**63)), f"<{2**70}>", "<x>", "<True>", None]
    assert packed == pgarray.TextArray.of(expected)
    strings = [SimpleNamespace(v=v) for v in ("é", "a\x00b", b"raw")]
    (packed,) = _core.pack_text_columns(strings, [("v", TEXT_STRING, text)])
    assert packed == pgarray.TextArray.of(["é", "<a\x00b>", "<b'raw'>"])
    with pytest.raises(oplog.InvalidParameterError, match="str or None, not int"):
        _core.pack_text_columns(strings, [("v", 0, lambda row: 5)])  # type: ignore[list-item, return-value]
