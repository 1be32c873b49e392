"""Running a unit of work in a transaction, retrying it when a ticket conflict says so."""

# oplog/transaction.py, the sync twin, is generated from this module.  # sync: -

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from oplog._compat import asleep
from oplog._retry import backoff_seconds, check_retry_arguments
from oplog.errors import TicketConflictError
from oplog.settings import logger

__all__ = ["run_in_transaction"]

T = TypeVar("T")


async def run_in_transaction(
    conn: psycopg.AsyncConnection[Any],
    fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    *,
    retries: int = 10,
    backoff: float = 0.005,
    max_backoff: float = 0.5,
    on_retry: Callable[[int, TicketConflictError], None] | None = None,
) -> T:
    """Runs ``fn(conn)`` in a transaction and commits; on TicketConflictError rolls back and
    runs it again, up to `retries` more times, after a jittered exponential backoff.

    `fn` must build everything it writes (its entries included) afresh on each call. Any other
    exception rolls back and propagates at once.

    Args:
        conn: A connection with no transaction open.
        fn: The unit of work.
        retries: Retries after the first attempt.
        backoff: The first retry waits up to this many seconds; each retry doubles it.
        max_backoff: The cap on one wait.
        on_retry: Called with (attempt number, the conflict) before each retry.

    Returns:
        What `fn` returned on the attempt that committed.

    Raises:
        TicketConflictError: The last attempt conflicted too.
        InvalidParameterError: A transaction is already open on `conn` (a retry inside it
            could not start from a fresh snapshot), or a parameter is negative.
    """
    check_retry_arguments(conn, retries, backoff, max_backoff)
    attempt = 0
    while True:
        try:
            async with conn.transaction():
                return await fn(conn)
        except TicketConflictError as conflict:
            attempt += 1
            if attempt > retries:
                raise
            if on_retry is not None:
                on_retry(attempt, conflict)
            wait = backoff_seconds(attempt, backoff, max_backoff)
            logger.debug(
                "retry %d after a ticket conflict (%s), in %.3f s", attempt, conflict, wait
            )
            await asleep(wait)
