"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(dsn: str) -> None:
    """Every ```python block of the README executes without error (`dsn` is a test database)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "the README has lost its Python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme", "dsn": dsn})
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from users_replay").fetchone() == (1,)
