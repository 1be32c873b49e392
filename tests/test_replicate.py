"""Replication between two real PostgreSQL servers while writers run."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql

import oplog
from oplog.proto.oplog_test_pb2 import TestUser
from tests import workers
from tests.db import CATALOG, TEST_TABLES, WRAPPER, rows
from tests.pg import Server, crashable_pg15, has_pg15, second_server

LOG = oplog.Oplog(WRAPPER, CATALOG)


@pytest.fixture(scope="module")
def replica_dsn() -> Iterator[str]:
    """A database on a second server, migrated, with the test tables (empty)."""
    with second_server() as server:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("create database replica")
        dsn = server.dsn_for("replica")
        with psycopg.connect(dsn, autocommit=True) as conn:
            oplog.migrate(conn)
            conn.execute(TEST_TABLES.encode())
        yield dsn


class _Replicator(threading.Thread):
    def __init__(self, source: str, target: str, stop: threading.Event) -> None:
        super().__init__()
        self.source, self.target, self.stop = source, target, stop
        self.applied = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                psycopg.connect(self.source, autocommit=True) as a,
                psycopg.connect(self.target) as b,
            ):
                self.applied = LOG.replicate(a, b, "replica", poll_interval=0.02, stop=self.stop)
        except BaseException as exc:  # reported by the test
            self.error = exc


def _caught_up(source: psycopg.Connection[Any], target: str) -> bool:
    with psycopg.connect(target) as b:
        position = oplog.Consumer("replica").position(b)
    return next(LOG.tail(source, position, follow=False), None) is None


@pytest.mark.slow
def test_replica_equals_source_after_concurrent_writes(
    pg: Server, dsn: str, conn: psycopg.Connection[Any], replica_dsn: str
) -> None:
    """4 writer processes (creates, updates with null paths, deletes; 150 transactions each)
    on server A while the replicator follows A into server B; once the writers stop and it
    has caught up, B's tables equal A's row for row."""
    stop = threading.Event()
    replicator = _Replicator(dsn, replica_dsn, stop)
    replicator.start()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            pool.starmap(workers.write_domain, [(dsn, w, 150) for w in range(4)])
        conn.autocommit = True
        deadline = time.monotonic() + 60
        while not _caught_up(conn, replica_dsn):
            assert time.monotonic() < deadline, "the replicator did not catch up in 60 s"
            assert replicator.is_alive(), replicator.error
            time.sleep(0.05)
    finally:
        stop.set()
        replicator.join(30)
    assert replicator.error is None, replicator.error
    assert replicator.applied == 600
    with psycopg.connect(replica_dsn) as replica:
        for table in ("users", "cars"):
            live = rows(conn, table, "id")
            assert live, table
            assert rows(replica, table, "id") == live, f"{table} differs on the replica"


def _partition_caught_up(source: psycopg.Connection[Any], target: str, part: int) -> bool:
    with psycopg.connect(target) as b:
        position = oplog.Consumer(f"parts/{part}-of-4").position(b)
    return next(LOG.tail(source, position, follow=False, partition=(part, 4)), None) is None


@pytest.mark.slow
def test_four_partition_workers_replicate_eight_writers(
    pg: Server, dsn: str, conn: psycopg.Connection[Any], replica_dsn: str
) -> None:
    """4 worker processes, one per partition, replicate what 8 writer processes write
    (creates, updates with null paths, deletes); worker 0 is killed mid-run and started
    again. Afterwards the replica equals the source row for row, and the partitions' positions
    together cover every entry once."""
    with psycopg.connect(replica_dsn, autocommit=True) as replica:
        replica.execute("truncate users, cars, oplog_consumer")
    ctx = multiprocessing.get_context("spawn")

    def start(part: int) -> Any:
        process = ctx.Process(
            target=workers.replicate_partition, args=(dsn, replica_dsn, part, 4), daemon=True
        )
        process.start()
        return process

    replicas = [start(part) for part in range(4)]
    try:
        with ctx.Pool(8) as pool:
            writes = pool.starmap_async(workers.write_domain, [(dsn, w, 60) for w in range(8)])
            time.sleep(1.0)
            replicas[0].kill()  # mid-page, mid-transaction, or idle: whatever it was doing
            replicas[0].join(10)
            replicas[0] = start(0)
            assert writes.get(timeout=300) == [60] * 8
        conn.autocommit = True
        deadline = time.monotonic() + 90
        for part in range(4):
            while not _partition_caught_up(conn, replica_dsn, part):
                assert time.monotonic() < deadline, f"partition {part} did not catch up in 90 s"
                assert replicas[part].is_alive(), f"partition {part}'s worker died"
                time.sleep(0.05)
    finally:
        for process in replicas:
            process.kill()
            process.join(10)
    assert {oplog.partition_of(f"w{w}", 4) for w in range(8)} != {0}, "all in one partition"
    with psycopg.connect(replica_dsn) as replica:
        for table in ("users", "cars"):
            live = rows(conn, table, "id")
            assert live, table
            assert rows(replica, table, "id") == live, f"{table} differs on the replica"
        names = [r[0] for r in replica.execute("select name from oplog_consumer order by 1")]
    assert names == [f"parts/{k}-of-4" for k in range(4)]


@pytest.fixture
def empty_replica(replica_dsn: str) -> str:
    """The replica database with its tables and consumers emptied."""
    with psycopg.connect(replica_dsn, autocommit=True) as b:
        b.execute("truncate users, cars, rentals, documents, oplog_consumer")
    return replica_dsn


def _write_users(conn: psycopg.Connection[Any], ids: range, log: oplog.Oplog = LOG) -> None:
    for i in ids:
        user = oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", oplog.OpType.CREATE)
        log.write(conn, f"a{i}", [user])
        conn.commit()


def test_reading_ahead_never_holds_a_page_until_the_next_poll(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """replicate reads the next page while the target applies the current one; when the
    tail has caught up it does not wait for new entries inside the page's transaction: the
    last page commits at once, not a poll interval (30 s here) later."""
    _write_users(conn, range(1, 4))
    stop = threading.Event()
    done: list[int] = []

    def replicate() -> None:
        with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(empty_replica) as b:
            done.append(LOG.replicate(a, b, "r", batch_size=2, poll_interval=30, stop=stop))

    thread = threading.Thread(target=replicate)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        with psycopg.connect(empty_replica, autocommit=True) as b:
            while b.execute("select count(*) from users").fetchone() != (3,):
                assert time.monotonic() < deadline, "the last page was not committed in 10 s"
                time.sleep(0.02)
    finally:
        stop.set()
        thread.join(60)
    assert done == [3]


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_replicator_stopped_with_its_next_page_asked_for_leaves_the_source_as_it_was(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str, autocommit: bool
) -> None:
    """A replicator asks the source for its next page before it applies one, in a pipeline
    left open meanwhile. Stopped then, it syncs that pipeline: the source connection is out
    of pipeline mode and in no transaction, and a later replicator applies the rest once."""
    _write_users(conn, range(1, 9))
    stop = threading.Event()
    with (
        psycopg.connect(dsn, autocommit=autocommit) as a,
        psycopg.connect(empty_replica) as b,
    ):
        applied = LOG.replicate(a, b, "r", batch_size=2, stop=stop, on_commit=lambda *_: stop.set())
        assert applied < 8
        assert a.pgconn.pipeline_status == pq.PipelineStatus.OFF
        assert a.info.transaction_status == pq.TransactionStatus.IDLE
        assert a.execute("select count(*) from oplog_entry").fetchone() == (8,)
        a.rollback()  # (outside autocommit, that select began a transaction)
        assert applied + LOG.replicate(a, b, "r", batch_size=2, follow=False) == 8
        assert [row[0] for row in rows(b, "users", "id")] == list(range(1, 9))


@contextlib.contextmanager
def _setting_of_each_row(replica: str, setting: str) -> Iterator[str]:
    """The replica's users get a column holding `setting` as it was when each row was
    inserted (a default reading it), for the time of the block; yields the query counting
    rows by it."""
    with psycopg.connect(replica, autocommit=True) as b:
        b.execute(
            sql.SQL(
                "alter table users add column setting_seen text default current_setting({})"
            ).format(sql.Literal(setting))
        )
    try:
        yield "select setting_seen, count(*) from users group by 1"
    finally:
        with psycopg.connect(replica, autocommit=True) as b:
            b.execute("alter table users drop column setting_seen")


def test_replicate_commits_pages_without_waiting_for_the_disk_unless_told_to(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """As PostgreSQL's subscriptions do, replicate commits each page with synchronous_commit
    off (a page a crash undoes is undone with its position, and replicated again); with
    synchronous_commit=True it keeps the session's setting. SET LOCAL: the target session's
    own setting is left as it was."""
    _write_users(conn, range(1, 4))
    with (
        _setting_of_each_row(empty_replica, "synchronous_commit") as modes,
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(empty_replica) as b,
    ):
        assert LOG.replicate(a, b, "r", batch_size=2, follow=False) == 3
        assert b.execute(modes).fetchall() == [("off", 3)]
        assert b.execute("show synchronous_commit").fetchone() == ("on",)
        b.execute("truncate users")
        b.commit()
        assert LOG.replicate(a, b, "r2", follow=False, synchronous_commit=True) == 3
        assert b.execute(modes).fetchall() == [("on", 3)]
        b.execute("truncate users")
        b.commit()


def test_replicate_pages_plan_their_runs_on_the_keys_index(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """A replicator's page runs with enable_seqscan off (SET LOCAL): an update or delete run
    joins its keys to the table, which on a small or unanalyzed replica table is otherwise
    planned as a scan of the whole table per run. consume, whose apply is the caller's code,
    leaves the session's setting, and so does replicate after its pages."""
    _write_users(conn, range(1, 4))

    def apply(target: psycopg.Connection[Any], entry: oplog.Entry) -> None:
        user = entry.unmarshal_data(CATALOG)[0].message
        assert isinstance(user, TestUser)
        target.execute("insert into users (id, name) values (%s, %s)", (user.id, "c"))

    with (
        _setting_of_each_row(empty_replica, "enable_seqscan") as scans,
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(empty_replica) as b,
    ):
        assert LOG.replicate(a, b, "r", batch_size=2, follow=False) == 3
        assert b.execute(scans).fetchall() == [("off", 3)]
        assert b.execute("show enable_seqscan").fetchone() == ("on",)
        b.execute("truncate users")
        b.commit()
        assert LOG.consume(a, b, "c", apply, follow=False) == 3
        assert b.execute(scans).fetchall() == [("on", 3)]
        b.execute("truncate users")
        b.commit()


