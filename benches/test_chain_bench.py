"""What tamper evidence costs (oplog.chain): each tagged path alternated call by call with the
same path writing without tags (a wrapper that derives no keys), on one database; and the rate
of verification. The paired ratio is untagged / tagged time (1.00x = free)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import oplog
from benches.conftest import alternating
from oplog.proto.oplog_test_pb2 import TestUser
from tests.db import CATALOG, UNCHAINED, WRAPPER

GROUP = "7. tamper evidence: tags against none"
TAGGED = oplog.Oplog(WRAPPER, CATALOG)
METADATA = {"source": ["bench"], "host": ["bench-1"]}
VERIFY_ENTRIES = 20_000


@pytest.fixture
def conn(bench_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection outside autocommit: each call below commits its own transaction."""
    with psycopg.connect(bench_dsn) as c:
        yield c


def _users() -> Iterator[TestUser]:
    for i in itertools.count(1):
        yield TestUser(id=i, name=f"user {i}", email=f"u{i}@example.com")


def test_write_many_tags(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    """write_many of 1000 entries over 64 aggregates, tagged against untagged."""
    benchmark.group = GROUP
    users = _users()

    def batch(log: oplog.Oplog) -> None:
        items: list[oplog.BatchItem] = [
            (f"agg{i % 64}", [oplog.Operation(next(users), "user", oplog.OpType.CREATE)],
             METADATA)
            for i in range(1000)
        ]  # fmt: skip
        log.write_many(conn, items)
        conn.commit()

    pairs = 8 if not benchmark.disabled else 1
    alternating(benchmark, lambda: batch(TAGGED), lambda: batch(UNCHAINED), pairs)


def test_write_with_a_data_change_tags(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]
) -> None:
    """A transaction that inserts a user and writes its entry (Oplog.write), tagged against
    untagged: the tagged one locks the aggregate's head first (one more round trip)."""
    benchmark.group = GROUP
    users = _users()

    def unit(log: oplog.Oplog) -> None:
        user = next(users)
        conn.execute("insert into users (id, name) values (%s, %s)", (user.id, user.name))
        log.write(conn, "users", [oplog.Operation(user, "user", oplog.OpType.CREATE)], METADATA)
        conn.commit()

    pairs = 300 if not benchmark.disabled else 2
    alternating(benchmark, lambda: unit(TAGGED), lambda: unit(UNCHAINED), pairs)


def test_apply_in_a_transaction_tags(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]
) -> None:
    """Oplog.apply (the data change and its entry in one statement) and a commit, tagged
    against untagged."""
    benchmark.group = GROUP
    users = _users()

    def unit(log: oplog.Oplog) -> None:
        op = oplog.Operation(next(users), "user", oplog.OpType.CREATE)
        log.apply(conn, "users", [op], METADATA)
        conn.commit()

    pairs = 300 if not benchmark.disabled else 2
    alternating(benchmark, lambda: unit(TAGGED), lambda: unit(UNCHAINED), pairs)


@pytest.mark.parametrize("contents", [True, False], ids=["contents", "chains-only"])
def test_verify_rate(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any], contents: bool
) -> None:
    """Oplog.verify of 20,000 tagged entries over 64 aggregates: walk every chain, and with
    `contents` decrypt and decode every entry (entries/s in the table)."""
    benchmark.group = GROUP
    entries = VERIFY_ENTRIES if not benchmark.disabled else 200
    benchmark.extra_info["entries"] = entries
    users = _users()
    for start in range(0, entries, 1000):
        TAGGED.write_many(
            conn,
            [
                (f"agg{i % 64}", [oplog.Operation(next(users), "user", oplog.OpType.CREATE)],
                 METADATA)
                for i in range(start, min(start + 1000, entries))
            ],
        )  # fmt: skip
        conn.commit()

    def verify() -> oplog.VerifyReport:
        report = TAGGED.verify(conn, contents=contents)
        conn.commit()
        return report

    rounds = 5 if not benchmark.disabled else 1
    report = benchmark.pedantic(verify, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
    assert report.ok
    assert report.chained == entries
