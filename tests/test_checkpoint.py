"""Checkpoints and the commit-ordered tail (oplog/checkpoint.py; Oplog.tail): exactly once,
per-aggregate order, resuming, partitions."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import oplog
from oplog import _sql
from oplog._db import execute, execute_in_order
from oplog.checkpoint import TailCursor, TailPage
from tests.db import CATALOG, UNCHAINED, WRAPPER, commit_entry, settle, user_create
from tests.drivers import Connect, Driver, MakeDriver
from tests.pg import Server

Items = list[tuple[oplog.Entry, oplog.Checkpoint]]

LOG = oplog.Oplog(WRAPPER, CATALOG)


def _names(items: Items) -> list[str]:
    return [
        op.message.name  # type: ignore[attr-defined]
        for entry, _ in items
        for op in entry.unmarshal_data(CATALOG)
    ]


def _ids(items: Items) -> list[int]:
    return [int(entry.id or 0) for entry, _ in items]


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_text_round_trips() -> None:
    """A checkpoint (between polls, or inside one) survives its text form."""
    for cp in (
        oplog.Checkpoint.START,
        oplog.Checkpoint("100:105:101,103"),
        oplog.Checkpoint("100:105:101,103", "104:110:", 77),
    ):
        assert oplog.Checkpoint.parse(str(cp)) == cp
        assert oplog.Checkpoint.of(str(cp)) == cp
    assert str(oplog.Checkpoint.START) == "1:1:"
    assert oplog.Checkpoint.of(None) == oplog.Checkpoint.START


@pytest.mark.parametrize(
    "text",
    ["", "1:1", "a:b:", "5:3:", "0:1:", "10:20:9", "10:20:20", "1:2:;1:2:", "1:2:;1:2:;x",
     "1:2:;1:2:;-1", " 1:2:", "1:2:,", "1:1:;1:2:;0;5"],
)  # fmt: skip
def test_checkpoint_rejects_what_is_not_one(text: str) -> None:
    """Text that is not a snapshot, or two snapshots, or a poll with an id, is refused."""
    with pytest.raises(oplog.InvalidParameterError):
        oplog.Checkpoint.parse(text)


def test_checkpoint_rejects_bad_fields() -> None:
    """An id without a poll, a negative id, and a non-checkpoint are refused."""
    with pytest.raises(oplog.InvalidParameterError):
        oplog.Checkpoint("1:1:", None, 5)  # an after_id belongs to a poll being read
    with pytest.raises(oplog.InvalidParameterError):
        oplog.Checkpoint("1:1:", "1:2:", -1)
    with pytest.raises(oplog.InvalidParameterError):
        oplog.Checkpoint.of(3)  # type: ignore[arg-type]


# --- the tail, sync and asyncio ---------------------------------------------------------------


def test_tail_delivers_each_entry_once_and_resumes_from_every_checkpoint(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """From the start: every entry in id order with its metadata; from each yielded
    checkpoint (object or text, between polls or inside one): exactly the entries after it."""
    writer = connect()
    for i in range(7):
        commit_entry(writer, f"agg{i % 3}", f"u{i}", i=str(i))
    driver = make_driver()
    items = driver.tail(follow=False, batch_size=3)
    assert _names(items) == [f"u{i}" for i in range(7)]
    assert _ids(items) == sorted(_ids(items))
    assert [entry.metadata for entry, _ in items] == [{"i": [str(i)]} for i in range(7)]
    assert ";" in str(items[0][1])  # inside the first poll (pages of 3)
    assert ";" not in str(items[-1][1])  # the poll is done: a plain snapshot
    for k, (_, checkpoint) in enumerate(items):
        expected = _ids(items[k + 1 :])
        assert _ids(driver.tail(after=checkpoint, follow=False, batch_size=3)) == expected
        assert _ids(driver.tail(after=str(checkpoint), follow=False)) == expected


def test_tail_delivers_an_entry_that_commits_after_a_higher_id(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """The entry with the lower id commits last: the tail still delivers it (after the
    other), where reading `id > last seen` misses it for good."""
    early, late = connect(), connect()
    LOG.write(early, "x", [user_create("lower id, committed last")])
    commit_entry(late, "y", "higher id, committed first")
    driver = make_driver()
    first = driver.tail(follow=False)
    assert _names(first) == ["higher id, committed first"]
    early.commit()
    second = driver.tail(after=first[-1][1], follow=False)
    assert _names(second) == ["lower id, committed last"]
    assert _ids(second)[0] < _ids(first)[0]
    assert list(LOG.read(late, after_id=_ids(first)[-1])) == []  # the naive reader's view


def test_a_long_transaction_delays_only_itself_and_rollbacks_never_appear(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """Entries of a transaction open at a poll come with the first poll after it commits; those
    of a rolled-back one never come; entries committed around them are not held back."""
    writer, long, doomed = connect(), connect(), connect()
    LOG.write(long, "slow", [user_create("long")])
    LOG.write(doomed, "slow2", [user_create("rolled back")])
    for i in range(3):
        commit_entry(writer, "fast", f"fast{i}")
    driver = make_driver()
    got = driver.tail(follow=False)
    assert _names(got) == ["fast0", "fast1", "fast2"]
    doomed.rollback()
    assert driver.tail(after=got[-1][1], follow=False) == []
    long.commit()
    commit_entry(writer, "fast", "fast3")
    rest = driver.tail(after=got[-1][1], follow=False)
    assert _names(rest) == ["long", "fast3"]  # one poll, in id order
    assert "rolled back" not in _names(driver.tail(follow=False))


def test_a_notification_wakes_a_waiting_tail(make_driver: MakeDriver, connect: Connect) -> None:
    """poll_interval is an hour: only NOTIFY on the channel can deliver entries that commit
    while the tail waits (the test would hang, and time out, otherwise)."""
    writer = connect()
    done = threading.Event()

    def write_and_notify() -> None:
        i = 0
        while not done.is_set() and i < 200:
            LOG.write(writer, "n", [user_create(f"n{i}")])
            writer.execute("select pg_notify('oplog_test', '')")
            writer.commit()
            i += 1
            time.sleep(0.05)

    thread = threading.Thread(target=write_and_notify)
    driver = make_driver()
    thread.start()
    try:
        items = driver.tail(3, poll_interval=3600, channel="oplog_test")
    finally:
        done.set()
        thread.join()
    assert _names(items) == ["n0", "n1", "n2"]


def test_setting_stop_ends_a_waiting_tail(make_driver: MakeDriver, connect: Connect) -> None:
    """Setting stop ends a tail that is waiting for the next poll, long before the interval."""
    commit_entry(connect(), "s", "only")
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    driver = make_driver()
    timer.start()
    try:
        items = driver.tail(poll_interval=3600, stop=stop)  # would wait an hour
    finally:
        timer.cancel()
    assert _names(items) == ["only"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"channel": ""}, "channel"),
        ({"after": "garbage"}, "checkpoint"),
    ],
)
def test_tail_rejects_bad_arguments(
    make_driver: MakeDriver, kwargs: dict[str, Any], match: str
) -> None:
    """A batch size, poll interval or channel that is not usable is an InvalidParameterError."""
    driver = make_driver()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        driver.tail(follow=False, **kwargs)


def test_tail_refuses_a_connection_inside_a_transaction(make_driver: MakeDriver) -> None:
    """A tail refuses a connection with a transaction open (it would hold one snapshot)."""
    driver = make_driver()
    driver.execute("select 1")  # opens a transaction
    with pytest.raises(oplog.InvalidParameterError, match="outside a transaction"):
        driver.tail(follow=False)
    driver.rollback()


# --- per-aggregate order ------------------------------------------------------------------------


def test_per_aggregate_order_holds_when_transaction_ids_disagree(connect: Connect) -> None:
    """t1 takes its transaction id first but redeems aggregate X after t2 committed it, while
    t3 (an id between them) stays open. The tail delivers X-2 before X-3; a reader releasing
    entries below the oldest running transaction in (transaction, id) order hands out X-3
    alone — ahead of X-2, breaking the aggregate's order."""
    t1, t2, t3, monitor = connect(), connect(), connect(), connect(autocommit=True)
    commit_entry(t1, "X", "X-1")

    def xid(conn: psycopg.Connection[Any], tag: str) -> int:
        conn.execute("insert into users (name) values (%s)", (tag,))
        row = conn.execute("select pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        return int(row[0])

    assert xid(t1, "t1") < xid(t3, "t3") < xid(t2, "t2")
    LOG.write(t2, "X", [user_create("X-2")])
    with ThreadPoolExecutor(1) as pool:
        third = pool.submit(LOG.write, t1, "X", [user_create("X-3")])
        assert not settle(third, t1.info.backend_pid, monitor)  # t1 waits for X's ticket
        t2.commit()
        third.result()
        t1.commit()
    tail = connect(autocommit=True)
    assert _names(list(LOG.tail(tail, follow=False))) == ["X-1", "X-2", "X-3"]
    horizon = tail.execute(
        "select id from oplog_entry"
        " where xact_id < pg_snapshot_xmin(pg_current_snapshot()) order by xact_id, id"
    ).fetchall()
    by_id = {int(e.id or 0): _names([(e, oplog.Checkpoint.START)])[0] for e in LOG.read(tail)}
    assert [by_id[row[0]] for row in horizon] == ["X-1", "X-3"]
    t3.rollback()


# --- consumers ----------------------------------------------------------------------------------


# --- the migration ------------------------------------------------------------------------------


def test_entries_written_before_migration_2_are_delivered(pg: Server) -> None:
    """Before migration 2 the tail and consumers say the migration is missing; after it, the
    entries written before it are delivered from the start, then the new ones."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_tail_migration with (force)")
        admin.execute("create database t_tail_migration")
    try:
        with psycopg.connect(pg.dsn_for("t_tail_migration")) as conn:
            assert oplog.migrate(conn, target=1) == [1]
            commit_entry(conn, "old", "before", log=UNCHAINED)  # tags need migration 5
            with psycopg.connect(pg.dsn_for("t_tail_migration"), autocommit=True) as early:
                with pytest.raises(oplog.InvalidParameterError, match="migration 2"):
                    list(LOG.tail(early, follow=False))
                with pytest.raises(oplog.InvalidParameterError, match="migration 2"):
                    oplog.Consumer("c").position(early)
            assert oplog.migrate(conn) == [2, 3, 4, 5]
            commit_entry(conn, "new", "after")
            with psycopg.connect(pg.dsn_for("t_tail_migration"), autocommit=True) as tail:
                assert _names(list(LOG.tail(tail, follow=False))) == ["before", "after"]
            assert oplog.migrate_down(conn, target=1) == [5, 4, 3, 2]
            commit_entry(conn, "old", "down again", log=UNCHAINED)
            assert len(list(LOG.read(conn))) == 3
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("drop database if exists t_tail_migration with (force)")


# --- probed defects (issue 10) ------------------------------------------------------------------


def test_a_client_supplied_xact_id_is_refused(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], connect: Connect
) -> None:
    """An entry inserted with an explicit, old transaction id would be invisible to every tail
    already past the start; the server refuses any value but its own (nothing is inserted),
    and an insert that leaves the column to its default is delivered."""
    writer = connect()
    commit_entry(writer, "a", "first")
    driver = make_driver()
    driver.set_autocommit(True)
    ((_, after_first),) = driver.tail(follow=False)
    blob = WRAPPER.encrypt(bytes(oplog.Queue()))
    insert = (
        "insert into oplog_entry (version, aggregate_name, data, key_id{}) values"
        " ('v2', 'forged', %s, 'test-key-1'{})"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        writer.execute(insert.format(", xact_id", ", '1'"), (blob,))
    writer.rollback()
    with pytest.raises(psycopg.errors.CheckViolation):
        writer.execute(insert.format(", xact_id", ", '99999999'"), (blob,))
    writer.rollback()
    writer.execute(insert.format("", ""), (blob,))
    writer.commit()
    assert [e.aggregate_name for e, _ in driver.tail(after=after_first, follow=False)] == ["forged"]
    assert conn.execute("select count(*) from oplog_entry").fetchone() == (2,)


def _future(driver: Driver, ahead: int = 1000) -> oplog.Checkpoint:
    xmax = int(str(driver.checkpoint()).split(":")[1])
    return oplog.Checkpoint(f"{xmax + ahead}:{xmax + ahead}:")


def test_a_checkpoint_from_the_future_is_refused(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], connect: Connect, consumed: str
) -> None:
    """A checkpoint beyond the server's current snapshot (a position kept while the source was
    restored elsewhere) would silently treat every new entry as delivered: tail and consume
    raise an OplogError naming it and the server's position instead."""
    commit_entry(connect(), "a", "u0")
    driver = make_driver()
    driver.set_autocommit(True)
    future = _future(driver)
    mid_poll = oplog.Checkpoint("1:1:", str(future), 5)
    for checkpoint in (future, mid_poll):
        with pytest.raises(oplog.OplogError, match="ahead of this server") as info:
            driver.tail(after=checkpoint, follow=False)
        assert str(checkpoint) in str(info.value)
        assert "pg_current_snapshot" not in str(info.value)
    oplog.Consumer("c").save(conn, future)
    conn.commit()
    with pytest.raises(oplog.OplogError, match="ahead of this server"):
        driver.consume("c", follow=False)
    assert conn.execute("select count(*) from consumed").fetchone() == (0,)
    # The present is fine.
    assert driver.tail(after=driver.checkpoint(), follow=False) == []


