"""Running a unit of work in a transaction, retrying it when a ticket conflict says so."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from oplog.errors import InvalidParameterError, TicketConflictError

__all__ = ["backoff_seconds", "check_retry_arguments", "run_in_transaction"]

T = TypeVar("T")


def check_retry_arguments(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    retries: int,
    backoff: float,
    max_backoff: float,
) -> None:
    """Raises InvalidParameterError for negative settings or a connection mid-transaction."""
    if retries < 0 or backoff < 0 or max_backoff < 0:
        raise InvalidParameterError("retries, backoff and max_backoff must be >= 0")
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise InvalidParameterError(
            "run_in_transaction needs a connection with no transaction open"
        )


def backoff_seconds(attempt: int, backoff: float, max_backoff: float) -> float:
    """How long to wait before retry `attempt` (1-based): full jitter over an exponential cap,
    so that concurrent losers spread out instead of colliding again in step."""
    return random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1)))


def run_in_transaction(
    conn: psycopg.Connection[Any],
    fn: Callable[[psycopg.Connection[Any]], T],
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
            with conn.transaction():
                return fn(conn)
        except TicketConflictError as conflict:
            attempt += 1
            if attempt > retries:
                raise
            if on_retry is not None:
                on_retry(attempt, conflict)
            time.sleep(backoff_seconds(attempt, backoff, max_backoff))
