"""Code that runs in worker processes of the stress and fault tests (importable after spawn)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import psycopg

import oplog
from oplog import Checkpoint
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from tests.db import CATALOG, WRAPPER, PlainWrapper

_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


def connection(dsn: str) -> psycopg.Connection[Any]:
    """This process's long-lived connection to `dsn` (for benchmarks: connecting is not part
    of what they time)."""
    conn = _CONNECTIONS.get(dsn)
    if conn is None or conn.closed:
        conn = _CONNECTIONS[dsn] = psycopg.connect(dsn)
    return conn


def warm(dsn: str) -> int:
    """Opens this process's connection and lingers a moment, so that a pool spreads a batch of
    these calls over all its processes before a timed run."""
    connection(dsn)
    time.sleep(0.02)
    return os.getpid()


# The contention benchmark's baseline: what Oplog.apply does for one user, written by hand.
_BARE_UNIT = b"""
with t as (
  update oplog_ticket set version = version + 1, update_time = current_timestamp
  where name = %s returning id
), d as (
  insert into users (id, name) select %s, %s from t
), e as (
  insert into oplog_entry (version, aggregate_name, data, key_id)
  select 'v2', %s, %b, %s from t returning id
)
select id from e
"""


def write_many(
    dsn: str,
    worker: int,
    writes: int,
    aggregates: list[str],
    lock: str,
    style: str = "oplog",
    reuse: bool = False,
) -> dict[str, int]:
    """Writes `writes` (data row + entry) units through run_in_transaction; returns counts.

    `style` "oplog" writes the entry with Oplog.write (one statement, after the data);
    "ticket-first" reads the ticket first, as the Go original does, writes the data, then the
    entry with that ticket, so a concurrent writer makes the redeem conflict (optimistic mode).
    "apply" performs the data change and writes the entry in one autocommit statement
    (Oplog.apply; the writer sets the user's id); "bare" runs a hand-written statement doing the
    same (ticket, user row, entry with an encrypted blob made once) as a baseline. `reuse`
    writes on this process's long-lived connection instead of a new one.
    """
    # "-untagged": the same, written without tags (a wrapper that derives no keys).
    untagged = style.endswith("-untagged")
    style = style.removesuffix("-untagged")
    wrapper = PlainWrapper(WRAPPER) if untagged else WRAPPER
    log = oplog.Oplog(wrapper, CATALOG, lock=lock)  # type: ignore[arg-type]
    rng = random.Random(worker)
    retries = 0

    def count_retry(attempt: int, conflict: oplog.TicketConflictError) -> None:
        nonlocal retries
        retries += 1

    conn = connection(dsn) if reuse else psycopg.connect(dsn)
    ids: list[int] = []
    if style in ("apply", "bare"):
        # Ids no other writer uses, reserved in one query from the table's own sequence.
        ids = [
            int(row[0])
            for row in conn.execute(
                "select nextval(pg_get_serial_sequence('users', 'id')) from generate_series(1, %s)",
                (writes,),
            ).fetchall()
        ]
        conn.commit()
    blob = b""
    if style == "bare":
        queue = oplog.Queue()
        queue.add(TestUser(id=ids[0], name=f"w{worker}-0"), "user", oplog.OpType.CREATE)
        blob = WRAPPER.encrypt(bytes(queue))
    try:
        for i in range(writes):
            name = f"w{worker}-{i}"
            aggregate = rng.choice(aggregates)
            if style == "bare":
                conn.autocommit = True
                params = (aggregate, ids[i], name, aggregate, blob, WRAPPER.key_id)
                conn.execute(_BARE_UNIT, params)
                continue
            if style == "apply":
                conn.autocommit = True
                user = TestUser(id=ids[i], name=name)
                log.apply(conn, aggregate, [oplog.Operation(user, "user", oplog.OpType.CREATE)])
                continue

            def unit(
                c: psycopg.Connection[Any], name: str = name, aggregate: str = aggregate
            ) -> None:
                ticketer = log.ticketer(c)
                ticket = ticketer.get_ticket(aggregate) if style == "ticket-first" else None
                user = TestUser(name=name)
                writer = oplog.Writer(c, CATALOG)
                writer.create(user)
                op = oplog.Operation(user, "user", oplog.OpType.CREATE)
                if ticket is None:
                    log.write(c, aggregate, [op])
                else:
                    entry = oplog.Entry(aggregate, wrapper=WRAPPER, ticketer=ticketer)
                    entry.write_entry_with(writer, ticket, op)

            oplog.run_in_transaction(
                conn, unit, retries=1000, backoff=0.001, max_backoff=0.05, on_retry=count_retry
            )
    finally:
        conn.autocommit = False
        if not reuse:
            conn.close()
    return {"writes": writes, "retries": retries}


class _Abort(Exception):
    """Raised inside a unit to roll it back on purpose."""


def write_counted(
    dsn: str, worker: int, writes: int, aggregates: list[str], abort_rate: float
) -> dict[str, int]:
    """Writes `writes` committed units, each: bump the aggregate's counter row in
    ``tail_counter`` to n, write an entry for the aggregate carrying n (metadata "n", user name
    "<aggregate>:<n>"), linger up to 2 ms before committing (so commits land out of id order
    often). A fraction `abort_rate` of extra units write an entry named "aborted" and roll
    back. The counter row orders an aggregate's writers, so a reader that keeps each
    aggregate's order sees n = 1, 2, 3, ... for it."""
    log = oplog.Oplog(WRAPPER, CATALOG)
    rng = random.Random(1000 + worker)
    aborted = 0
    with psycopg.connect(dsn) as conn:
        committed = 0
        while committed < writes:
            aggregate = rng.choice(aggregates)
            abort = rng.random() < abort_rate

            def unit(
                c: psycopg.Connection[Any], aggregate: str = aggregate, abort: bool = abort
            ) -> None:
                row = c.execute(
                    "update tail_counter set n = n + 1 where name = %s returning n", (aggregate,)
                ).fetchone()
                assert row is not None
                n = int(row[0])
                name = "aborted" if abort else f"{aggregate}:{n}"
                op = oplog.Operation(TestUser(name=name), "user", oplog.OpType.CREATE)
                log.write(c, aggregate, [op], {"n": str(n)})
                time.sleep(rng.random() * 0.002)
                if abort:
                    raise _Abort

            try:
                oplog.run_in_transaction(conn, unit)
                committed += 1
            except _Abort:
                aborted += 1
    return {"writes": committed, "aborted": aborted}


KILL_POINTS = ("before-apply", "before-commit", "after-commit")


def consume_and_crash(dsn: str, point: str | None, after: int) -> int:
    """Runs consumer "crashy" (applying entries into table ``consumed``) until it has caught
    up, or kills this process with os._exit at `point` once `after` entries were applied:
    "before-apply" (an entry is in hand, not applied), "before-commit" (a page is applied and
    its checkpoint saved, the transaction not committed), "after-commit" (a page is
    committed, the next not started)."""
    log = oplog.Oplog(WRAPPER, CATALOG)
    applied = 0

    def die_at(here: str) -> None:
        # "after-commit" needs a commit in this run first: a page applied.
        if point == here and applied >= (max(after, 1) if here == "after-commit" else after):
            os._exit(3)

    class CrashingConsumer(oplog.Consumer):
        def position(self, conn: psycopg.Connection[Any], *, lock: bool = False) -> Checkpoint:
            if lock:
                die_at("after-commit")
            return super().position(conn, lock=lock)

        def save(self, conn: psycopg.Connection[Any], checkpoint: Checkpoint | str) -> None:
            super().save(conn, checkpoint)
            die_at("before-commit")

    def apply(target: psycopg.Connection[Any], entry: oplog.Entry) -> None:
        nonlocal applied
        die_at("before-apply")
        for op in entry.unmarshal_data(CATALOG):
            target.execute(
                "insert into consumed values (%s, %s)",
                (entry.id, op.message.name),  # type: ignore[attr-defined]
            )
        applied += 1

    with psycopg.connect(dsn, autocommit=True) as source, psycopg.connect(dsn) as target:
        return log.consume(
            source, target, CrashingConsumer("crashy"), apply, follow=False, batch_size=4
        )


def write_slowly(dsn: str, writes: int) -> None:
    """Writes `writes` entries over a few aggregates, one per transaction, a little apart."""
    log = oplog.Oplog(WRAPPER, CATALOG)
    with psycopg.connect(dsn) as conn:
        for i in range(writes):
            op = oplog.Operation(TestUser(name=f"s{i}"), "user", oplog.OpType.CREATE)
            log.write(conn, f"agg{i % 3}", [op])
            conn.commit()
            time.sleep(0.002)


def write_domain(dsn: str, worker: int, units: int) -> int:
    """Writes `units` transactions of data changes with their entries: creates a user and a
    car, renames one of this worker's users, or deletes one (and logs what it did)."""
    log = oplog.Oplog(WRAPPER, CATALOG)
    rng = random.Random(2000 + worker)
    mine: list[int] = []
    with psycopg.connect(dsn) as conn:
        for i in range(units):
            writer = oplog.Writer(conn, CATALOG)
            choice = rng.random()
            ops: list[oplog.Operation]
            with conn.transaction():
                if not mine or choice < 0.5:
                    user = TestUser(name=f"w{worker}-{i}", email=f"{worker}.{i}@example.com")
                    car = TestCar(model=f"model-{worker}-{i}", mpg=rng.randint(10, 60))
                    writer.create(user)
                    writer.create(car)
                    ops = [
                        oplog.Operation(user, "user", oplog.OpType.CREATE),
                        oplog.Operation(car, "car", oplog.OpType.CREATE),
                    ]
                elif choice < 0.85:
                    user = TestUser(id=rng.choice(mine), name=f"renamed-{worker}-{i}")
                    writer.update(user, ["name"], ["email"])
                    ops = [
                        oplog.Operation(user, "user", oplog.OpType.UPDATE, ("name",), ("email",))
                    ]
                else:
                    user = TestUser(id=mine.pop(rng.randrange(len(mine))))
                    writer.delete(user)
                    ops = [oplog.Operation(user, "user", oplog.OpType.DELETE)]
                log.write(conn, f"w{worker}", ops)
            if ops[0].op_type == oplog.OpType.CREATE:
                mine.append(user.id)
    return units


def batches_with_new_tickets(
    dsn: str, worker: int, batches: int, round_size: int
) -> dict[str, int]:
    """Writes `batches` write_many batches, each over a random overlapping set of aggregates
    whose tickets mostly do not exist yet (every `round_size` batches move on to new names);
    returns how many were written and how many conflicts were deadlocks."""
    rng = random.Random(worker)
    log = oplog.Oplog(WRAPPER, CATALOG)
    written = deadlocks = conflicts = redeems = 0
    with psycopg.connect(dsn) as conn:
        for n in range(batches):
            names = [f"r{n // round_size}-{rng.randrange(30)}" for _ in range(16)]
            items: list[Any] = [
                (name, [oplog.Operation(TestUser(id=n), "user", oplog.OpType.CREATE)], None)
                for name in names
            ]
            while True:
                try:
                    with conn.transaction():
                        log.write_many(conn, items)
                        time.sleep(0.002)  # the rest of the caller's transaction
                    written += 1
                    redeems += len(set(names))
                    break
                except oplog.TicketConflictError as exc:
                    conflicts += 1
                    if isinstance(exc.__cause__, psycopg.errors.DeadlockDetected):
                        deadlocks += 1
    return {"written": written, "deadlocks": deadlocks, "conflicts": conflicts, "redeems": redeems}


def replicate_partition(source: str, target: str, part: int, parts: int) -> None:
    """Replicates partition `part` of `parts` of the log on `source` into `target`, following
    it until the process is killed."""
    log = oplog.Oplog(WRAPPER, CATALOG)
    with psycopg.connect(source, autocommit=True) as a, psycopg.connect(target) as b:
        log.replicate(a, b, "parts", poll_interval=0.02, partition=(part, parts))


def chained_mix(dsn: str, worker: int, units: int, aggregates: list[str]) -> int:
    """Writes `units` units over `aggregates`, each one of: a write_many of 1-20 entries in a
    transaction, an apply of a new user (autocommit), a write after a data change in a
    transaction; returns the entries written. Every entry is tagged and chained."""
    rng = random.Random(worker)
    log = oplog.Oplog(WRAPPER, CATALOG)
    written = 0
    with psycopg.connect(dsn) as conn:
        for unit in range(units):
            kind = unit % 3
            user_id = 1_000_000 * (worker + 1) + unit
            user = TestUser(id=user_id, name=f"w{worker}-{unit}")
            create = oplog.Operation(user, "user", oplog.OpType.CREATE)
            if kind == 0:
                items: list[Any] = [
                    (rng.choice(aggregates), [create], {"unit": str(unit)} if i % 2 else None)
                    for i in range(rng.randint(1, 20))
                ]
                with conn.transaction():
                    log.write_many(conn, items)
                written += len(items)
            elif kind == 1:
                conn.autocommit = True
                log.apply(conn, rng.choice(aggregates), [create])
                conn.autocommit = False
                written += 1
            else:
                with conn.transaction():
                    conn.execute("insert into cars (model) values (%s)", (user.name,))
                    log.write(conn, rng.choice(aggregates), [create], {"w": str(worker)})
                written += 1
    return written
