"""The writer: messages to rows and back, masks, NULLs, types, and hostile identifiers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import StringValue, UInt32Value

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from oplog.proto.replay_test_pb2 import TestDocument
from tests.db import CATALOG, rows

UTC = dt.timezone.utc


@pytest.fixture
def w(conn: psycopg.Connection[Any]) -> oplog.Writer:
    """A writer over the test tables."""
    return oplog.Writer(conn, CATALOG)


def test_create_generates_the_key_and_sets_it_back(w: oplog.Writer) -> None:
    """A zero id is left to the identity column and read back onto the message."""
    alice = TestUser(name="Alice", email="a@example.com")
    bob = TestUser(name="Bob")
    w.create(alice)
    w.create(bob)
    assert (alice.id, bob.id) == (1, 2)
    assert rows(w.conn, "users") == [
        (1, "Alice", "", "a@example.com", 0),
        (2, "Bob", "", "", 0),
    ]


def test_create_with_a_given_key_and_a_composite_key(w: oplog.Writer) -> None:
    """A set key is inserted as given; composite keys work."""
    w.create(TestCar(id=42, model="T", mpg=20))
    w.create(TestRental(user_id=1, car_id=42))
    assert rows(w.conn, "cars") == [(42, "T", 20)]
    assert rows(w.conn, "rentals") == [(1, 42)]


def test_update_with_field_mask_and_null_paths_in_every_spelling(w: oplog.Writer) -> None:
    """Mask paths match proto names case-insensitively and the Go spelling; null paths NULL."""
    user = TestUser(name="Alice", phone_number="555", email="a@example.com")
    w.create(user)
    change = TestUser(id=user.id, name="Alicia", phone_number="556", email="ignored")
    assert w.update(change, ["NAME", "PhoneNumber"], null_paths=["Email"]) == 1
    assert rows(w.conn, "users") == [(1, "Alicia", "556", None, 0)]


def test_update_and_delete_report_rows_affected(w: oplog.Writer) -> None:
    """update/delete return 0 for a missing row and 1 for a present one."""
    assert w.update(TestUser(id=9, name="x"), ["name"]) == 0
    assert w.delete(TestUser(id=9)) == 0
    user = TestUser(name="x")
    w.create(user)
    assert w.delete(user) == 1
    assert rows(w.conn, "users") == []


def test_with_version_option_guards_updates_and_deletes(w: oplog.Writer) -> None:
    """OperationOptions.with_version adds a version check to the WHERE clause."""
    user = TestUser(name="v", version=3)
    w.create(user)
    stale = oplog.OperationOptions(with_version=UInt32Value(value=2))
    fresh = oplog.OperationOptions(with_version=UInt32Value(value=3))
    assert w.update(TestUser(id=user.id, name="w"), ["name"], options=stale) == 0
    assert w.update(TestUser(id=user.id, name="w"), ["name"], options=fresh) == 1
    assert w.delete(user, options=stale) == 0
    assert w.delete(user, options=fresh) == 1


def test_on_conflict_options_on_create(w: oplog.Writer) -> None:
    """with_on_conflict do_nothing leaves the row; update_all overwrites it."""
    from oplog.proto.any_operation_pb2 import WithOnConflict

    w.create(TestCar(id=1, model="A", mpg=1))
    nothing = oplog.OperationOptions(with_on_conflict=WithOnConflict(do_nothing=True))
    w.create(TestCar(id=1, model="B", mpg=2), options=nothing)
    assert rows(w.conn, "cars") == [(1, "A", 1)]
    update_all = oplog.OperationOptions(with_on_conflict=WithOnConflict(update_all=True))
    w.create(TestCar(id=1, model="C", mpg=3), options=update_all)
    assert rows(w.conn, "cars") == [(1, "C", 3)]


def test_every_mapped_type_round_trips_including_nulls(w: oplog.Writer) -> None:
    """bytes, unicode, timestamps, wrappers, optional scalars and NULLs survive a round trip."""
    stamp = Timestamp()
    stamp.FromDatetime(dt.datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC))
    full = TestDocument(
        title="héllo 🌍 \"quoted\" 'x'; drop table users",
        body=b"\x00\xff\x00binary",
        updated=stamp,
        count=-5,
        note=StringValue(value="ñote"),
        flag=True,
        score=1.5,
    )
    empty = TestDocument()
    w.create(full)
    w.create(empty)
    got = rows(w.conn, "documents")
    assert got[0] == (
        1,
        "héllo 🌍 \"quoted\" 'x'; drop table users",
        b"\x00\xff\x00binary",
        dt.datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC),
        -5,
        "ñote",
        True,
        1.5,
    )
    assert got[1] == (2, None, b"", None, None, None, False, 0.0)
    assert empty == TestDocument(id=2)


def test_nul_in_text_is_a_clear_error(w: oplog.Writer) -> None:
    """PostgreSQL text cannot hold NUL; the writer says so instead of failing obscurely."""
    with pytest.raises(oplog.InvalidParameterError, match="NUL"):
        w.create(TestUser(name="a\x00b"))


def test_create_items_and_delete_items_batch(w: oplog.Writer) -> None:
    """create_items inserts in order and sets keys back; delete_items deletes them all."""
    users = [TestUser(name=f"u{i}") for i in range(5)]
    w.create_items(users)
    assert [u.id for u in users] == [1, 2, 3, 4, 5]
    mixed = [TestCar(id=10, model="a"), TestCar(model="b")]
    w.create_items(mixed)
    assert [c.id for c in mixed] == [10, 1]
    assert w.delete_items(users[:3]) == 3
    assert [r[0] for r in rows(w.conn, "users")] == [4, 5]
    with pytest.raises(oplog.InvalidParameterError, match="one type"):
        w.create_items([TestUser(), TestCar()])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda w: w.update(TestUser(id=1), []), "needs field-mask paths"),
        (lambda w: w.update(TestUser(id=1), ["nickname"]), "names no column"),
        (lambda w: w.update(TestUser(id=1), ["table"]), "names no column"),
        (lambda w: w.update(TestUser(id=1), ["name"], ["Name"]), "both"),
        (lambda w: w.update(TestUser(id=1), ["id"]), "primary key"),
        (lambda w: w.update(TestUser(), ["name"]), "not set"),
        (lambda w: w.delete(TestUser()), "not set"),
        (lambda w: w.update(TestUser(id=1), "name"), "sequences"),
        (lambda w: w.create("user"), "protobuf message"),
        (lambda w: w.create(TestUser(), table="x" * 64), "63 bytes"),
    ],
)
def test_invalid_writes_raise_invalid_parameter(w: oplog.Writer, call: Any, match: str) -> None:
    """Bad arguments raise InvalidParameterError before any SQL runs."""
    with pytest.raises(oplog.InvalidParameterError, match=match):
        call(w)
    assert rows(w.conn, "users") == []


def test_unknown_message_types_raise_unknown_type_error(w: oplog.Writer) -> None:
    """A message class that is not in the catalog cannot be written."""
    with pytest.raises(oplog.UnknownTypeError):
        w.create(StringValue(value="x"))


HOSTILE = [
    'users"; drop table users; --',
    "with space",
    "semi;colon",
    "quote'single",
    'quote"double',
    "ünïcödé_tåble",
    "t" * 63,
    "UPPER",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_table_names_are_quoted_never_executed(w: oplog.Writer, name: str) -> None:
    """Table names with quotes, semicolons, spaces, unicode or 63 bytes are used as names."""
    assert not w.has_table(name)
    w.create_table_like("users", name)
    assert w.has_table(name)
    user = TestUser(name="h")
    w.create(user, table=name)
    assert w.update(TestUser(id=user.id, name="i"), ["name"], table=name) == 1
    assert w.delete(user, table=name) == 1
    w.drop_table_if_exists(name)
    assert not w.has_table(name)
    assert w.has_table("users"), "nothing but the named table was touched"


@pytest.mark.parametrize("name", ["", "x" * 64, "é" * 32, "nul\x00"])
def test_impossible_table_names_are_rejected(w: oplog.Writer, name: str) -> None:
    """Names PostgreSQL would truncate or cannot hold raise InvalidParameterError."""
    for call in (w.has_table, w.drop_table_if_exists, lambda n: w.create_table_like("users", n)):
        with pytest.raises(oplog.InvalidParameterError):
            call(name)


def test_table_checks_follow_the_search_path(w: oplog.Writer) -> None:
    """has_table sees tables through the search_path only; create_table_like creates the copy
    in the original's schema."""
    conn = w.conn
    conn.execute("create schema other")
    conn.execute("create table other.hidden (id bigint primary key)")
    assert not w.has_table("hidden")
    conn.execute("set search_path to public, other")
    assert w.has_table("hidden")
    w.create_table_like("hidden", "hidden_copy")
    row = conn.execute(
        "select schemaname from pg_tables where tablename = 'hidden_copy'"
    ).fetchone()
    assert row == ("other",)
    with pytest.raises(oplog.InvalidParameterError, match="no table"):
        w.create_table_like("absent", "absent_copy")