@pytest.mark.parametrize("batch_size", [1, 3, 500])
def test_runs_until_caught_up_deliver_everything_committed_before_they_start(
    make_driver: MakeDriver,
    conn: psycopg.Connection[Any],
    connect: Connect,
    consumed: str,
    batch_size: int,
) -> None:
    """A follow=False run delivers every entry committed before it started, also when the
    previous run saved a position inside a poll (at a page boundary): such a run used to
    finish that poll and stop without taking a new snapshot, run after run."""
    writer = connect()
    driver = make_driver()
    total = 0
    for burst in (batch_size, 2 * batch_size, 1, batch_size):
        LOG.write_many(writer, [("a", [user_create(f"u{total + i}")], None) for i in range(burst)])
        writer.commit()
        total += burst
        assert driver.consume("c", follow=False, batch_size=batch_size) == burst
    names = [r[0] for r in conn.execute("select name from consumed order by entry_id")]
    assert names == [f"u{i}" for i in range(total)]
    conn.rollback()
    # The tail from a position at a page boundary, too.
    tail = make_driver()
    tail.set_autocommit(True)
    items = tail.tail(follow=False, batch_size=batch_size)
    boundary = items[batch_size - 1][1]
    LOG.write_many(writer, [("a", [user_create("later")], None)])
    writer.commit()
    later = tail.tail(after=boundary, follow=False, batch_size=batch_size)
    assert _names(later) == [f"u{i}" for i in range(batch_size, total)] + ["later"]


