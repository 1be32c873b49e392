"""The pairs of asyncio and sync helpers that differ by more than ``async`` and ``await``:
scripts/async_to_sync.py turns each asyncio name into its sync twin (``asleep`` into
``sleep``, ``AEvent`` into ``Event``, ``await_event`` into ``wait_event``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

__all__ = [
    "ANO_BLOCK",
    "NO_BLOCK",
    "AEvent",
    "Event",
    "asleep",
    "await_event",
    "sleep",
    "wait_event",
]

AEvent = asyncio.Event
Event = threading.Event
asleep = asyncio.sleep
sleep = time.sleep


class _AsyncNothing:
    """``async with`` that does nothing (contextlib.nullcontext is async from 3.10 only)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        return None


ANO_BLOCK: contextlib.AbstractAsyncContextManager[None] = _AsyncNothing()
NO_BLOCK: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


async def await_event(event: asyncio.Event, timeout: float) -> bool:
    """Waits up to `timeout` seconds for `event`; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


def wait_event(event: threading.Event, timeout: float) -> bool:
    """Waits up to `timeout` seconds for `event`; whether it is set."""
    return event.wait(timeout)
