"""Replication and verification against the write rate: does a replica keep up with a batch
writer? Same server, same run.

A log of 20,000 entries (one TestUser CREATE each, over 64 aggregates) is written by write_many
in batches of 1000 (timed: the write rate, entries only; and with the batch's rows inserted in
the same transaction, as a batch writer does); then replicated into a fresh second database
(``Oplog.replicate``, pages of 500) and replayed into suffix tables (``Oplog.replay``, what
``oplog verify --replay`` does), each timed from the first entry to the last. The mixed log is
60% creates, 30% updates with masks and null paths, 10% deletes, written by write_many. Rates
are entries per second; `make bench`'s table shows them per group.

The separate benchmarks of a group run a minute or more apart, and this shared machine's speed
drifts; the ratios to read are the paired ones: ``test_*_alternating_write_many`` runs
replicate (or replay) and write_many of the same log call by call, alternating.

The anchor, in the creates group: PostgreSQL's own logical replication of the same 20,000 rows
between two PostgreSQL 15 servers the benchmark starts (a publication and a disabled
subscription; the rows are written, then the subscription is enabled and timed until the
subscriber holds them all: its catch-up apply rate, as ``replicate`` is timed from the start).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_benchmark.fixture import BenchmarkFixture

import oplog
from benches.conftest import alternating
from oplog import BatchItem
from oplog.proto.oplog_test_pb2 import TestUser
from tests.db import CATALOG, TEST_TABLES, WRAPPER
from tests.pg import Server, has_pg15, logical_replication_pair

ENTRIES = 20_000
SMOKE_ENTRIES = 300  # when benchmarks run once, untimed (CI)
BATCH = 1000
AGGREGATES = [f"agg{i:02d}" for i in range(64)]
LOG = oplog.Oplog(WRAPPER, CATALOG)


def _user(i: int) -> TestUser:
    return TestUser(id=i, name=f"user {i:06d}", email=f"user{i:06d}@example.com", phone_number="5")


def _creates(n: int) -> list[BatchItem]:
    return [
        (AGGREGATES[i % 64], [oplog.Operation(_user(i + 1), "user", oplog.OpType.CREATE)], None)
        for i in range(n)
    ]


def _mixed(n: int) -> list[BatchItem]:
    """60% creates, 30% updates (a mask and a null path), 10% deletes of earlier rows; every
    entry keeps to one aggregate per user, so each user's history is in one aggregate's order."""
    rng = random.Random(7)
    live: list[int] = []
    items: list[BatchItem] = []
    next_id = 1
    for _ in range(n):
        roll = rng.random()
        if roll < 0.6 or len(live) < 10:
            uid, next_id = next_id, next_id + 1
            live.append(uid)
            op = oplog.Operation(_user(uid), "user", oplog.OpType.CREATE)
        elif roll < 0.9:
            uid = rng.choice(live)
            change = TestUser(id=uid, name=f"renamed {rng.randrange(10**6)}")
            op = oplog.Operation(change, "user", oplog.OpType.UPDATE, ("name",), ("email",))
        else:
            uid = live.pop(rng.randrange(len(live)))
            op = oplog.Operation(TestUser(id=uid), "user", oplog.OpType.DELETE)
        items.append((AGGREGATES[uid % 64], [op], None))
    return items


_DROP = sql.SQL("drop database if exists {} with (force)")


def _database(server: Server, name: str) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = server.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        oplog.migrate(conn)
        conn.execute(TEST_TABLES.encode())
    return dsn


def _write(dsn: str, items: list[BatchItem]) -> None:
    """Writes the items' entries in batches (the log only: the data change is not applied)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, len(items), BATCH):
            LOG.write_many(conn, items[start : start + BATCH])


_INSERT_USER = "insert into users (id, name, email, phone_number) values (%s, %s, %s, %s)"


def _user_rows(n: int) -> list[tuple[int, str, str, str]]:
    return [(u.id, u.name, u.email, u.phone_number) for u in (_user(i + 1) for i in range(n))]


