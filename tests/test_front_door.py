"""The front door, sync and asyncio: each test body runs against both (tests/drivers.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import oplog
from oplog import BatchItem
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from tests.db import CATALOG, WRAPPER, count, reset, rows
from tests.drivers import Driver

MakeDriver = Callable[..., Driver]
Connect = Callable[..., psycopg.Connection[Any]]


def _items(n: int, aggregates: list[str]) -> list[BatchItem]:
    return [
        (
            aggregates[i % len(aggregates)],
            [
                oplog.Operation(TestUser(id=i + 1, name=f"u{i}"), "user", oplog.OpType.CREATE),
                oplog.Operation(TestCar(id=i + 1), "car", oplog.OpType.UPDATE, ("model",)),
            ],
            {"n": [str(i)], "flag": []} if i % 2 else None,
        )
        for i in range(n)
    ]


def _side_write(conn: psycopg.Connection[Any], aggregate: str) -> None:
    oplog.Oplog(WRAPPER, CATALOG).write(
        conn, aggregate, [oplog.Operation(TestUser(id=9), "user", oplog.OpType.DELETE)]
    )


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


@pytest.mark.parametrize(
    ("n", "aggregates"),
    [(1, ["a"]), (2, ["a"]), (2, ["a", "b"]), (1000, ["a"]), (1000, [f"g{i}" for i in range(37)])],
)
def test_batches_read_back_in_input_order(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], n: int, aggregates: list[str]
) -> None:
    """Entries of a batch get ascending ids in input order and read back equal to the input;
    each aggregate's ticket is redeemed once per batch."""
    d = make_driver()
    items = _items(n, aggregates)
    ids = d.write_many(items)
    d.commit()
    assert ids == list(range(1, n + 1))
    entries = d.read()
    assert [e.id for e in entries] == ids
    for entry, (aggregate, ops, metadata) in zip(entries, items):
        assert entry.aggregate_name == aggregate
        assert entry.unmarshal_data(CATALOG) == ops
        assert entry.metadata == (metadata or {})
        assert entry.key_id == WRAPPER.key_id
    conn.commit()
    versions = dict(conn.execute("select name, version from oplog_ticket").fetchall())
    assert versions == {a: 2 for a in aggregates}
    d.write_many(items[:3])
    d.commit()
    conn.commit()
    assert conn.execute("select max(version) from oplog_ticket").fetchone() == (3,)


def test_an_empty_batch_writes_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    """write_many of nothing returns [] and touches no ticket."""
    assert make_driver().write_many([]) == []
    assert count(conn, "oplog_ticket") == 0


_CREATE = oplog.Operation(TestUser(), "user", oplog.OpType.CREATE)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([("a", [], None)], "needs an operation"),
        ([("", [_CREATE], None)], "aggregate"),
        ([("a",)], "expected"),
        ([("a", [oplog.Operation(TestUser(), "user", oplog.OpType.UPDATE)], None)], "UPDATE"),
        ([("a", [_CREATE], {"": ["x"]})], "metadata"),
        ([("a", [_CREATE], {"k": ["x\x00y"]})], "NUL"),
        ([("a", [_CREATE], {"k\x00": []})], "NUL"),
        ([("a\x00b", [_CREATE], None)], "NUL"),
    ],
)
def test_invalid_items_write_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], bad: Any, match: str
) -> None:
    """A bad item anywhere in the batch raises InvalidParameterError before any SQL runs."""
    d = make_driver()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        d.write_many([*_items(3, ["a"]), *bad])
    d.commit()
    assert count(conn, "oplog_entry") == 0


