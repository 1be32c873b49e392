"""Set-based replay planned (oplog/replay_plan.py): where runs begin and end, and how their
statements are sent. What the plan does to the tables is tests/test_replay.py's."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import oplog
from oplog.mapping import Statements
from oplog.operation import OperationOptions
from oplog.proto.any_operation_pb2 import WithOnConflict
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from oplog.replay_plan import Plan, ReplayCache, Run, TableTraits
from tests.db import CATALOG

CREATE, UPDATE, DELETE = oplog.OpType.CREATE, oplog.OpType.UPDATE, oplog.OpType.DELETE


_TYPES = {
    "users_r": {"id": "bigint", "version": "bigint"}
    | dict.fromkeys(("name", "phone_number", "email"), "text"),
    "cars_r": {"id": "bigint", "model": "text", "mpg": "integer"},
}


def _plan(
    conn: psycopg.Connection[Any], ops: list[oplog.Operation], commuting: bool = False
) -> Plan:
    """`ops` planned and arranged, as if the target tables' operations on different rows
    commuted (`commuting`) or not."""
    plan = Plan(ReplayCache(Statements(conn, CATALOG), "_r"))
    plan.add(ops)
    for target in plan.targets:
        key = ("id",) if commuting else None
        plan.cache.tables[target] = TableTraits(_TYPES[target], key, frozenset())
    plan.arrange()
    return plan


def _shape(plan: Plan) -> list[tuple[str, int]]:
    """Each step as (kind, operations): a run's kind, or "one by one"."""
    return [
        (step.kind, len(step.messages)) if isinstance(step, Run) else ("one by one", len(step))
        for step in plan.steps
    ]


def _user(i: int, op: oplog.OpType = CREATE, *mask: str) -> oplog.Operation:
    return oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", op, mask)


def test_a_page_of_creates_of_one_table_is_one_statement(conn: psycopg.Connection[Any]) -> None:
    """500 creates of one table with their keys given are one insert."""
    plan = _plan(conn, [_user(i) for i in range(1, 501)])
    assert _shape(plan) == [("insert", 500)]
    assert plan.count == 500
    assert set(plan.targets) == {"users_r"}


def test_runs_end_where_batching_could_change_the_result(conn: psycopg.Connection[Any]) -> None:
    """A run ends at another kind, table or shape (another mask), at a row the run already
    touched, and at an operation with options (applied one by one); operations are never
    reordered."""
    keep = OperationOptions(with_on_conflict=WithOnConflict(do_nothing=True))
    ops = [
        _user(1),
        _user(2),
        _user(1, UPDATE, "name"),
        _user(2, UPDATE, "name"),
        _user(2, UPDATE, "name"),  # the row again: a new run
        _user(3, UPDATE, "email"),  # another mask: a new run
        oplog.Operation(TestCar(id=1, model="m"), "car", CREATE),  # another table
        oplog.Operation(TestUser(id=1), "user", CREATE, options=keep),
        oplog.Operation(TestUser(id=5), "user", CREATE, options=keep),
        _user(1, DELETE),
        _user(2, DELETE),
    ]
    assert _shape(_plan(conn, ops)) == [
        ("insert", 2),
        ("update", 2),
        ("update", 1),
        ("update", 1),
        ("insert", 1),
        ("one by one", 2),
        ("delete", 2),
    ]


def test_keys_left_to_the_database_and_given_keys_are_separate_runs(
    conn: psycopg.Connection[Any],
) -> None:
    """Creates whose key the database generates never share a statement with creates that
    give theirs, and never count as touching the same row."""
    ops = [
        oplog.Operation(TestUser(name="a"), "user", CREATE),
        oplog.Operation(TestUser(name="b"), "user", CREATE),
        _user(7),
    ]
    assert _shape(_plan(conn, ops)) == [("insert", 2), ("insert", 1)]


