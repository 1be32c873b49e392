"""Benchmark configuration: fixed corpora are built once, outside the timed loops."""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from tests.db import TEST_TABLES
from tests.golden import CATALOG
from tests.pg import Server, running_server

CORPUS_SIZE = 10_000


def _corpus(n: int) -> list[oplog.Operation]:
    ops: list[oplog.Operation] = []
    for i in range(n // 2):
        ops.append(
            oplog.Operation(
                TestUser(id=i, name=f"user {i}", email=f"u{i}@example.com", phone_number="555"),
                "user",
                oplog.OpType.CREATE,
            )
        )
        ops.append(
            oplog.Operation(
                TestCar(id=i, model="Model T"), "car", oplog.OpType.UPDATE, ("model",), ("mpg",)
            )
        )
    return ops


@pytest.fixture(scope="session")
def corpus() -> list[oplog.Operation]:
    """10,000 small operations: alternating user CREATEs and car UPDATEs with masks."""
    return _corpus(CORPUS_SIZE)


@pytest.fixture(scope="session")
def corpus_bytes(corpus: list[oplog.Operation]) -> bytes:
    """The corpus as a v2 queue."""
    q = oplog.Queue()
    q.extend(corpus)
    return bytes(q)


@pytest.fixture(scope="session")
def catalog() -> oplog.TypeCatalog:
    """The vectors' catalog."""
    return CATALOG


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bench_server() -> Iterator[Server]:
    """The server every database benchmark runs against (tests/pg.py chooses it)."""
    with running_server() as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            row = conn.execute("show server_version").fetchone()
            sync = conn.execute("show synchronous_commit").fetchone()
        assert row is not None
        assert sync is not None
        print(
            f"\nbenchmark server: {server.name} PostgreSQL {row[0]}, synchronous_commit={sync[0]}"
        )
        yield server


@pytest.fixture
def bench_dsn(bench_server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for one benchmark."""
    name = "b_" + re.sub(r"\W", "_", request.node.name)[:50].lower()
    with psycopg.connect(bench_server.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.execute(f"create database {name}")
    dsn = bench_server.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        oplog.migrate(conn)
        conn.execute(TEST_TABLES.encode())
    yield dsn
    with psycopg.connect(bench_server.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


def alternating(
    benchmark: BenchmarkFixture,
    candidate: Callable[[], object],
    baseline: Callable[[], object],
    pairs: int,
    prepare: tuple[Callable[[], object], Callable[[], object]] | None = None,
) -> None:
    """Times `candidate` and `baseline` call by call, alternating (in a random order within each
    pair), and records median(baseline) / median(candidate) as ``extra_info["paired_ratio"]``:
    load that comes and goes on a shared machine then falls on both alike, where the separate
    benchmarks of a group run minutes apart. `prepare` (candidate's, baseline's) runs untimed
    before each call (emptying the tables it fills)."""
    rng = random.Random(0)
    times: dict[str, list[float]] = {"candidate": [], "baseline": []}
    untimed = prepare or (lambda: None, lambda: None)

    def run() -> None:
        for _ in range(pairs):
            order = [("candidate", candidate, untimed[0]), ("baseline", baseline, untimed[1])]
            rng.shuffle(order)
            for name, call, before in order:
                before()
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)

    rounds = 5 if not benchmark.disabled else 1
    benchmark.pedantic(run, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
    ratio = statistics.median(times["baseline"]) / statistics.median(times["candidate"])
    benchmark.extra_info["paired_ratio"] = round(ratio, 3)
    benchmark.extra_info["pairs"] = len(times["candidate"])