# --- lag (issue 11) -----------------------------------------------------------------------------


def test_partitions_split_the_log_by_aggregate(make_driver: MakeDriver, connect: Connect) -> None:
    """The tails of partitions 0..n-1 together deliver every entry exactly once, each
    aggregate wholly in the partition partition_of names (a documented, stable hash)."""
    assert [oplog.partition_of(name, 4) for name in ("w0", "w1", "users")] == [2, 2, 2]
    assert oplog.partition_of("users", 7) == 2613468202 % 7
    writer = connect()
    for i in range(30):
        commit_entry(writer, f"agg{i % 10}", f"u{i}")
    driver = make_driver()
    driver.set_autocommit(True)
    everything = driver.tail(follow=False)
    seen: list[int] = []
    for part in range(3):
        items = driver.tail(follow=False, partition=(part, 3), batch_size=4)
        assert {e.aggregate_name for e, _ in items} == {
            f"agg{a}" for a in range(10) if oplog.partition_of(f"agg{a}", 3) == part
        }
        assert _ids(items) == sorted(_ids(items))
        seen += _ids(items)
    assert sorted(seen) == _ids(everything)
    with pytest.raises(oplog.InvalidParameterError, match="partition"):
        driver.tail(follow=False, partition=(3, 3))


def _rows_read(plan: dict[str, Any]) -> int:
    """How many table rows the scans of an EXPLAIN (ANALYZE, FORMAT JSON) plan read."""
    read = 0
    kind = plan["Node Type"]
    if kind in ("Index Scan", "Index Only Scan") or ("Scan" in kind and "Index Name" not in plan):
        read += plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
    return read + sum(_rows_read(child) for child in plan.get("Plans", []))


