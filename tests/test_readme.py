"""The README's examples run as written: each Python block on its own, in a fresh interpreter,
given only OPLOG_DSN, and again (what they keep, their key and tables, lets a second run work);
every shell command that can run here, in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

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


# Shell examples that cannot run as written here, and why.
_NOT_HERE = {
    # A checkpoint of the server the README's output came from: ahead of any test server.
    "oplog tail --after '1:1:;1035:1035:;5'",
}
# Examples that show an error: the exit code they document.
_EXIT = {"oplog show 99": 6}


def test_readme_shell_examples_run(pg: Server, tmp_path: Path) -> None:
    """Every `$ command` of the README's shell examples runs, in order, in a shell whose libpq
    environment names a test server (so `dbname=replica` and createdb/psql find it) and whose
    OPLOG_DSN is a fresh database: each exits 0, or with the code its output shows."""
    text = README.read_text()
    commands = [
        line[2:]
        for kind, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.DOTALL)
        if kind != "python"
        for line in body.splitlines()
        if line.startswith("$ ")
    ]
    assert len(commands) >= 15, "the README has lost its shell examples"
    params = conninfo_to_dict(pg.dsn)
    libpq = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    env = {var: str(params[key]) for key, var in libpq.items() if params.get(key)}
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        for name in ("t_readme_shell", "replica"):
            admin.execute(f"drop database if exists {name} with (force)")
        admin.execute("create database t_readme_shell")
    env.update(
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        OPLOG_DSN=pg.dsn_for("t_readme_shell"),
        OPLOG_KEY_FILE=str(tmp_path / "keys.json"),
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        HOME=str(tmp_path),
    )
    ran = 0
    try:
        for command in commands:
            if command in _NOT_HERE:
                continue
            result = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command], env=env, cwd=tmp_path,
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            expected = _EXIT.get(command, 0)
            assert result.returncode == expected, (command, result.stdout, result.stderr)
            ran += 1
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            for name in ("t_readme_shell", "replica"):
                admin.execute(f"drop database if exists {name} with (force)")
    assert ran == len(commands) - len(_NOT_HERE)
