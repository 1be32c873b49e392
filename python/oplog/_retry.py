"""The arguments and waits of :func:`oplog.run_in_transaction` (sync and asyncio)."""

from __future__ import annotations

import random
from typing import Any

import psycopg
from psycopg import pq

from oplog.errors import InvalidParameterError

__all__ = ["backoff_seconds", "check_retry_arguments"]


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
