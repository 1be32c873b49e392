"""PostgreSQL servers for the test suite.

``OPLOG_TEST_DSN`` names an existing server (its user must be able to create databases).
Otherwise ``OPLOG_TEST_SERVER`` chooses one the session starts itself:

- ``pgserver`` (default): the embedded PostgreSQL 16 of the ``pgserver`` package.
- ``pg15``: Debian's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``), run as the ``postgres``
  user when the tests run as root (the server refuses to run as root), on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Server:
    """A running server: `dsn` connects to its maintenance database as a superuser."""

    dsn: str
    name: str

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database `dbname` on this server."""
        return make_conninfo(self.dsn, dbname=dbname)

    def version(self) -> str:
        """The server's version string."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("show server_version").fetchone()
            assert row is not None
            return str(row[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pg15(Server):
    """A Debian PostgreSQL 15 server of the test's own, which it can crash and restart."""

    pg_ctl: tuple[str, ...] = ()
    data: Path = Path()
    options: str = ""
    log: Path = Path()

    def crash(self) -> None:
        """Stops the server as a crash would (``pg_ctl -m immediate``): no checkpoint, and
        what was committed but not yet flushed to the WAL is lost."""
        subprocess.run([*self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       check=True, capture_output=True)  # fmt: skip

    def start(self) -> None:
        """Starts the server (again): after a crash, it recovers from its WAL."""
        subprocess.run(
            [*self.pg_ctl, "-D", str(self.data), "-o", self.options, "-l", str(self.log),
             "-w", "start"],
            check=True, capture_output=True,
        )  # fmt: skip


@contextlib.contextmanager
def _pg15(settings: str = "") -> Iterator[Pg15]:
    if not (PG15_BIN / "postgres").exists():
        raise RuntimeError(f"Debian's PostgreSQL 15 is not installed in {PG15_BIN}")
    root = Path(tempfile.mkdtemp(prefix="oplog-pg15-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200"
    options += f" {settings}" if settings else ""
    server = Pg15(
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres", "pg15",
        (*as_postgres, str(PG15_BIN / "pg_ctl")), data, options, root / "log",
    )  # fmt: skip
    try:
        subprocess.run(
            [*as_postgres, str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.crash()
        shutil.rmtree(root, ignore_errors=True)


def crashable_pg15(settings: str = "") -> contextlib.AbstractContextManager[Pg15]:
    """A fresh PostgreSQL 15 server (with `settings`, ``-c name=value ...``) that the test
    may crash and restart."""
    return _pg15(settings)


@contextlib.contextmanager
def _pgserver() -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix="oplog-pgserver-"))
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as it is under CI); harmless.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

        server = get_server(root, cleanup_mode="delete")
    try:
        yield Server(server.get_uri(), "pgserver")
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def second_server() -> Iterator[Server]:
    """Another server, next to the session's: a fresh embedded PostgreSQL 16."""
    with _pgserver() as server:
        yield Server(server.dsn, "pgserver-2")


def has_pg15() -> bool:
    """Whether Debian's PostgreSQL 15 is installed (scripts/setup.sh installs it)."""
    return (PG15_BIN / "postgres").exists()


@contextlib.contextmanager
def logical_replication_pair() -> Iterator[tuple[Server, Server]]:
    """Two fresh PostgreSQL 15 servers with ``wal_level=logical``: a publisher and a
    subscriber."""
    settings = "-c wal_level=logical -c max_wal_senders=4 -c max_replication_slots=4"
    # A subscription enabled again starts its worker at once, not up to 5 s later.
    settings += " -c wal_retrieve_retry_interval=10ms"
    with _pg15(settings) as publisher, _pg15(settings) as subscriber:
        yield publisher, subscriber


@contextlib.contextmanager
def running_server() -> Iterator[Server]:
    """The server the environment asks for, started (and stopped) if need be."""
    dsn = os.environ.get("OPLOG_TEST_DSN")
    if dsn:
        yield Server(dsn, "dsn")
        return
    kind = os.environ.get("OPLOG_TEST_SERVER", "pgserver")
    if kind == "pg15":
        with _pg15() as server:
            yield server
    elif kind == "pgserver":
        with _pgserver() as server:
            yield server
    else:
        raise RuntimeError(f"OPLOG_TEST_SERVER={kind!r}: expected 'pgserver' or 'pg15'")
