"""The front door (oplog/log.py and log_async.py), sync and asyncio: each test body runs against
both (tests/drivers.py). Oplog.apply: the data change and its entry in one statement."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from psycopg.abc import Buffer
from psycopg.adapt import Loader

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from tests.db import CATALOG, WRAPPER, batch_items, count, reset, rows
from tests.drivers import Driver, MakeDriver

LOG = oplog.Oplog(WRAPPER, CATALOG)


def test_write_creates_the_ticket_and_reads_back(make_driver: MakeDriver) -> None:
    """write() makes the aggregate's ticket on first use and redeems it after; entries read
    back decrypted, with their metadata, filtered by aggregate, after_id and limit."""
    d = make_driver()
    op = oplog.Operation(TestUser(id=1, name="a"), "user", oplog.OpType.CREATE)
    first = d.write("fresh", [op], {"k": "v", "empty": []})
    second = d.write("fresh", [op])
    d.write("other", [op])
    d.commit()
    assert (first.id, second.id) == (1, 2)
    entries = d.read()
    assert [e.metadata for e in entries] == [{"k": ["v"], "empty": []}, {}, {}]
    assert [e.unmarshal_data(CATALOG) for e in entries] == [[op], [op], [op]]
    assert [e.id for e in d.read(aggregate_name="fresh", after_id=1)] == [2]
    assert [e.id for e in d.read(limit=2)] == [1, 2]
    assert [e.id for e in d.read(aggregate_name="other")] == [3]


_CREATE = oplog.Operation(TestUser(), "user", oplog.OpType.CREATE)


class _CountingTimes(Loader):
    """A timestamptz loader of a caller's own: the text it was given, and a count of calls."""

    calls = 0

    def load(self, data: Buffer) -> Any:
        _CountingTimes.calls += 1
        return ("loaded", bytes(data).decode())


