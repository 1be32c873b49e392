"""Writing and reading entries: oplog against bare SQL and eventsourcing, same server, same run.

Workload per entry: one TestUser CREATE (~100 bytes encoded), 2 metadata values, encrypted,
one aggregate name per ticket. Each group has a baseline (``bare``: one hand-written statement
with a pre-encrypted blob); `make bench` reports medians and ratios. Throughput is
``entries / median``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_benchmark.fixture import BenchmarkFixture

import oplog
from benches.conftest import alternating
from oplog import BatchItem
from oplog.proto.oplog_test_pb2 import TestUser
from tests import workers
from tests.db import CATALOG, UNCHAINED, WRAPPER

METADATA = {"source": ["bench"], "host": ["bench-1"]}
BATCH = 1000
READ_ENTRIES = 20_000


def _user(i: int) -> TestUser:
    return TestUser(
        id=i, name=f"user {i:06d}", email=f"user{i:06d}@example.com", phone_number="555-0100"
    )


def _op(i: int) -> oplog.Operation:
    return oplog.Operation(_user(i), "user", oplog.OpType.CREATE)


_BARE_ONE = """
with t as (update oplog_ticket set version = version + 1 where name = %s returning id),
e as (insert into oplog_entry (version, aggregate_name, data, key_id)
      select 'v2', %s, %b, %s from t returning id),
m as (insert into oplog_metadata (entry_id, key, value)
      select e.id, k, v from e, unnest(%s::text[], %s::text[]) as x (k, v))
select id from e
"""

_BARE_MANY = """
with t as (update oplog_ticket set version = version + 1 where name = %s returning id),
e as (insert into oplog_entry (version, aggregate_name, data, key_id)
      select 'v2', %s, u.data, %s from t, unnest(%b::bytea[]) with ordinality as u (data, ord)
      order by u.ord returning id),
n as (select id, row_number() over (order by id) as ord from e),
m as (insert into oplog_metadata (entry_id, key, value)
      select n.id, x.k, x.v from n, unnest(%s::text[], %s::text[]) as x (k, v))
select count(*) from n
"""


@pytest.fixture
def conn(bench_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection: one statement is one transaction."""
    with psycopg.connect(bench_dsn, autocommit=True) as c:
        oplog.Ticketer(c).init_ticket("users")
        yield c


def _blob(i: int) -> bytes:
    q = oplog.Queue()
    q.add(_user(i), "user", oplog.OpType.CREATE)
    return WRAPPER.encrypt(bytes(q))


# --- eventsourcing ------------------------------------------------------------------------------


class User(Aggregate):
    """The eventsourcing peer of a TestUser: created with the same fields."""

    def __init__(self, name: str, email: str, phone_number: str) -> None:
        self.name = name
        self.email = email
        self.phone_number = phone_number


