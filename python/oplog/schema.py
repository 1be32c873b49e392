"""The bundled database migrations and the functions that apply them.

Migrations live in the package (``oplog/migrations/postgres/NNNN_name.{up,down}.sql``); applied
versions are recorded in ``oplog_schema_migrations``. Every function takes a transaction-scoped
advisory lock first, so concurrent callers (two processes starting at once) apply each migration
exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from oplog import _sql
from oplog._db import execute
from oplog.errors import InvalidParameterError

__all__ = ["Migration", "applied_versions", "migrate", "migrate_down", "migrations"]

# An arbitrary constant naming oplog's migration lock (pg_advisory_xact_lock takes a bigint).
_LOCK_KEY = 0x6F706C6F67  # "oplog"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered migration with its up and down SQL."""

    version: int
    name: str
    up: str
    down: str


def migrations() -> list[Migration]:
    """The bundled migrations, in version order."""
    root = resources.files("oplog") / "migrations" / "postgres"
    found: dict[int, dict[str, str]] = {}
    names: dict[int, str] = {}
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        names[version] = match.group(2)
        found.setdefault(version, {})[match.group(3)] = entry.read_text(encoding="utf-8")
    return [Migration(v, names[v], found[v]["up"], found[v].get("down", "")) for v in sorted(found)]


def _lock(conn: psycopg.Connection[Any]) -> None:
    execute(conn, _sql.MIGRATIONS_LOCK, (_LOCK_KEY,))
    execute(conn, _sql.MIGRATIONS_TABLE)


def _applied(conn: psycopg.Connection[Any]) -> set[int]:
    rows = execute(conn, _sql.MIGRATIONS_APPLIED).fetchall()
    return {int(row[0]) for row in rows}


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    """The migration versions recorded as applied (empty when oplog was never migrated)."""
    exists = execute(conn, _sql.MIGRATIONS_EXIST).fetchone()
    if not exists or not exists[0]:
        return []
    return sorted(_applied(conn))


def migrate(conn: psycopg.Connection[Any], *, target: int | None = None) -> list[int]:
    """Applies the bundled migrations that are missing, up to `target` (default: all).

    Runs in a transaction of its own (or a savepoint of the caller's): either every missing
    migration is applied, or none. Idempotent, and safe to call from several processes at once.

    Returns:
        The versions applied by this call, in order.
    """
    applied_now: list[int] = []
    with conn.transaction():
        _lock(conn)
        done = _applied(conn)
        for m in migrations():
            if m.version in done or (target is not None and m.version > target):
                continue
            execute(conn, m.up.encode())
            execute(conn, _sql.MIGRATION_RECORD, (m.version, m.name))
            applied_now.append(m.version)
    return applied_now


def migrate_down(conn: psycopg.Connection[Any], *, target: int = 0) -> list[int]:
    """Reverts applied migrations newer than `target` (default: all of them), newest first.

    Returns:
        The versions reverted by this call.

    Raises:
        InvalidParameterError: `target` is negative.
    """
    if target < 0:
        raise InvalidParameterError(f"target must be >= 0, not {target}")
    reverted: list[int] = []
    with conn.transaction():
        _lock(conn)
        done = _applied(conn)
        for m in reversed(migrations()):
            if m.version not in done or m.version <= target:
                continue
            execute(conn, m.down.encode())
            execute(conn, _sql.MIGRATION_FORGET, (m.version,))
            reverted.append(m.version)
    return reverted