def test_a_page_loads_each_entry_time_as_the_connection_would_when_asked(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    """Reads and tails fetch ``create_time`` as text and each entry loads it when first asked
    for, as the connection loads the column: in its session's time zone, or with a loader the
    caller registered on it, once per entry and never for an entry not asked."""
    d = make_driver(options="-c timezone=Asia/Kathmandu")
    op = oplog.Operation(TestUser(id=1, name="a"), "user", oplog.OpType.CREATE)
    d.write("times", [op])
    d.write_many([("times", [op], None), ("others", [op], None)])
    d.commit()
    conn.execute("set timezone = 'Asia/Kathmandu'")
    stored = [row[0] for row in conn.execute("select create_time from oplog_entry order by id")]
    # Equal instants in another zone compare equal; the ISO forms show the offset too.
    expected = [t.isoformat() for t in stored]
    assert all(t.endswith("+05:45") for t in expected)
    assert [e.create_time.isoformat() for e in d.read() if e.create_time] == expected
    d.commit()  # a tail needs a connection outside any transaction
    tailed = d.tail(follow=False)
    assert [e.create_time.isoformat() for e, _ in tailed if e.create_time] == expected

    d.conn.adapters.register_loader("timestamptz", _CountingTimes)
    texts = [
        row[0] for row in conn.execute("select create_time::text from oplog_entry order by id")
    ]
    _CountingTimes.calls = 0
    read = d.read()
    d.commit()
    for entries in (read, [e for e, _ in d.tail(follow=False)]):
        assert _CountingTimes.calls == 0
        first = entries[0]
        assert first.create_time == first.create_time == ("loaded", texts[0])
        assert _CountingTimes.calls == 1
        assert [e.create_time for e in entries] == [("loaded", t) for t in texts]
        assert _CountingTimes.calls == 3
        first.create_time = None  # settable, as the writer sets it
        assert first.create_time is None
        _CountingTimes.calls = 0


# --- Probed defects (issue 10) --------------------------------------------------------------------

_WRITES = ["write", "write_many", "apply"]


def _call(
    d: Driver, how: str, aggregate: str, ops: list[oplog.Operation], metadata: Any = None
) -> Any:
    if how == "write_many":
        return d.write_many([(aggregate, ops, metadata)])
    return getattr(d, how)(aggregate, ops, metadata)


@pytest.mark.parametrize("how", _WRITES)
@pytest.mark.parametrize(
    ("operation", "error", "match"),
    [
        (
            oplog.Operation(TestCar(id=1, model="m", mpg=30), "user", oplog.OpType.CREATE),
            oplog.InvalidParameterError,
            "registered for TestUser, not TestCar",
        ),
        (
            oplog.Operation(TestUser(id=1), "nobody", oplog.OpType.CREATE),
            oplog.UnknownTypeError,
            "nobody",
        ),
        (
            oplog.Operation(TestUser, "user", oplog.OpType.CREATE),  # type: ignore[arg-type]
            oplog.InvalidParameterError,
            "registered for TestUser",
        ),
    ],
    ids=["wrong-class", "unregistered", "class-not-instance"],
)
def test_operations_must_match_the_catalog_in_every_write_path(
    make_driver: MakeDriver,
    conn: psycopg.Connection[Any],
    how: str,
    operation: oplog.Operation,
    error: type[Exception],
    match: str,
) -> None:
    """write, write_many and apply refuse a message whose class is not the one its type name
    is registered for (or an unregistered type name) before any SQL runs; nothing is written."""
    d = make_driver()
    with pytest.raises(error, match=match):
        _call(d, how, "cars", [operation])
    d.commit()
    assert count(conn, "oplog_entry") == 0
    assert count(conn, "cars") == 0


_ROW_FACTORIES = {
    "dict_row": psycopg.rows.dict_row,
    "namedtuple_row": psycopg.rows.namedtuple_row,
    "class_row": psycopg.rows.class_row(dict),
    "kwargs_row": psycopg.rows.kwargs_row(lambda **kw: kw),
}


def _every_call(d: Driver, conn: psycopg.Connection[Any]) -> None:
    """Runs every front-door call once on `d` and checks what it wrote and read."""
    user = TestUser(id=1, name="a")
    first = d.write("users", [oplog.Operation(user, "user", oplog.OpType.CREATE)], {"k": "v"})
    ids = d.write_many(batch_items(3, ["a", "b"]))
    applied = d.apply(
        "users", [oplog.Operation(TestUser(id=7, name="b"), "user", oplog.OpType.CREATE)]
    )
    d.commit()
    assert [first.id, *ids, applied.id] == [1, 2, 3, 4, 5]
    assert [e.id for e in d.read()] == [1, 2, 3, 4, 5]
    assert d.read(limit=1)[0].metadata == {"k": ["v"]}
    d.commit()
    d.set_autocommit(True)
    assert [e.id for e, _ in d.tail(follow=False)] == [1, 2, 3, 4, 5]
    assert d.tail(after=d.checkpoint(), follow=False) == []
    assert rows(conn, "users") == [(7, "b", "", "", 0)]


@pytest.mark.parametrize("factory", sorted(_ROW_FACTORIES))
def test_every_call_works_whatever_the_row_factory(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], factory: str
) -> None:
    """The library's statements run on cursors of its own with tuple rows, so a connection's
    row_factory (dict_row in many applications and pools) changes nothing."""
    _every_call(make_driver(row_factory=_ROW_FACTORIES[factory]), conn)


@pytest.mark.parametrize("factory", sorted(_ROW_FACTORIES))
def test_an_autocommit_write_with_a_row_factory_commits_once(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], factory: str
) -> None:
    """In autocommit mode a write on a connection with a row factory returns its entry (it
    used to commit, then raise, so a retrying caller wrote it twice)."""
    d = make_driver(row_factory=_ROW_FACTORIES[factory], autocommit=True)
    entry = d.write("users", [_CREATE])
    assert entry.id == 1
    assert count(conn, "oplog_entry") == 1


def test_every_call_works_with_client_side_binding_cursors(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    """A connection whose cursor_factory binds on the client (Django's default) serves every
    call, write_many's binary arrays included."""
    _every_call(make_driver(cursor_factory=psycopg.ClientCursor), conn)


def test_the_lower_level_api_works_whatever_the_row_and_cursor_factory(dsn: str) -> None:
    """migrate, Writer, Ticketer, Entry.write and replay use tuple rows on server-binding
    cursors of their own."""
    with psycopg.connect(
        dsn, row_factory=psycopg.rows.dict_row, cursor_factory=psycopg.ClientCursor
    ) as c:
        reset(c)
        assert oplog.migrate(c) == []
        user = TestUser(name="a")
        writer = oplog.Writer(c, CATALOG)
        writer.create(user)
        assert user.id == 1
        writer.create_items([TestCar(model="x"), TestCar(model="y")])
        assert writer.update(TestUser(id=1, name="b"), ["name"]) == 1
        ticketer = oplog.Ticketer(c)
        ticketer.init_ticket("users")
        entry = oplog.Entry("users", wrapper=WRAPPER, ticketer=ticketer)
        entry.write_entry_with(
            writer,
            ticketer.get_ticket("users"),
            oplog.Operation(user, "user", oplog.OpType.CREATE),
        )
        c.commit()
        assert oplog.Oplog(WRAPPER, CATALOG).replay(c) == 1
        assert c.execute("select name from users_replay").fetchall() == [{"name": "a"}]


_SURROGATE = "a\udc80b"
_KEYED = oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)


