"""Tickets: initialization, reading, redeeming, conflicts, global and pessimistic modes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import oplog
from tests.db import settle
from tests.drivers import Connect


def test_init_ticket_is_idempotent(conn: psycopg.Connection[Any]) -> None:
    """init_ticket() twice leaves one ticket at version 1."""
    t = oplog.Ticketer(conn)
    t.init_ticket("users")
    t.init_ticket("users")
    assert t.get_ticket("users") == oplog.Ticket(1, "users", 1)
    row = conn.execute("select count(*) from oplog_ticket").fetchone()
    assert row == (1,)


def test_get_ticket_of_an_unknown_aggregate_raises(conn: psycopg.Connection[Any]) -> None:
    """A ticket that was never initialized is TicketNotFoundError."""
    with pytest.raises(oplog.TicketNotFoundError, match="cars"):
        oplog.Ticketer(conn).get_ticket("cars")


def test_redeem_advances_the_version_once(conn: psycopg.Connection[Any]) -> None:
    """Redeeming moves version n to n+1; redeeming the same ticket again conflicts."""
    t = oplog.Ticketer(conn)
    t.init_ticket("users")
    ticket = t.get_ticket("users")
    t.redeem(ticket)
    assert t.get_ticket("users").version == 2
    with pytest.raises(oplog.TicketConflictError, match="already redeemed"):
        t.redeem(ticket)
    assert issubclass(oplog.TicketAlreadyRedeemedError, oplog.TicketConflictError)


def test_without_aggregate_names_every_name_shares_the_global_ticket(
    conn: psycopg.Connection[Any],
) -> None:
    """aggregate_names=False maps every aggregate to the ticket 'global'."""
    t = oplog.Ticketer(conn, aggregate_names=False)
    t.init_ticket("users")
    assert t.get_ticket("cars").name == "global"
    t.redeem(t.get_ticket("users"))
    assert t.get_ticket("rentals").version == 2


@pytest.mark.parametrize("name", ["", None, 3])
def test_invalid_aggregate_names_are_rejected(conn: psycopg.Connection[Any], name: Any) -> None:
    """Aggregate names are non-empty strings."""
    with pytest.raises(oplog.InvalidParameterError):
        oplog.Ticketer(conn).init_ticket(name)


def test_invalid_lock_mode_is_rejected(conn: psycopg.Connection[Any]) -> None:
    """lock is 'optimistic' or 'pessimistic'."""
    with pytest.raises(oplog.InvalidParameterError, match="lock"):
        oplog.Ticketer(conn, lock="eager")  # type: ignore[arg-type]


def test_optimistic_readers_both_read_and_the_second_redeem_conflicts(connect: Connect) -> None:
    """Two transactions read the same version; the later redeem, after the first commits, fails."""
    setup = connect(autocommit=True)
    oplog.Ticketer(setup).init_ticket("users")
    a, b = connect(), connect()
    ta, tb = oplog.Ticketer(a), oplog.Ticketer(b)
    ticket_a, ticket_b = ta.get_ticket("users"), tb.get_ticket("users")
    assert ticket_a == ticket_b
    ta.redeem(ticket_a)
    a.commit()
    with pytest.raises(oplog.TicketConflictError):
        tb.redeem(ticket_b)
    b.rollback()


def test_pessimistic_reader_waits_for_the_holder(connect: Connect) -> None:
    """With lock='pessimistic' (set on the ticketer or per read) the second reader blocks until
    the first commits, then reads the new version, so its redeem succeeds without a retry."""
    setup = connect(autocommit=True)
    oplog.Ticketer(setup).init_ticket("users")
    a, b = connect(), connect()
    ta = oplog.Ticketer(a, lock="pessimistic")
    tb = oplog.Ticketer(b)
    ticket_a = ta.get_ticket("users")
    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(tb.get_ticket, "users", lock="pessimistic")
        assert not settle(read, b.info.backend_pid, setup), "FOR UPDATE must wait for A"
        ta.redeem(ticket_a)
        a.commit()
        seen = read.result(timeout=20)
    assert seen == oplog.Ticket(ticket_a.id, "users", 2)
    tb.redeem(seen)
    b.commit()
    assert oplog.Ticketer(setup).get_ticket("users").version == 3