def _syncs(conn: psycopg.Connection[Any], trace: Path, run: Callable[[], object]) -> int:
    """How many Sync messages `conn` sends while `run` runs (libpq's trace of the protocol).
    In pipeline mode each ends a batch of statements that is then waited for; the waits for
    results within one (Flush messages) vary with timing, as psycopg sends a Flush only for a
    result not in yet."""
    with trace.open("w") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            run()
        finally:
            conn.pgconn.untrace()
    messages = [line.rstrip().split("\t") for line in trace.read_text().splitlines()]
    return sum(m[0] == "F" and m[-1] == "Sync" for m in messages)


def test_a_replicators_page_syncs_once_with_or_without_autocommit(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str, tmp_path: Path
) -> None:
    """A replicator's page is synced once on the target, whether or not the target
    connection is in autocommit mode: the page's BEGIN goes with its first statements
    (psycopg's own BEGIN, in pipeline mode, syncs on its own: a round trip more per page).
    The BEGIN keeps the connection's isolation level, and the connection is left as it was."""
    _write_users(conn, range(1, 9))
    syncs, levels = {}, {}
    with (
        _setting_of_each_row(empty_replica, "transaction_isolation") as query,
        psycopg.connect(dsn, autocommit=True) as a,
    ):
        for autocommit in (True, False):
            with psycopg.connect(empty_replica, autocommit=autocommit) as b:
                b.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                run = functools.partial(
                    LOG.replicate, a, b, f"r{autocommit}", batch_size=2, follow=False
                )
                syncs[autocommit] = _syncs(b, tmp_path / "trace", run)
                assert b.autocommit is autocommit
                assert b.info.transaction_status == pq.TransactionStatus.IDLE
                levels[autocommit] = b.execute(query).fetchall()
                b.execute("truncate users")
                b.commit()
    # One sync per page (four), and one for the end of the log. psycopg's own BEGIN, without
    # autocommit, syncs on its own: a round trip more per page.
    assert syncs == {True: 5, False: 5}
    assert levels == {True: [("repeatable read", 8)], False: [("repeatable read", 8)]}


