"""Tails under 8 concurrent writer processes: every committed entry exactly once, in each
aggregate's order, never an aborted one; a naive ``id > last`` reader misses entries."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest

import oplog
from oplog.proto.oplog_test_pb2 import TestUser
from tests import workers
from tests.db import CATALOG, WRAPPER

PROCESSES = 8
WRITES = 500
AGGREGATES = [f"agg{i}" for i in range(64)]

LOG = oplog.Oplog(WRAPPER, CATALOG)


def _commit_user(conn: psycopg.Connection[Any], name: str) -> None:
    LOG.write(conn, "late", [oplog.Operation(TestUser(name=name), "user", oplog.OpType.CREATE)])
    conn.commit()


class _Tailer(threading.Thread):
    """Follows the log on a connection of its own until stopped; keeps what it saw."""

    def __init__(self, dsn: str, stop: threading.Event) -> None:
        super().__init__()
        self.dsn, self.stop = dsn, stop
        self.seen: list[tuple[int, str, int, str]] = []  # id, aggregate, n, name
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for entry, _ in LOG.tail(conn, poll_interval=0.01, stop=self.stop):
                    (op,) = entry.unmarshal_data(CATALOG)
                    n = int(entry.metadata["n"][0])
                    name = op.message.name  # type: ignore[attr-defined]
                    self.seen.append((int(entry.id or 0), entry.aggregate_name, n, name))
        except BaseException as exc:  # reported by the test
            self.error = exc


class _NaiveTailer(threading.Thread):
    """Reads ``id > last seen`` in a loop: the reader the tail replaces."""

    def __init__(self, dsn: str, stop: threading.Event) -> None:
        super().__init__()
        self.dsn, self.stop = dsn, stop
        self.seen: list[int] = []

    def run(self) -> None:
        last = 0
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                final = self.stop.is_set()
                rows = conn.execute(
                    "select id from oplog_entry where id > %s order by id", (last,)
                ).fetchall()
                self.seen += [int(r[0]) for r in rows]
                last = self.seen[-1] if self.seen else last
                if final:
                    return
                time.sleep(0.001)


@pytest.mark.slow
def test_tailers_see_every_committed_entry_once_in_aggregate_order(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """8 writer processes commit (and roll back some) entries over a few aggregates while two
    tailers follow: each sees every committed entry once, each aggregate in order, no rolled-
    back one; a naive id > last reader running alongside misses some."""
    conn.execute("create table tail_counter (name text primary key, n bigint not null default 0)")
    conn.execute("insert into tail_counter (name) select unnest(%s::text[])", (AGGREGATES,))
    conn.commit()
    stop, naive_stop = threading.Event(), threading.Event()
    tailers = [_Tailer(dsn, stop) for _ in range(2)]
    naive = _NaiveTailer(dsn, naive_stop)
    for t in (*tailers, naive):
        t.start()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(PROCESSES) as pool:
            results = pool.starmap(
                workers.write_counted,
                [(dsn, w, WRITES, AGGREGATES, 0.05) for w in range(PROCESSES)],
            )
        committed = sum(r["writes"] for r in results)
        aborted = sum(r["aborted"] for r in results)
        assert committed == PROCESSES * WRITES
        assert aborted > 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(len(t.seen) < committed for t in tailers):
            time.sleep(0.05)
    finally:
        stop.set()
        naive_stop.set()
        for t in (*tailers, naive):
            t.join(timeout=30)
    counters = dict(conn.execute("select name, n from tail_counter").fetchall())
    ids = {int(r[0]) for r in conn.execute("select id from oplog_entry").fetchall()}
    assert len(ids) == committed == sum(counters.values())
    for tailer in tailers:
        assert tailer.error is None, tailer.error
        assert len(tailer.seen) == committed, "an entry was missed or delivered twice"
        assert {s[0] for s in tailer.seen} == ids
        assert all(name != "aborted" for *_, name in tailer.seen), "a rolled-back entry"
        per_aggregate: dict[str, list[int]] = defaultdict(list)
        for _, aggregate, n, name in tailer.seen:
            assert name == f"{aggregate}:{n}"
            per_aggregate[aggregate].append(n)
        for aggregate, ns in per_aggregate.items():
            assert ns == list(range(1, counters[aggregate] + 1)), f"{aggregate} out of order"
    missed = len(ids - set(naive.seen))
    print(f"\n{committed} entries, {aborted} rolled back; the naive reader missed {missed}")
    assert missed > 0, "the naive reader missed nothing: the test lost its teeth"


def test_a_consumer_killed_anywhere_applies_every_entry_once(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """While a writer process adds 300 entries (and this test 8 before each run), consumer
    processes are killed at each point (before apply, between apply and commit, after commit)
    after a random number of entries and restarted; a last run catches up. Each entry is
    applied exactly once."""
    conn.execute("create table consumed (entry_id bigint not null, name text not null)")
    conn.commit()
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=workers.write_slowly, args=(dsn, 300))
    writer.start()
    rng = random.Random(6)
    kills: dict[str, int] = defaultdict(int)
    try:
        # Each run finds at least 8 new entries (two pages of 4) and a kill point within
        # its first 4, so every run dies where it was told to, however slow the machine.
        for run in range(3 * len(workers.KILL_POINTS)):
            for i in range(8):
                _commit_user(conn, f"late{run}-{i}")
            point = workers.KILL_POINTS[run % len(workers.KILL_POINTS)]
            args = (dsn, point, rng.randint(0, 3))
            consumer = ctx.Process(target=workers.consume_and_crash, args=args)
            consumer.start()
            consumer.join(60)
            assert consumer.exitcode in (0, 3), consumer.exitcode
            kills[point] += consumer.exitcode == 3
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert workers.consume_and_crash(dsn, None, 0) >= 0  # the last run, to the end
    assert all(kills[p] >= 2 for p in workers.KILL_POINTS), dict(kills)
    applied = conn.execute("select entry_id, name from consumed order by entry_id").fetchall()
    logged = [
        (int(e.id or 0), op.message.name)  # type: ignore[attr-defined]
        for e in LOG.read(conn)
        for op in e.unmarshal_data(CATALOG)
    ]
    assert len(logged) >= 300
    assert applied == logged, "an entry was applied twice, or not at all"
    print(f"\nkills per point: {dict(kills)}")