def _eventsourcing(dsn: str, cipher: str) -> tuple[Application[Any], type[User]]:
    parts = conninfo_to_dict(dsn)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(parts.get("dbname", "postgres")),
        "POSTGRES_HOST": str(parts.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(parts.get("port", "5432")),
        "POSTGRES_USER": str(parts.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(parts.get("password", "")),
        "CIPHER_TOPIC": cipher,
        "CIPHER_KEY": AESCipher.create_key(32),
    }
    app: Application[Any] = Application(env=env)
    return app, User


CIPHERS = {
    "pycryptodome": "eventsourcing.cipher:AESCipher",
    "cryptography": "eventsourcing.cryptography:AESCipher",
}


def _es_save_one(dsn: str, cipher: str) -> Callable[[], None]:
    """A call saving one eventsourcing User (the peer of one TestUser CREATE)."""
    app, user_cls = _eventsourcing(dsn, CIPHERS[cipher])

    def save() -> None:
        app.save(user_cls("user 000001", "user000001@example.com", "555-0100"))

    return save


def _es_save_batch(dsn: str, cipher: str) -> Callable[[], None]:
    """A call saving BATCH eventsourcing Users in one save."""
    app, user_cls = _eventsourcing(dsn, CIPHERS[cipher])

    def save() -> None:
        app.save(
            *(user_cls(f"user {i:06d}", f"u{i}@example.com", "555-0100") for i in range(BATCH))
        )

    return save


def _batch_items() -> list[BatchItem]:
    return [("users", [_op(i)], METADATA) for i in range(BATCH)]


def _single_bare_params() -> tuple[Any, ...]:
    return ("users", "users", _blob(1), WRAPPER.key_id, ["source", "host"], ["bench", "bench-1"])


def _batch_bare_params() -> tuple[Any, ...]:
    blobs = [_blob(i) for i in range(BATCH)]
    return ("users", "users", WRAPPER.key_id, blobs, ["source", "host"], ["bench", "bench-1"])


# --- 1. one entry per transaction ---------------------------------------------------------------


def test_single_oplog(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    benchmark.group = "1. one entry per transaction"
    benchmark.extra_info["entries"] = 1
    log = oplog.Oplog(WRAPPER, CATALOG)
    op = _op(1)
    benchmark(log.write, conn, "users", [op], METADATA)


def test_single_bare(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    benchmark.group = "1. one entry per transaction"
    benchmark.extra_info["entries"] = 1
    benchmark(conn.execute, _BARE_ONE, _single_bare_params())


def test_single_oplog_alternating(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]
) -> None:
    """Oplog.write and the bare statement, alternating call by call (see conftest.alternating)."""
    benchmark.group = "1. one entry per transaction"
    log = oplog.Oplog(WRAPPER, CATALOG)
    op = _op(1)
    params = _single_bare_params()
    pairs = 400 if not benchmark.disabled else 2
    alternating(
        benchmark,
        lambda: log.write(conn, "users", [op], METADATA),
        lambda: conn.execute(_BARE_ONE, params),
        pairs,
    )


def test_single_oplog_alternating_eventsourcing(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any], bench_dsn: str
) -> None:
    """Oplog.write and eventsourcing saving one event (its default cipher), alternating (see
    _alternating): the ratio is how many times faster oplog is."""
    benchmark.group = "1. one entry per transaction"
    log = oplog.Oplog(WRAPPER, CATALOG)
    op = _op(1)
    save = _es_save_one(bench_dsn, "pycryptodome")
    pairs = 100 if not benchmark.disabled else 1
    alternating(benchmark, lambda: log.write(conn, "users", [op], METADATA), save, pairs)


def test_single_eventsourcing(benchmark: BenchmarkFixture, bench_dsn: str) -> None:
    benchmark.group = "1. one entry per transaction"
    benchmark.extra_info["entries"] = 1
    benchmark(_es_save_one(bench_dsn, "pycryptodome"))


# --- 2. batches of 1000 -------------------------------------------------------------------------


def test_batch_oplog(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    benchmark.group = "2. batch of 1000 entries"
    benchmark.extra_info["entries"] = BATCH
    log = oplog.Oplog(WRAPPER, CATALOG)
    benchmark(log.write_many, conn, _batch_items())


def test_batch_bare(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    benchmark.group = "2. batch of 1000 entries"
    benchmark.extra_info["entries"] = BATCH
    benchmark(conn.execute, _BARE_MANY, _batch_bare_params())


def test_batch_oplog_alternating(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]
) -> None:
    """Oplog.write_many and the bare batch statement, alternating (see conftest.alternating)."""
    benchmark.group = "2. batch of 1000 entries"
    log = oplog.Oplog(WRAPPER, CATALOG)
    items = _batch_items()
    params = _batch_bare_params()
    pairs = 8 if not benchmark.disabled else 1
    alternating(
        benchmark,
        lambda: log.write_many(conn, items),
        lambda: conn.execute(_BARE_MANY, params),
        pairs,
    )


def test_batch_oplog_alternating_eventsourcing(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any], bench_dsn: str
) -> None:
    """Oplog.write_many and eventsourcing (its default pycryptodome cipher) saving 1000 events,
    alternating (see conftest.alternating): the ratio is how many times faster oplog is."""
    benchmark.group = "2. batch of 1000 entries"
    log = oplog.Oplog(WRAPPER, CATALOG)
    items = _batch_items()
    save = _es_save_batch(bench_dsn, "pycryptodome")
    pairs = 4 if not benchmark.disabled else 1
    alternating(benchmark, lambda: log.write_many(conn, items), save, pairs)


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_batch_eventsourcing(benchmark: BenchmarkFixture, bench_dsn: str, cipher: str) -> None:
    benchmark.group = "2. batch of 1000 entries"
    benchmark.extra_info["entries"] = BATCH
    benchmark(_es_save_batch(bench_dsn, cipher))


@pytest.mark.parametrize("schema", [1, 2, 3], ids=["schema1_baseline", "schema2", "schema3"])
def test_batch_migration_cost(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any], schema: int
) -> None:
    """write_many of 1000 entries before and after migration 2 (which adds each entry's
    transaction id and its index, for the tail) and 3 (the check on that id)."""
    benchmark.group = "5. batch of 1000 entries: cost of migrations 2 and 3"
    benchmark.extra_info["entries"] = BATCH
    oplog.migrate_down(conn, target=schema)
    log = UNCHAINED  # tags need migration 5
    benchmark(log.write_many, conn, _batch_items())