@pytest.mark.skipif(not has_pg15(), reason="needs Debian's PostgreSQL 15 (scripts/setup.sh)")
def test_pages_a_crash_undoes_are_replicated_again_each_once(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """replicate's pages commit without waiting for the disk, so a crash of the target's
    server can undo the last of them; it undoes the position that records them with them,
    and the next run applies exactly those entries again. The WAL writer sleeps 10 s here,
    so a crash right after a run loses its last commits (tried up to 4 times, and asserted
    to have happened at least once)."""
    settings = "-c wal_writer_delay=10s -c wal_writer_flush_after=1GB"
    undone = []
    with crashable_pg15(settings) as server:
        with psycopg.connect(server.dsn, autocommit=True) as b:
            oplog.migrate(b)
            b.execute(TEST_TABLES.encode())
        written = 0
        for _ in range(4):
            _write_users(conn, range(written + 1, written + 31))
            written += 30
            with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(server.dsn) as b:
                LOG.replicate(a, b, "r", batch_size=1, follow=False)
                assert b.execute("select count(*) from users").fetchone() == (written,)
            server.crash()
            server.start()
            with psycopg.connect(server.dsn) as b:
                count = b.execute("select count(*) from users").fetchone()
                assert count is not None
                undone.append(written - count[0])
            with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(server.dsn) as b:
                assert LOG.replicate(a, b, "r", follow=False) == undone[-1]
                users = [(i, f"u{i}", "", "", 0) for i in range(1, written + 1)]
                assert rows(b, "users", "id") == users
            if undone[-1]:
                break
    assert undone[-1] > 0, f"no crash undid a page: {undone}"


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_page_that_fails_on_the_target_is_rolled_back_with_its_position(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str, autocommit: bool
) -> None:
    """replicate runs each page's transaction in pipeline mode (one round trip for the lock,
    one for the rows, one for the save and the commit; an autocommit target gets an explicit
    BEGIN). A page the target rejects (a row already there) is rolled back whole, its
    position too, and the target connection is left idle and usable; once the row is gone
    the next run applies that page."""
    _write_users(conn, range(1, 5))
    with psycopg.connect(empty_replica, autocommit=True) as b:
        b.execute("insert into users (id, name) values (3, 'in the way')")
    with (
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(empty_replica, autocommit=autocommit) as b,
    ):
        with pytest.raises(psycopg.errors.UniqueViolation):
            LOG.replicate(a, b, "r", batch_size=2, follow=False)
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert b.execute("select count(*) from users").fetchone() == (3,)
        first_page = oplog.Consumer("r").position(b)
        assert first_page != oplog.Checkpoint.START
        b.execute("delete from users where name = 'in the way'")
        b.commit()
        assert LOG.replicate(a, b, "r", batch_size=2, follow=False) == 2
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert rows(b, "users", "id") == [(i, f"u{i}", "", "", 0) for i in range(1, 5)]
        assert oplog.Consumer("r").position(b) != first_page


def test_copying_the_log_to_a_replica_without_chains_says_which_migration_it_lacks(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """replicate(copy_log=True) into a replica without migration 5 (the chain columns)
    raises the SchemaError that names it, also in a pipelined page, and writes nothing."""
    _write_users(conn, range(1, 3))
    with psycopg.connect(empty_replica, autocommit=True) as b:
        oplog.migrate_down(b, target=4)
    try:
        with (
            psycopg.connect(dsn, autocommit=True) as a,
            psycopg.connect(empty_replica) as b,
        ):
            with pytest.raises(oplog.SchemaError, match="migration 5"):
                LOG.replicate(a, b, "r", follow=False, copy_log=True)
            assert b.execute("select count(*) from users").fetchone() == (0,)
    finally:
        with psycopg.connect(empty_replica, autocommit=True) as b:
            oplog.migrate(b)


def test_two_replicators_of_one_consumer_take_turns_on_pipelined_pages(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """Two threads run replicate with the same consumer into the same replica: each page's
    lock (sent in its pipelined transaction) makes them take turns, the one that finds the
    position moved continues from it, and every entry is applied once (a second insert of a
    row would fail on its key); together they applied all of them."""
    _write_users(conn, range(1, 61))
    applied: list[int] = []
    errors: list[BaseException] = []

    def replicate() -> None:
        try:
            with (
                psycopg.connect(dsn, autocommit=True) as a,
                psycopg.connect(empty_replica) as b,
            ):
                applied.append(LOG.replicate(a, b, "shared", batch_size=3, follow=False))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replicate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(applied) == 60, applied
    with psycopg.connect(empty_replica) as b:
        assert rows(b, "users", "id") == [(i, f"u{i}", "", "", 0) for i in range(1, 61)]


@pytest.mark.parametrize("then", ["creates", "updates"])
def test_a_page_whose_position_moved_while_it_was_applied_is_rolled_back(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str, then: str
) -> None:
    """After its first page a replicator sends each page's lock with the page's statements
    and reads its answer after them. When another process applied the same pages meanwhile,
    the page is rolled back whether its statements failed (a row inserted twice) or not
    (updates), and the replicator continues from the other's position: each entry is applied
    once, and the two counts add up."""
    _write_users(conn, range(1, 4))
    for i in range(4, 10):
        if then == "creates":
            _write_users(conn, range(i, i + 1))
        else:
            user = TestUser(id=i % 3 + 1, name=f"v{i}")
            op = oplog.Operation(user, "user", oplog.OpType.UPDATE, field_mask=("name",))
            LOG.write(conn, f"a{i % 3 + 1}", [op])
            conn.commit()
    other: list[int] = []

    def meanwhile(entries: int, checkpoint: oplog.Checkpoint) -> None:
        # After the first page: another process applies the rest (the page this one has
        # read ahead included) before this one's next page.
        if not other:
            with (
                psycopg.connect(dsn, autocommit=True) as a,
                psycopg.connect(empty_replica) as b,
            ):
                other.append(LOG.replicate(a, b, "shared", batch_size=3, follow=False))

    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(empty_replica) as b:
        applied = LOG.replicate(a, b, "shared", batch_size=3, follow=False, on_commit=meanwhile)
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (applied, other) == (3, [6])
    with psycopg.connect(empty_replica) as b:
        names = [r[1] for r in rows(b, "users", "id")]
        assert names == (
            ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"]
            if then == "creates"
            else ["v9", "v7", "v8"]
        )


def test_a_lock_that_fails_with_the_page_sent_raises_its_own_error(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """A page's lock sent with its statements that fails (here: lock_timeout, the row held
    by another transaction) raises its own error, not that its answer is missing; the page is
    rolled back, the connection left idle, and the pages before it stay."""
    _write_users(conn, range(1, 7))
    holder = psycopg.connect(empty_replica)

    def hold(entries: int, checkpoint: oplog.Checkpoint) -> None:
        holder.execute("select from oplog_consumer where name = 'held' for update")

    try:
        with (
            psycopg.connect(dsn, autocommit=True) as a,
            psycopg.connect(empty_replica, options="-c lock_timeout=200") as b,
        ):
            with pytest.raises(psycopg.errors.LockNotAvailable):
                LOG.replicate(a, b, "held", batch_size=3, follow=False, on_commit=hold)
            assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert [r[0] for r in rows(b, "users", "id")] == [1, 2, 3]
    finally:
        holder.close()


def test_an_entry_that_does_not_decrypt_stops_replication_after_the_page_before_it(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """The next page is read while the current one is applied; an entry of it that does not
    decrypt raises only once the current page has committed, as it would without reading
    ahead: the replica keeps the entries before it, and their position."""
    _write_users(conn, range(1, 3))
    other = oplog.Oplog(oplog.AeadWrapper(bytes(32), "other-key"), CATALOG)
    _write_users(conn, range(3, 4), other)
    with (
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(empty_replica) as b,
        pytest.raises(oplog.DecryptError, match="does not decrypt"),
    ):
        LOG.replicate(a, b, "r", batch_size=2, follow=False)
    with psycopg.connect(empty_replica) as b:
        assert rows(b, "users", "id") == [(1, "u1", "", "", 0), (2, "u2", "", "", 0)]
        assert oplog.Consumer("r").position(b) != oplog.Checkpoint.START


def test_an_entry_that_does_not_decode_stops_replication_after_the_page_before_it(
    conn: psycopg.Connection[Any], dsn: str, empty_replica: str
) -> None:
    """The page read ahead is also decoded and planned while the current one is applied; an
    entry of it that decrypts but does not decode raises (naming it) only once the current
    page has committed."""
    _write_users(conn, range(1, 3))
    conn.execute(
        "insert into oplog_entry (version, aggregate_name, data, key_id) values ('v2', 'a3', %s,"
        " %s)",
        (WRAPPER.encrypt(b"\xff not a queue"), WRAPPER.key_id),
    )
    bad = conn.execute("select max(id) from oplog_entry").fetchone()
    conn.commit()
    assert bad is not None
    with (
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(empty_replica) as b,
        pytest.raises(oplog.DecodeError, match=f"entry {bad[0]}"),
    ):
        LOG.replicate(a, b, "r", batch_size=2, follow=False)
    with psycopg.connect(empty_replica) as b:
        assert rows(b, "users", "id") == [(1, "u1", "", "", 0), (2, "u2", "", "", 0)]
