"""The README's Python examples run as written: each on its own, in a fresh interpreter, given
only OPLOG_DSN, and again (what they keep, their key and tables, lets a second run work)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.pg import Server

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(pg: Server, tmp_path: Path) -> None:
    """Every ```python block of the README runs with nothing but OPLOG_DSN (a fresh database)
    in its environment, twice, in a directory of its own."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3, "the README has lost its Python examples"
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_readme with (force)")
        admin.execute("create database t_readme")
    env = {"OPLOG_DSN": pg.dsn_for("t_readme"), "PATH": os.environ.get("PATH", "")}
    try:
        for run in (1, 2):
            for number, block in enumerate(blocks, start=1):
                result = subprocess.run(
                    [sys.executable, "-c", block], env=env, cwd=tmp_path,
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert result.returncode == 0, f"block {number}, run {run}:\n{result.stderr}"
        with psycopg.connect(pg.dsn_for("t_readme")) as conn:
            # The first block's second replay: Alice, Eve (the third block), Alice again.
            assert conn.execute("select count(*) from users_replay").fetchone() == (3,)
            assert conn.execute("select count(*) from users").fetchone() == (4,)
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("drop database if exists t_readme with (force)")