@pytest.mark.parametrize(
    ("ops", "prepared"),
    [
        ([_user(1, UPDATE, "name")], None),  # one row: an index lookup, prepared
        ([_user(1, UPDATE, "name"), _user(2, UPDATE, "name")], False),  # a join: planned each time
        ([_user(1, DELETE), _user(2, DELETE)], False),
        ([_user(1), _user(2)], None),  # an insert has no join to plan
    ],
)
def test_a_join_of_many_rows_is_planned_for_them_and_one_row_is_prepared(
    conn: psycopg.Connection[Any], ops: list[oplog.Operation], prepared: bool | None
) -> None:
    """An update or delete of many rows is sent unprepared (so the server plans it for its
    row count, not with a plan cached while the table was small); a single row's statement
    and an insert are prepared after repeated use."""
    plan = _plan(conn, ops)
    (run,) = plan.steps
    assert isinstance(run, Run)
    query, params, prepare = plan.statement(run, conn)
    assert prepare is prepared
    assert (b"unnest" in query) == (len(ops) > 1)
    assert len(params) == len(run.columns)


def test_an_update_shape_is_checked_once_and_paths_in_lists_are_planned_too(
    conn: psycopg.Connection[Any],
) -> None:
    """Updates with the same mask and null paths share a checked shape; operations built by a
    caller with lists for paths (unhashable) are planned the same way; a bad path is refused
    whether or not its shape was met before."""
    # Lists as untyped callers pass them (Operation declares tuples).
    lists = oplog.Operation(TestUser(id=3, name="x"), "user", UPDATE, ["name"], ["email"])  # type: ignore[arg-type]
    plan = _plan(conn, [_user(1, UPDATE, "name"), _user(2, UPDATE, "name"), lists, lists])
    assert _shape(plan) == [("update", 2), ("update", 1), ("update", 1)]
    assert len(plan.cache.updates) == 1
    bad = oplog.Operation(TestUser(id=4), "user", UPDATE, ["nope"])  # type: ignore[arg-type]
    for ops in ([bad], [_user(1, UPDATE, "name"), bad]):
        with pytest.raises(oplog.InvalidParameterError, match="names no column"):
            _plan(conn, ops)


def test_operations_on_different_rows_of_commuting_tables_are_grouped(
    conn: psycopg.Connection[Any],
) -> None:
    """Where operations on different rows commute, a stretch of them is one statement per
    kind and shape, across tables; it ends at a row it touched, a key left to the database,
    and an operation with options. Elsewhere the same page keeps every run in order."""
    keep = OperationOptions(with_on_conflict=WithOnConflict(do_nothing=True))
    car = oplog.Operation(TestCar(id=9, model="m"), "car", CREATE)
    ops = [
        _user(1),
        _user(5, UPDATE, "name"),
        _user(2),
        car,
        _user(6, DELETE),
        _user(3),
        _user(7, UPDATE, "name"),
        _user(1, UPDATE, "name"),  # row 1 again: a new stretch
        _user(4),
        oplog.Operation(TestUser(name="generated"), "user", CREATE),  # ends the stretch
        _user(8),
        oplog.Operation(TestUser(id=10), "user", CREATE, options=keep),  # one by one
        _user(11),
    ]
    grouped = _shape(_plan(conn, ops, commuting=True))
    assert grouped == [
        ("insert", 3), ("update", 2), ("insert", 1), ("delete", 1),  # users 1-3, 5, 7; car; 6
        ("update", 1), ("insert", 1),  # user 1 renamed, user 4
        ("insert", 1),  # the generated key
        ("insert", 1),  # user 8
        ("one by one", 1),
        ("insert", 1),
    ]  # fmt: skip
    in_order = _shape(_plan(conn, ops))
    assert in_order[:6] == [
        ("insert", 1), ("update", 1), ("insert", 1), ("insert", 1), ("delete", 1),
        ("insert", 1),
    ]  # fmt: skip
    assert sum(n for _, n in grouped) == sum(n for _, n in in_order) == len(ops)