@pytest.mark.parametrize("how", _WRITES)
@pytest.mark.parametrize(
    ("aggregate", "operations", "metadata", "match"),
    [
        (_SURROGATE, [_KEYED], None, "aggregate name .* UTF-8"),
        ("a", [_KEYED], {_SURROGATE: "v"}, "metadata .* UTF-8"),
        ("a", [_KEYED], {"k": [_SURROGATE]}, "metadata .* UTF-8"),
        (
            "a",
            [oplog.Operation(TestUser(id=1), "user", oplog.OpType.UPDATE, (_SURROGATE,))],
            None,
            "UTF-8|names no column",  # apply checks the path against the table first
        ),
        ("a", [_KEYED], {"k": None}, "metadata 'k'"),
        ("a", [_KEYED], {"k": 5}, "metadata 'k'"),
        ("a", [_KEYED], {"k": [5]}, "metadata 'k'"),
        ("a", [_KEYED], {5: "v"}, "metadata keys"),
        ("x" * (1 << 20), [_KEYED], None, "aggregate name is longer than 2048 bytes"),
        ("a", [_KEYED], {"k" * 3000: "v"}, "longer than 2048 bytes"),
        ("a", [_KEYED], {"k": "v" * 3000}, "longer than 2048 bytes"),
        (
            "a",
            [oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE, options=TestCar())],  # type: ignore[arg-type]
            None,
            "options",
        ),
        ("a", [_CREATE, "not an operation"], None, "Operation"),
    ],
    ids=[
        "surrogate-aggregate",
        "surrogate-metadata-key",
        "surrogate-metadata-value",
        "surrogate-path",
        "metadata-none",
        "metadata-int",
        "metadata-int-item",
        "metadata-int-key",
        "huge-aggregate",
        "long-metadata-key",
        "long-metadata-value",
        "foreign-options",
        "not-an-operation",
    ],
)
def test_bad_input_is_an_invalid_parameter_error_and_the_transaction_goes_on(
    make_driver: MakeDriver,
    conn: psycopg.Connection[Any],
    how: str,
    aggregate: str,
    operations: list[Any],
    metadata: Any,
    match: str,
) -> None:
    """Input the database cannot store raises InvalidParameterError before anything is sent:
    the caller's transaction stays usable and commits what it did before."""
    d = make_driver()
    d.write("before", [_CREATE])
    with pytest.raises(oplog.InvalidParameterError, match=match):
        _call(d, how, aggregate, operations, metadata)
    d.write("after", [_CREATE])
    d.commit()
    assert [
        name for (name,) in conn.execute("select aggregate_name from oplog_entry order by id")
    ] == [
        "before",
        "after",
    ]


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
    """apply refuses operations it cannot perform in one statement before sending anything."""
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
    """A data change that fails (a duplicate key) leaves no entry and the ticket unredeemed."""
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
    """On an autocommit connection an apply commits its data change and its entry together."""
    with psycopg.connect(dsn, autocommit=True) as auto:
        entry = LOG.apply(auto, "fleet", [_create(TestUser(id=5, name="Eve"), "user")])
    assert rows(conn, "users") == [(5, "Eve", "", "", 0)]
    assert [e.id for e in LOG.read(conn)] == [entry.id]


def test_a_write_outside_any_transaction_warns_once_per_connection(
    make_driver: MakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    """write and write_many on an autocommit connection with no transaction open commit the
    entry alone, apart from any data change: the "oplog" logger warns, once per connection;
    inside a transaction, or for apply (its data change and entry are one statement), it
    does not."""
    caplog.set_level(logging.WARNING, logger="oplog")
    driver = make_driver()
    driver.write("t", [oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE)])
    driver.commit()
    assert caplog.records == []
    driver.set_autocommit(True)
    driver.apply("t", [oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE)])
    assert caplog.records == []
    driver.write("t", [oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE)])
    driver.write_many(batch_items(2, ["t"]))
    (record,) = caplog.records
    assert record.name == "oplog"
    assert "autocommit" in record.getMessage()
    assert "same transaction" in record.getMessage()