def _write_with_rows(dsn: str, items: list[BatchItem]) -> None:
    """A batch writer: each batch's rows (executemany, pipelined) and its entries in one
    transaction."""
    rows = _user_rows(len(items))
    with psycopg.connect(dsn) as conn:
        conn.execute("truncate users")
        conn.commit()
        for start in range(0, len(items), BATCH):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT_USER, rows[start : start + BATCH])
                LOG.write_many(conn, items[start : start + BATCH])


@pytest.fixture
def target_dsn(bench_server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "bt_" + re.sub(r"\W", "_", request.node.name)[:50].lower()
    yield _database(bench_server, name)
    with psycopg.connect(bench_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def _entries(benchmark: BenchmarkFixture) -> int:
    return ENTRIES if not benchmark.disabled else SMOKE_ENTRIES


@pytest.mark.parametrize("log", ["creates", "mixed"])
def test_write_many_rate(benchmark: BenchmarkFixture, bench_dsn: str, log: str) -> None:
    """The write rate the replica must keep up with: write_many in batches of 1000."""
    benchmark.group = f"6. replication, {log} log"
    n = _entries(benchmark)
    benchmark.extra_info["entries"] = n
    items = _creates(n) if log == "creates" else _mixed(n)
    rounds = 3 if not benchmark.disabled else 1
    benchmark.pedantic(_write, args=(bench_dsn, items), rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]


def test_write_many_with_rows_rate(benchmark: BenchmarkFixture, bench_dsn: str) -> None:
    """A batch writer's rate: each batch's rows and its entries in one transaction."""
    benchmark.group = "6. replication, creates log"
    n = _entries(benchmark)
    benchmark.extra_info["entries"] = n
    items = _creates(n)
    rounds = 3 if not benchmark.disabled else 1
    benchmark.pedantic(_write_with_rows, args=(bench_dsn, items), rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
    with psycopg.connect(bench_dsn) as conn:
        assert conn.execute("select count(*) from users").fetchone() == (n,)


_USERS = "create table users (id bigint primary key, name text, phone_number text, email text)"


@pytest.mark.skipif(not has_pg15(), reason="needs Debian's PostgreSQL 15 (scripts/setup.sh)")
def test_logical_replication_rate(benchmark: BenchmarkFixture) -> None:
    """The anchor: PostgreSQL's logical replication catching up on the same rows."""
    benchmark.group = "6. replication, creates log"
    n = _entries(benchmark)
    benchmark.extra_info["entries"] = n
    rows = _user_rows(n)
    with (
        logical_replication_pair() as (publisher, subscriber),
        psycopg.connect(publisher.dsn, autocommit=True) as pub,
        psycopg.connect(subscriber.dsn, autocommit=True) as sub,
    ):
        pub.execute(_USERS)
        sub.execute(_USERS)
        # Inserts only: each round empties both sides itself.
        pub.execute("create publication bench for table users with (publish = 'insert')")
        sub.execute(
            sql.SQL(
                "create subscription bench connection {} publication bench"
                " with (copy_data = false, enabled = false)"
            ).format(sql.Literal(publisher.dsn))
        )

        def write_rows() -> None:
            sub.execute("alter subscription bench disable")
            sub.execute("truncate users")
            pub.execute("truncate users")
            with pub.cursor() as cur:
                for start in range(0, n, BATCH):
                    with pub.transaction():
                        cur.executemany(_INSERT_USER, rows[start : start + BATCH])

        def catch_up() -> None:
            sub.execute("alter subscription bench enable")
            while True:
                found = sub.execute("select count(*) from users").fetchone()
                if found == (n,):
                    return
                time.sleep(0.005)

        rounds = 3 if not benchmark.disabled else 1
        benchmark.pedantic(catch_up, setup=write_rows, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
        sub.execute("alter subscription bench disable")
        sub.execute("alter subscription bench set (slot_name = none)")
        sub.execute("drop subscription bench")


@pytest.mark.parametrize("log", ["creates", "mixed", "creates-with-log"])
def test_replicate_rate(
    benchmark: BenchmarkFixture, bench_dsn: str, target_dsn: str, log: str
) -> None:
    """Oplog.replicate of the whole log into a second database, from the start ("with-log":
    copying the entries too, copy_log=True)."""
    copy_log = log.endswith("-with-log")
    log = log.removesuffix("-with-log")
    benchmark.group = f"6. replication, {log} log"
    n = _entries(benchmark)
    benchmark.extra_info["entries"] = n
    _write(bench_dsn, _creates(n) if log == "creates" else _mixed(n))
    rounds = 3 if not benchmark.disabled else 1
    consumers = iter(range(rounds))

    def reset_target() -> tuple[tuple[Any, ...], dict[str, Any]]:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            conn.execute(
                "truncate users, oplog_consumer, oplog_entry, oplog_metadata, oplog_chain_head"
            )
        return (f"c{next(consumers)}",), {}

    def replicate(consumer: str) -> int:
        with (
            psycopg.connect(bench_dsn, autocommit=True) as source,
            psycopg.connect(target_dsn) as target,
        ):
            return LOG.replicate(source, target, consumer, follow=False, copy_log=copy_log)

    benchmark.pedantic(replicate, setup=reset_target, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
    with psycopg.connect(target_dsn) as target:
        replicated = target.execute("select count(*) from users").fetchone()
    assert replicated is not None
    assert replicated[0] > 0


@pytest.mark.parametrize("log", ["creates", "mixed"])
def test_verify_replay_rate(benchmark: BenchmarkFixture, bench_dsn: str, log: str) -> None:
    """Oplog.replay of the whole log into suffix tables (verify --replay), rolled back."""
    benchmark.group = f"6. replication, {log} log"
    n = _entries(benchmark)
    benchmark.extra_info["entries"] = n
    _write(bench_dsn, _creates(n) if log == "creates" else _mixed(n))
    rounds = 3 if not benchmark.disabled else 1

    def replay() -> int:
        with psycopg.connect(bench_dsn) as conn:
            writer = oplog.Writer(conn, CATALOG)
            writer.drop_table_if_exists("users_verify")
            writer.create_table_like("users", "users_verify")
            count = LOG.replay(conn, "_verify")
            conn.rollback()
            return count

    assert benchmark.pedantic(replay, rounds=rounds, iterations=1) == n  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("log", ["creates", "mixed"])
@pytest.mark.parametrize("path", ["replicate", "replay"])
def test_alternating_write_many(
    benchmark: BenchmarkFixture,
    bench_server: Server,
    bench_dsn: str,
    target_dsn: str,
    path: str,
    log: str,
) -> None:
    """replicate (or replay into suffix tables, rolled back: verify --replay) of the log,
    alternated call by call with write_many of the same items into a third database: the
    paired ratio is the replica's (or the verifier's) rate over the writer's."""
    benchmark.group = f"6. replication, {log} log"
    n = _entries(benchmark)  # not extra_info["entries"]: a round is several calls of each
    items = _creates(n) if log == "creates" else _mixed(n)
    _write(bench_dsn, items)
    scratch = _database(bench_server, "bw_scratch")

    def empty_scratch() -> None:
        with psycopg.connect(scratch, autocommit=True) as conn:
            conn.execute("truncate oplog_entry, oplog_metadata, oplog_ticket, oplog_chain_head")

    def empty_target() -> None:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            conn.execute("truncate users, oplog_consumer")

    def replicate() -> None:
        with (
            psycopg.connect(bench_dsn, autocommit=True) as source,
            psycopg.connect(target_dsn) as target,
        ):
            assert LOG.replicate(source, target, "c", follow=False) == n

    def replay() -> None:
        with psycopg.connect(bench_dsn) as conn:
            writer = oplog.Writer(conn, CATALOG)
            writer.drop_table_if_exists("users_verify")
            writer.create_table_like("users", "users_verify")
            assert LOG.replay(conn, "_verify") == n
            conn.rollback()

    candidate = replicate if path == "replicate" else replay
    pairs = 3 if not benchmark.disabled else 1
    alternating(
        benchmark, candidate, lambda: _write(scratch, items), pairs, (empty_target, empty_scratch)
    )
