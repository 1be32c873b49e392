"""The asyncio API: :class:`AsyncOplog`, :class:`AsyncConsumer` and :func:`run_in_transaction`
on ``psycopg.AsyncConnection``, and the asyncio lower level (:class:`AsyncWriter`,
:class:`AsyncReplayer`).

These are the hand-written implementations; the sync API (:class:`oplog.Oplog` and the rest)
is generated from them, so the two have the same methods, parameters and semantics.
"""

from __future__ import annotations

from oplog.consumer_async import AsyncConsumer
from oplog.log_async import AsyncOplog
from oplog.replay_async import AsyncReplayer
from oplog.transaction_async import run_in_transaction
from oplog.writer_async import AsyncWriter

__all__ = ["AsyncConsumer", "AsyncOplog", "AsyncReplayer", "AsyncWriter", "run_in_transaction"]
