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
