"""Tickets: one row per aggregate name that serializes the writers of that aggregate.

A writer reads the ticket inside its transaction, writes its data and entry, and redeems the
ticket (``version -> version + 1`` where the version is still the one it read). A redeem that
changes no row means another writer committed first: the whole transaction must roll back.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import psycopg

from oplog import _sql
from oplog._db import execute
from oplog._dberrors import ticket_conflicts
from oplog.errors import InvalidParameterError, TicketConflictError, TicketNotFoundError

__all__ = [
    "GLOBAL_TICKET",
    "MAX_TEXT_BYTES",
    "LockMode",
    "Ticket",
    "Ticketer",
    "ticket_name",
]

GLOBAL_TICKET = "global"
"""The one ticket every aggregate shares when ``aggregate_names=False``."""

LockMode = Literal["optimistic", "pessimistic"]


MAX_TEXT_BYTES = 2048
"""The longest aggregate name, metadata key or metadata value, in UTF-8 bytes: each is kept
in a B-tree index, whose entries PostgreSQL limits to about a third of a page."""


def check_text(value: str, what: str) -> None:
    """Raises InvalidParameterError unless `value` can be stored as indexed PostgreSQL text:
    valid UTF-8 (no lone surrogate), no NUL character, at most :data:`MAX_TEXT_BYTES` bytes."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidParameterError(f"{what} {value!r} is not valid UTF-8") from None
    if "\x00" in value:
        raise InvalidParameterError(
            f"{what} {value!r} contains a NUL character, which PostgreSQL text cannot hold"
        )
    if size > MAX_TEXT_BYTES:
        raise InvalidParameterError(
            f"{what} is longer than {MAX_TEXT_BYTES} bytes ({size}): {value[:40]!r}..."
        )


def check_aggregate_name(aggregate_name: str) -> None:
    """Raises InvalidParameterError unless `aggregate_name` is a non-empty str that PostgreSQL
    can store and index (see :func:`check_text`)."""
    if not isinstance(aggregate_name, str) or not aggregate_name:
        raise InvalidParameterError(
            f"aggregate name must be a non-empty str, not {aggregate_name!r}"
        )
    check_text(aggregate_name, "aggregate name")


def ticket_name(aggregate_name: str, aggregate_names: bool) -> str:
    """The ticket an aggregate uses: its own name, or ``"global"`` without aggregate names.

    Raises:
        InvalidParameterError: An invalid aggregate name (see :func:`check_aggregate_name`).
    """
    check_aggregate_name(aggregate_name)
    return aggregate_name if aggregate_names else GLOBAL_TICKET


class Ticket(NamedTuple):
    """A ticket as read: redeeming it succeeds only if `version` is still current."""

    id: int
    name: str
    version: int


def check_lock_mode(lock: str) -> LockMode:
    """Returns `lock` if it is a lock mode; raises InvalidParameterError otherwise."""
    if lock not in ("optimistic", "pessimistic"):
        raise InvalidParameterError(f"lock must be 'optimistic' or 'pessimistic', not {lock!r}")
    return lock  # type: ignore[return-value]


class Ticketer:
    """Reads and redeems tickets on a psycopg 3 connection, inside the caller's transaction.

    Args:
        conn: The connection whose transaction the ticket belongs to.
        aggregate_names: True (default): one ticket per aggregate name. False: every name uses
            the single ticket ``"global"``.
        lock: ``"optimistic"`` (default) reads the ticket plainly and detects a conflict when
            redeeming; ``"pessimistic"`` reads it ``FOR UPDATE``, so writers of a hot aggregate
            wait for each other instead of failing and retrying.
    """

    __slots__ = ("_aggregate_names", "_conn", "_lock")

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        aggregate_names: bool = True,
        lock: LockMode = "optimistic",
    ) -> None:
        self._conn = conn
        self._aggregate_names = aggregate_names
        self._lock: LockMode = check_lock_mode(lock)

    @property
    def lock(self) -> LockMode:
        """The lock mode tickets are read with."""
        return self._lock

    def ticket_name(self, aggregate_name: str) -> str:
        """The ticket an aggregate name uses."""
        return ticket_name(aggregate_name, self._aggregate_names)

    def init_ticket(self, aggregate_name: str) -> None:
        """Creates the ticket of `aggregate_name` at version 1 unless it exists (idempotent)."""
        name = self.ticket_name(aggregate_name)
        with ticket_conflicts(f"init ticket {name!r}"):
            execute(self._conn, _sql.INIT_TICKET, (name,))

    def get_ticket(self, aggregate_name: str, *, lock: LockMode | None = None) -> Ticket:
        """Reads the ticket of `aggregate_name` (``FOR UPDATE`` in pessimistic mode).

        Args:
            aggregate_name: The aggregate whose ticket to read.
            lock: Overrides the ticketer's lock mode for this read.

        Raises:
            TicketNotFoundError: The ticket was never initialized.
            TicketConflictError: The read hit a serialization failure or deadlock.
        """
        name = self.ticket_name(aggregate_name)
        mode = self._lock if lock is None else check_lock_mode(lock)
        query = _sql.TICKET_FOR_UPDATE if mode == "pessimistic" else _sql.TICKET
        with ticket_conflicts(f"get ticket {name!r}"):
            row = execute(self._conn, query, (name,)).fetchone()
        if row is None:
            raise TicketNotFoundError(f"no ticket for {name!r}: call init_ticket() first")
        return Ticket(int(row[0]), str(row[1]), int(row[2]))

    def redeem(self, ticket: Ticket) -> None:
        """Advances the ticket from the version read to the next one.

        Raises:
            TicketConflictError: The ticket was redeemed by another writer since it was read
                (0 rows updated), or the update hit a serialization failure, deadlock or unique
                violation. The caller's transaction must be rolled back.
        """
        with ticket_conflicts(f"redeem ticket {ticket.name!r}"):
            cur = execute(self._conn, _sql.REDEEM_TICKET_VERSION, (ticket.id, ticket.version))
        if cur.rowcount != 1:
            raise TicketConflictError(
                f"ticket {ticket.name!r} version {ticket.version} was already redeemed"
            )