def _bad_update(i: int) -> oplog.Operation:
    return oplog.Operation(TestUser(id=i), "user", oplog.OpType.UPDATE)  # no paths: invalid


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-transaction", "autocommit"])
@pytest.mark.parametrize("failure", ["client", "server"])
def test_a_large_batch_failing_late_leaves_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], autocommit: bool, failure: str
) -> None:
    """A batch large enough to go in chunks fails after its first chunk was sent: on the client
    (an item that does not encode) or on the server (a row a constraint refuses). Nothing of it
    remains, and in a transaction what came before it is kept and the transaction goes on."""
    conn.execute("alter table oplog_metadata add constraint no_boom check (value <> 'boom')")
    conn.commit()
    d = make_driver()
    try:
        d.set_autocommit(autocommit)
        before = d.write_many(_items(2, ["a", "b"]))  # both tickets exist: the batch redeems
        items = _items(1000, ["a", "b"])
        if failure == "client":
            items[990] = ("a", [_bad_update(990)], None)
            error: type[Exception] = oplog.InvalidParameterError
        else:
            items[990] = ("a", items[990][1], {"n": ["boom"]})
            error = psycopg.errors.CheckViolation
        with pytest.raises(error):
            d.write_many(items)
        after = d.write_many(_items(3, ["b"]))
        d.commit()
        assert [e.id for e in d.read()] == before + after
        versions = dict(conn.execute("select name, version from oplog_ticket").fetchall())
        assert versions == {"a": 2, "b": 3}
    finally:
        d.rollback()  # the constraint goes when nothing holds the table
        conn.rollback()
        conn.execute("alter table oplog_metadata drop constraint no_boom")
        conn.commit()


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-transaction", "autocommit"])
def test_a_large_batch_redeems_only_its_own_tickets(
    make_driver: MakeDriver, autocommit: bool
) -> None:
    """Two chunked batches in one transaction, the second with an aggregate never seen: its
    first run finds a ticket missing and writes nothing (no chunk of it may ride on the first
    batch's redeem), then it creates the ticket and writes everything once."""
    d = make_driver()
    d.set_autocommit(autocommit)
    first = d.write_many(_items(600, ["a"]))
    second = d.write_many(_items(700, ["a", "new"]))
    d.commit()
    assert first + second == list(range(1, 1301))
    assert len(d.read()) == 1300


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-transaction", "autocommit"])
def test_a_large_batch_inside_the_callers_pipeline(connect: Connect, autocommit: bool) -> None:
    """write_many of a chunked batch inside a pipeline the caller opened, between two of the
    caller's statements, writes the batch once."""
    c = connect(autocommit=autocommit)
    log = oplog.Oplog(WRAPPER, CATALOG)
    with c.pipeline():
        c.execute("select 1")
        ids = log.write_many(c, _items(600, ["a", "b"]))
        c.execute("select 2")
    c.commit()
    assert ids == list(range(1, 601))
    assert count(c, "oplog_entry") == 600


def test_a_conflict_on_one_aggregate_rolls_back_the_whole_batch(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """At REPEATABLE READ, a concurrent commit on one of the batch's tickets makes the batch
    raise TicketConflictError; after rollback nothing of it remains."""
    setup = connect(autocommit=True)
    oplog.Oplog(WRAPPER, CATALOG).write_many(setup, _items(3, ["a", "b", "c"]))
    d = make_driver(psycopg.IsolationLevel.REPEATABLE_READ)
    d.execute("select 1")  # the snapshot
    _side_write(setup, "b")
    with pytest.raises(oplog.TicketConflictError):
        d.write_many(_items(10, ["a", "b", "c"]))
    d.rollback()
    assert count(setup, "oplog_entry") == 4
    versions = dict(setup.execute("select name, version from oplog_ticket").fetchall())
    assert versions == {"a": 2, "b": 3, "c": 2}


def test_run_in_transaction_retries_a_conflict_and_commits_once(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """A conflict on the first attempt rolls it back; the retry builds the batch afresh and
    commits exactly one copy of it."""
    setup = connect(autocommit=True)
    oplog.Oplog(WRAPPER, CATALOG).write_many(setup, _items(1, ["a"]))
    d = make_driver(psycopg.IsolationLevel.REPEATABLE_READ)

    def interfere(attempt: int) -> None:
        if attempt == 1:
            _side_write(setup, "a")

    ids, retries = d.run_in_transaction(_items(5, ["a"]), interfere)
    assert retries == 1
    assert len(ids) == 5
    assert ids == sorted(ids)
    assert count(setup, "oplog_entry") == 2 + 5
    assert setup.execute("select version from oplog_ticket").fetchone() == (4,)


def test_concurrent_batches_in_opposite_orders_do_not_deadlock(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """Two transactions writing batches over the same aggregates, listed in opposite orders,
    both finish: tickets are locked in name order."""
    names = [f"agg{i:02d}" for i in range(20)]
    setup = connect(autocommit=True)
    oplog.Oplog(WRAPPER, CATALOG).write_many(setup, _items(20, names))
    drivers = [make_driver(), make_driver()]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(d: Driver, order: list[str]) -> None:
        try:
            for _ in range(15):
                barrier.wait(timeout=30)
                d.run_in_transaction(_items(40, order), lambda attempt: None)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(d, o)) for d, o in zip(drivers, (names, names[::-1]))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert count(setup, "oplog_entry") == 20 + 2 * 15 * 40
    row = setup.execute("select min(version), max(version) from oplog_ticket").fetchone()
    assert row == (32, 32)


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
    ids = d.write_many(_items(3, ["a", "b"]))
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
