"""Faults at every step of a write leave data and entry both present or both absent."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import oplog
from oplog.proto.oplog_test_pb2 import TestUser
from tests.db import CATALOG, WRAPPER

STEPS = ("get ticket", "write data", "write entry", "commit")
KINDS = ("exception", "terminate", "statement_timeout", "terminate at a random moment")
ITERATIONS = 240
AGGREGATE = "users"


class Injected(Exception):
    """The Python exception a fault injects."""


def _present(monitor: psycopg.Connection[Any], marker: str) -> tuple[bool, bool]:
    data = monitor.execute("select count(*) from users where name = %s", (marker,)).fetchone()
    entry = monitor.execute(
        "select count(*) from oplog_metadata where key = 'marker' and value = %s", (marker,)
    ).fetchone()
    assert data is not None
    assert entry is not None
    assert data[0] <= 1, "a marker is written once"
    assert entry[0] <= 1, "a marker is logged once"
    return bool(data[0]), bool(entry[0])


def _one_write(
    dsn: str, monitor: psycopg.Connection[Any], marker: str, kind: str, at: int, rng: random.Random
) -> None:
    """One data row + entry, with the fault `kind` injected before step `at`."""
    lock = "pessimistic" if kind == "statement_timeout" and at == 0 else "optimistic"
    conn = psycopg.connect(dsn)
    pid = conn.info.backend_pid
    blocker: psycopg.Connection[Any] | None = None
    killer: threading.Thread | None = None

    def fault_before(step: int) -> None:
        nonlocal blocker
        if step != at:
            return
        if kind == "exception":
            raise Injected(STEPS[step])
        if kind == "terminate":
            monitor.execute("select pg_terminate_backend(%s, 5000)", (pid,))
        elif kind == "statement_timeout":
            # Hold the lock the next statement needs, so that it waits out its timeout.
            blocker = psycopg.connect(dsn)
            if STEPS[step] == "write data":
                blocker.execute("lock table users in share mode")
            elif STEPS[step] == "commit":
                conn.execute("set local statement_timeout = '20ms'")
                conn.execute("select pg_sleep(1)")
            else:
                blocker.execute(
                    "select 1 from oplog_ticket where name = %s for update", (AGGREGATE,)
                )
            conn.execute("set local statement_timeout = '20ms'")

    if kind == "terminate at a random moment" and at == 0:
        delay = rng.uniform(0, 0.008)

        def kill() -> None:
            time.sleep(delay)
            with psycopg.connect(dsn, autocommit=True) as side:
                side.execute("select pg_terminate_backend(%s)", (pid,))

        killer = threading.Thread(target=kill)
        killer.start()
    try:
        with conn.transaction():
            ticketer = oplog.Ticketer(conn, lock=lock)  # type: ignore[arg-type]
            writer = oplog.Writer(conn, CATALOG)
            fault_before(0)
            ticket = ticketer.get_ticket(AGGREGATE)
            fault_before(1)
            user = TestUser(name=marker)
            writer.create(user)
            fault_before(2)
            entry = oplog.Entry(
                AGGREGATE, metadata={"marker": [marker]}, wrapper=WRAPPER, ticketer=ticketer
            )
            entry.write_entry_with(
                writer, ticket, oplog.Operation(user, "user", oplog.OpType.CREATE)
            )
            fault_before(3)
    except (Injected, psycopg.Error, oplog.OplogError):
        pass
    finally:
        if killer is not None:
            killer.join()
        if blocker is not None:
            blocker.close()
        conn.close()


@pytest.mark.slow
def test_every_fault_at_every_step_is_atomic(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """240 writes, each with an exception, a terminated backend, a statement timeout or a kill
    at a random moment injected at one of the four steps: data and entry always agree."""
    conn.autocommit = True
    oplog.Ticketer(conn).init_ticket(AGGREGATE)
    rng = random.Random(1234)
    outcomes: dict[tuple[str, str], list[bool]] = {}
    for i in range(ITERATIONS):
        kind = KINDS[i % len(KINDS)]
        at = 0 if kind == "terminate at a random moment" else (i // len(KINDS)) % len(STEPS)
        marker = f"m{i}"
        _one_write(dsn, conn, marker, kind, at, rng)
        data, entry = _present(conn, marker)
        assert data == entry, (
            f"iteration {i}: {kind} before {STEPS[at]} left data={data} entry={entry}"
        )
        outcomes.setdefault((kind, STEPS[at]), []).append(data)
    # The deterministic faults always abort the write; the random kill sometimes lands after
    # the commit, so both outcomes occur there.
    for (kind, step), results in outcomes.items():
        if kind != "terminate at a random moment":
            assert not any(results), f"{kind} before {step} committed"
    random_results = outcomes[("terminate at a random moment", "get ticket")]
    print(f"\nrandom kills: {sum(random_results)} of {len(random_results)} landed after the commit")
    assert len(random_results) == ITERATIONS // len(KINDS)
    row = conn.execute("select count(*) from users").fetchone()
    entries = conn.execute("select count(*) from oplog_entry").fetchone()
    assert row == entries


def test_a_conflicting_write_rolls_back_in_full(connect: Callable[..., Any]) -> None:
    """A write that loses the ticket race leaves neither its data nor its entry."""
    setup = connect(autocommit=True)
    oplog.Ticketer(setup).init_ticket(AGGREGATE)
    a = connect()
    ticketer = oplog.Ticketer(a)
    ticket = ticketer.get_ticket(AGGREGATE)
    oplog.Oplog(WRAPPER, CATALOG).write(
        setup, AGGREGATE, [oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)]
    )
    writer = oplog.Writer(a, CATALOG)
    user = TestUser(name="loser")
    entry = oplog.Entry(AGGREGATE, wrapper=WRAPPER, ticketer=ticketer)
    op = oplog.Operation(user, "user", oplog.OpType.CREATE)
    writer.create(user)
    with pytest.raises(oplog.TicketConflictError):
        entry.write_entry_with(writer, ticket, op)
    a.rollback()
    assert _present(setup, "loser") == (False, False)