def test_a_long_poll_is_paged_without_rereading_what_is_left(
    pg: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catching up on many entries the server has no statistics for yet (a burst just
    written), each page of a poll reads about its own rows, not every entry left in the poll:
    the pages after the first walk the primary key from where the last one ended."""
    name = "t_tail_pages"
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.execute(f"create database {name}")
    read: list[int] = []

    def explaining(run: Any) -> Any:
        # Each page statement the tail runs is run first under EXPLAIN ANALYZE, the same way.
        def wrapped(conn: Any, query: Any, params: Any = None, **kw: Any) -> Any:
            text = query if isinstance(query, str) else query.decode()
            if "from oplog_entry" in text:
                (plan,) = run(conn, "explain (analyze, format json) " + text, params).fetchone()
                read.append(_rows_read(plan[0]["Plan"]))
            return run(conn, query, params, **kw)

        return wrapped

    try:
        with psycopg.connect(pg.dsn_for(name)) as conn:
            oplog.migrate(conn)
            conn.execute("alter table oplog_entry set (autovacuum_enabled = false)")
            conn.commit()
            total = 20_000
            for start in range(0, total, 1000):
                chunk = range(start, start + 1000)
                LOG.write_many(conn, [(f"a{i % 8}", [user_create(f"u{i}")], None) for i in chunk])
                conn.commit()
        monkeypatch.setattr(oplog.log, "execute", explaining(execute))
        monkeypatch.setattr(oplog.log, "execute_in_order", explaining(execute_in_order))
        for autocommit in (True, False):
            read.clear()
            with psycopg.connect(pg.dsn_for(name), autocommit=autocommit) as tail:
                notices: list[psycopg.errors.Diagnostic] = []
                tail.add_notice_handler(notices.append)
                assert len(list(LOG.tail(tail, follow=False, batch_size=500))) == total
                # The setting ends with each page's transaction, with no warning (SET LOCAL
                # warns outside an explicit transaction block, in the server's log too).
                assert tail.execute("show enable_sort").fetchone() == ("on",)
                assert [notice.message_primary for notice in notices] == []
            assert len(read) >= total // 500
            # Re-reading what is left of the poll for each page reads ~ total**2 / (2 * 500).
            assert sum(read) < 3 * total
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(f"drop database if exists {name} with (force)")


def test_a_page_read_to_be_applied_holds_what_the_full_page_holds(
    conn: psycopg.Connection[Any],
) -> None:
    """A replicator's page (TailCursor.page_to_apply) keeps its entries' ids and decrypted
    data, not entries: its operations, its checkpoints, the position after it, and its
    entries when asked for are those of the page a tail reads, but for the times and the
    metadata it does not read."""
    for i in range(3):
        commit_entry(conn, f"a{i}", f"u{i}", who="me")
    (now,) = conn.execute("select pg_current_snapshot()::text").fetchone() or ("",)
    conn.commit()
    pages: list[TailPage] = []
    positions: list[oplog.Checkpoint] = []
    for timed in (True, False):
        cursor = TailCursor(oplog.Checkpoint.of(None), batch_size=2)
        cursor.start(now)
        found = execute(conn, _sql.READ_PAGE[timed], (0, None, None, 2), binary=True).fetchall()
        if timed:
            metadata = execute(conn, "select entry_id, key, value from oplog_metadata").fetchall()
            pages.append(cursor.page(found, metadata, WRAPPER))
        else:
            pages.append(cursor.page_to_apply(found, WRAPPER))
        positions.append(cursor.position)
    full, applied = pages
    assert applied.datas is not None
    assert full.datas is None
    assert len(applied) == len(full) == 2
    assert positions[1] == positions[0] == applied.end
    assert applied.operations(CATALOG) == full.operations(CATALOG)
    assert [c for _, c in applied] == [c for _, c in full]

    def stored(entry: oplog.Entry) -> tuple[Any, ...]:
        return entry.id, entry.aggregate_name, entry.format_version, entry.key_id, entry.blob

    assert [stored(e) for e in applied.entries] == [stored(e) for e in full.entries]
    assert [e.data for e in applied.entries] == [e.data for e in full.entries]
    assert [(e.create_time, e.metadata) for e in applied.entries] == [(None, {})] * 2
    assert all(e.metadata == {"who": ["me"]} and e.create_time for e in full.entries)
