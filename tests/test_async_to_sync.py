"""scripts/async_to_sync.py: what it makes of asyncio code, and that the committed sync modules
are what it makes of their sources."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "async_to_sync.py"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    """The script, imported as a module."""
    spec = importlib.util.spec_from_file_location("async_to_sync", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["async_to_sync"] = module
    spec.loader.exec_module(module)
    return module


def test_async_and_await_go_and_names_become_their_sync_twins(tool: ModuleType) -> None:
    """async def/with/for and await are dropped, parentheses that held only an awaited call
    go, and the asyncio names (also in docstrings) become their sync twins."""
    source = (
        "async def f(conn: psycopg.AsyncConnection[Any]) -> None:\n"
        '    """Uses an AsyncOplog."""\n'
        "    async with conn.transaction():\n"
        "        row = await (await aexecute(conn, q)).fetchone()\n"
        "        async for x in conn.notifies():\n"
        "            await asleep(1)\n"
    )
    assert tool.convert(source) == (
        "def f(conn: psycopg.Connection[Any]) -> None:\n"
        '    """Uses an Oplog."""\n'
        "    with conn.transaction():\n"
        "        row = execute(conn, q).fetchone()\n"
        "        for x in conn.notifies():\n"
        "            sleep(1)\n"
    )


def test_parentheses_around_more_than_a_call_stay(tool: ModuleType) -> None:
    """(await a + b).c keeps its parentheses: dropping them would change the meaning."""
    assert tool.convert("x = (await a + b).c\n") == "x = (a + b).c\n"


def test_awaitables_and_async_generators_become_their_sync_types(tool: ModuleType) -> None:
    """Awaitable[T] is T; AsyncGenerator[Y, S] is Generator[Y, S, None]."""
    source = "f: Callable[[], Awaitable[int]]\ng: AsyncGenerator[int, None]\n"
    assert tool.convert(source) == "f: Callable[[], int]\ng: Generator[int, None, None]\n"


def test_sync_directives_replace_or_drop_a_line(tool: ModuleType) -> None:
    """A line ending in '# sync: CODE' becomes CODE (indented as it was); '# sync: -' drops
    the line."""
    source = (
        "    import asyncio  # sync: import threading\n# only in the source  # sync: -\nx = 1\n"
    )
    assert tool.convert(source) == "    import threading\nx = 1\n"


def test_the_committed_sync_modules_are_current(tool: ModuleType) -> None:
    """Each generated module is exactly what the script makes of its asyncio source (what
    `make lint` checks with --check)."""
    for module in tool.MODULES:
        path = tool.PACKAGE / f"{module}.py"
        assert path.read_text() == tool.generate(module), f"{path.name}: run `make sync`"
