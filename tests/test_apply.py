"""Oplog.apply: the data change and its entry in one statement (sync and asyncio bodies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from tests.db import CATALOG, WRAPPER, count, rows
from tests.drivers import Driver

MakeDriver = Callable[..., Driver]
LOG = oplog.Oplog(WRAPPER, CATALOG)


def _create(msg: Any, type_name: str) -> oplog.Operation:
    return oplog.Operation(msg, type_name, oplog.OpType.CREATE)


def test_apply_changes_rows_and_logs_them_in_one_transaction(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    """Creates, updates (set and null), deletes (an update finding no row is logged too).
    The first apply of an aggregate creates its ticket and changes the rows once. Replaying
    the log reproduces the tables."""
    driver = make_driver()
    first = driver.apply(
        "fleet",
        [
            _create(TestUser(id=1, name="Ann", email="ann@example.com"), "user"),
            _create(TestCar(id=7, model="T", mpg=20), "car"),
            _create(TestRental(user_id=1, car_id=7), "rental"),
        ],
        {"actor": "test"},
    )
    driver.commit()
    second = driver.apply(
        "fleet",
        [
            oplog.Operation(TestUser(id=1, name="Anne"), "user", oplog.OpType.UPDATE, ("name",),
                            ("email",)),
            oplog.Operation(TestRental(user_id=1, car_id=7), "rental", oplog.OpType.DELETE),
            oplog.Operation(TestUser(id=99, name="ghost"), "user", oplog.OpType.UPDATE, ("name",)),
        ],
    )  # fmt: skip
    driver.commit()
    assert first.id is not None
    assert second.id is not None
    assert second.id > first.id
    assert rows(conn, "users") == [(1, "Anne", "", None, 0)]  # proto3 scalars as written
    assert rows(conn, "cars") == [(7, "T", 20)]
    assert count(conn, "rentals") == 0
    assert conn.execute("select version from oplog_ticket where name = 'fleet'").fetchone() == (3,)
    entries = list(LOG.read(conn))
    assert [e.metadata for e in entries] == [{"actor": ["test"]}, {}]
    assert [op.op_type for op in entries[1].unmarshal_data(CATALOG)] == [
        oplog.OpType.UPDATE, oplog.OpType.DELETE, oplog.OpType.UPDATE,
    ]  # fmt: skip
    assert LOG.replay(conn, "_replay") == 2
    for table in ("users", "cars", "rentals"):
        assert rows(conn, table) == rows(conn, table + "_replay")


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        ([_create(TestUser(name="no key"), "user")], "primary key set"),
        ([oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE_ITEMS)], "CREATE_ITEMS"),
        (
            [
                _create(TestUser(id=1, name="a"), "user"),
                oplog.Operation(TestUser(id=1, name="b"), "user", oplog.OpType.UPDATE, ("name",)),
            ],
            "twice",
        ),
        (
            [
                oplog.Operation(
                    TestUser(id=1), "user", oplog.OpType.CREATE, options=oplog.OperationOptions()
                )
            ],
            "options",
        ),
        ([oplog.Operation(TestUser(id=1), "user", oplog.OpType.UPDATE)], "paths"),
    ],
    ids=["unset-key", "items", "same-row-twice", "options", "update-without-paths"],
)
def test_apply_rejects_what_it_cannot_do_and_writes_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], ops: list[oplog.Operation], match: str
) -> None:
    driver = make_driver()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        driver.apply("fleet", [_create(TestCar(id=1), "car"), *ops])
    driver.commit()
    assert count(conn, "cars") == 0
    assert count(conn, "users") == 0
    assert count(conn, "oplog_entry") == 0


def test_a_failing_change_writes_no_entry_and_redeems_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    driver = make_driver()
    driver.apply("fleet", [_create(TestUser(id=1, name="Ann"), "user")])
    driver.commit()
    with pytest.raises(psycopg.errors.UniqueViolation):
        driver.apply(
            "fleet",
            [_create(TestCar(id=2, model="new"), "car"), _create(TestUser(id=1), "user")],
        )
    driver.rollback()
    assert count(conn, "cars") == 0
    assert count(conn, "oplog_entry") == 1
    assert conn.execute("select version from oplog_ticket where name = 'fleet'").fetchone() == (2,)


def test_in_autocommit_an_apply_is_one_committed_transaction(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn, autocommit=True) as auto:
        entry = LOG.apply(auto, "fleet", [_create(TestUser(id=5, name="Eve"), "user")])
    assert rows(conn, "users") == [(5, "Eve", "", "", 0)]
    assert [e.id for e in LOG.read(conn)] == [entry.id]