def test_batch_xact_id_check_alternating(
    benchmark: BenchmarkFixture, conn: psycopg.Connection[Any], bench_dsn: str
) -> None:
    """write_many of 1000 entries with migration 3 (the check that refuses a client-supplied
    xact_id) against the same on a second database at migration 2, alternating call by call
    (see conftest.alternating): the ratio is the check's cost (1.00x = none)."""
    benchmark.group = "5. batch of 1000 entries: cost of migrations 2 and 3"
    log = UNCHAINED  # tags need migration 5
    items = _batch_items()
    with psycopg.connect(bench_dsn, autocommit=True) as admin:
        name = str(admin.info.dbname) + "_m2"
        admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(bench_dsn, dbname=name), autocommit=True) as before:
            oplog.migrate(before, target=2)
            pairs = 8 if not benchmark.disabled else 1
            alternating(
                benchmark,
                lambda: log.write_many(conn, items),
                lambda: log.write_many(before, items),
                pairs,
            )
    finally:
        with psycopg.connect(bench_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


def _fill(conn: psycopg.Connection[Any], log: oplog.Oplog, entries: int) -> None:
    """Writes `entries` entries, in batches."""
    for start in range(0, entries, BATCH):
        end = min(start + BATCH, entries)
        log.write_many(conn, [("users", [_op(i)], METADATA) for i in range(start, end)])


# --- 3. reading ---------------------------------------------------------------------------------


def test_read_oplog(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    benchmark.group = "3. read, decrypt and decode 20,000 entries"
    log = oplog.Oplog(WRAPPER, CATALOG)
    entries = READ_ENTRIES if not benchmark.disabled else 200
    benchmark.extra_info["entries"] = entries
    _fill(conn, log, entries)

    def read() -> int:
        return sum(len(e.unmarshal_data(CATALOG)) for e in log.read(conn, limit=entries))

    assert benchmark(read) == entries


def test_tail_oplog(benchmark: BenchmarkFixture, conn: psycopg.Connection[Any]) -> None:
    """The commit-ordered tail from the start of the log (one poll, in pages of 500)."""
    benchmark.group = "3. read, decrypt and decode 20,000 entries"
    log = oplog.Oplog(WRAPPER, CATALOG)
    entries = READ_ENTRIES if not benchmark.disabled else 200
    benchmark.extra_info["entries"] = entries
    _fill(conn, log, entries)

    def tail() -> int:
        return sum(len(e.unmarshal_data(CATALOG)) for e, _ in log.tail(conn, follow=False))

    assert benchmark(tail) == entries


def test_read_eventsourcing(benchmark: BenchmarkFixture, bench_dsn: str) -> None:
    benchmark.group = "3. read, decrypt and decode 20,000 entries"
    app, user_cls = _eventsourcing(bench_dsn, CIPHERS["pycryptodome"])
    entries = READ_ENTRIES if not benchmark.disabled else 200
    benchmark.extra_info["entries"] = entries
    for _ in range(0, entries, BATCH):
        app.save(
            *(user_cls("user", "u@example.com", "555-0100") for _ in range(min(BATCH, entries)))
        )

    def read() -> int:
        n, start = 0, 1
        while n < entries:
            page = app.recorder.select_notifications(start, BATCH)
            if not page:
                break
            for notification in page:
                app.mapper.to_domain_event(notification)
            n += len(page)
            start = page[-1].id + 1
        return n

    assert benchmark(read) == entries


# --- 4. contention ------------------------------------------------------------------------------


# style: "bare" (the baseline: one hand-written autocommit statement per unit, its blob
# encrypted once), "go-optimistic" / "go-pessimistic" (the Go original's order: read the ticket,
# plainly or FOR UPDATE, write the row, then the entry with that ticket, in a transaction),
# "write" (Writer.create, then Oplog.write, in a transaction), "apply" (Oplog.apply, one
# autocommit statement).
CONTENTION = [
    (1, "bare"),
    (1, "go-optimistic"),
    (1, "go-pessimistic"),
    (1, "write"),
    (1, "write-untagged"),
    (1, "apply"),
    (1, "apply-untagged"),
    (8, "bare"),
    (8, "write"),
    (8, "write-untagged"),
    (8, "apply"),
    (8, "apply-untagged"),
]
_STYLES = {
    "bare": ("optimistic", "bare"),
    "go-optimistic": ("optimistic", "ticket-first"),
    "go-pessimistic": ("pessimistic", "ticket-first"),
    "write": ("optimistic", "oplog"),
    "apply": ("optimistic", "apply"),
    "write-untagged": ("optimistic", "oplog-untagged"),
    "apply-untagged": ("optimistic", "apply-untagged"),
}


@pytest.mark.parametrize(
    ("aggregates", "style"),
    CONTENTION,
    ids=[f"{'1-aggregate' if n == 1 else f'{n}-aggregates'}-{style}" for n, style in CONTENTION],
)
def test_contention(
    benchmark: BenchmarkFixture, bench_dsn: str, aggregates: int, style: str
) -> None:
    """8 processes, 500 units each: each a user row + its entry + the ticket's redeem, with retries
    on conflicts (counted). With 8 aggregates each writer owns one, so writers do not wait on
    each other's tickets; with one, every unit waits for the one before it."""
    benchmark.group = (
        "4a. 8 writer processes, one aggregate"
        if aggregates == 1
        else "4b. 8 writer processes, 8 aggregates"
    )
    lock, mode = _STYLES[style]
    writes = 500 if not benchmark.disabled else 20
    benchmark.extra_info["entries"] = 8 * writes
    names = [f"agg{i}" for i in range(aggregates)]
    with psycopg.connect(bench_dsn, autocommit=True) as c:
        for name in names:
            oplog.Ticketer(c).init_ticket(name)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        # Outside the timing: every process imports oplog and connects.
        warmed: set[int] = set()
        while len(warmed) < 8:
            warmed |= set(pool.map(workers.warm, [bench_dsn] * 16, chunksize=1))

        def run() -> list[dict[str, int]]:
            return pool.starmap(
                workers.write_many,
                [
                    (bench_dsn, w, writes, [names[w % len(names)]], lock, mode, True)
                    for w in range(8)
                ],
            )

        rounds = 3 if not benchmark.disabled else 1
        results = benchmark.pedantic(run, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
    retries = sum(r["retries"] for r in results) if results else 0
    benchmark.extra_info["retries"] = retries
    if style != "go-optimistic":
        assert retries == 0  # the others wait for the ticket instead of conflicting
