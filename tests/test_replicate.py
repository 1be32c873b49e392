"""Replication between two real PostgreSQL servers while writers run."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import oplog
from tests import workers
from tests.db import CATALOG, TEST_TABLES, WRAPPER, rows
from tests.pg import Server, second_server

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
