"""Messages to rows and the statements that write them, composed without I/O
(oplog/mapping.py); tests/test_writer.py runs them."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

import oplog
from oplog.mapping import Statements, as_text, to_db
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
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
