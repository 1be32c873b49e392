"""The bundled database migrations and the functions that apply them.

Migrations live in the package (``oplog/migrations/postgres/NNNN_name.{up,down}.sql``); applied
versions are recorded in ``oplog_schema_migrations``. Every function takes a transaction-scoped
advisory lock first, so concurrent callers (two processes starting at once) apply each migration
exactly once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from oplog import _sql
from oplog._db import execute
from oplog.errors import DecryptError, InvalidParameterError, SchemaError
from oplog.wrapping import blob_key_id

logger = logging.getLogger("oplog")

__all__ = [
    "Migration",
    "applied_versions",
    "boundary_tables",
    "migrate",
    "migrate_down",
    "migrations",
]

# An arbitrary constant naming oplog's migration lock (pg_advisory_xact_lock takes a bigint).
_LOCK_KEY = 0x6F706C6F67  # "oplog"
_ADOPT_BATCH = 5000  # entries whose key ids are filled per statement when adopting
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


def boundary_tables(conn: psycopg.Connection[Any]) -> int | None:
    """How many entries HashiCorp Boundary's oplog tables hold, when the database has them and
    oplog has not adopted them yet (no oplog migration recorded, ``oplog_entry`` without
    ``key_id``); None otherwise. :func:`migrate` adopts them."""
    row = execute(conn, _sql.BOUNDARY_TABLES).fetchone()
    if not row or not row[0] or applied_versions(conn):
        return None
    found = execute(conn, _sql.COUNT_ENTRIES).fetchone()
    return int(found[0]) if found else 0


def _adopt_boundary_tables(conn: psycopg.Connection[Any]) -> int:
    """Brings Boundary's oplog tables to oplog's migration 1 in place (in the caller's
    transaction): adds ``key_id``, fills it from each entry's blob, adds migration 1's
    constraints, indexes and triggers, and records migration 1. Returns the entries adopted.

    Raises:
        SchemaError: An entry's data is not a blob naming its key (nothing is changed).
    """
    execute(conn, _sql.ADD_KEY_ID)
    adopted = 0
    with conn.cursor(name="oplog_adopt") as blobs:
        blobs.itersize = _ADOPT_BATCH
        blobs.execute(_sql.ENTRY_BLOBS)
        while rows := blobs.fetchmany(_ADOPT_BATCH):
            ids, key_ids = [], []
            for entry_id, data in rows:
                try:
                    key_id = blob_key_id(bytes(data))
                except DecryptError as exc:
                    raise SchemaError(f"cannot adopt entry {entry_id}: {exc}") from None
                if not key_id:
                    raise SchemaError(f"cannot adopt entry {entry_id}: its blob names no key")
                ids.append(entry_id)
                key_ids.append(key_id)
            execute(conn, _sql.SET_KEY_IDS, (ids, key_ids))
            adopted += len(rows)
    execute(conn, _adoption_sql().encode())
    first = migrations()[0]
    execute(conn, _sql.MIGRATION_RECORD, (first.version, first.name))
    logger.info("adopted the Boundary oplog tables: %d entries", adopted)
    return adopted


def _adoption_sql() -> str:
    root = resources.files("oplog") / "migrations" / "postgres"
    return (root / "boundary_adopt.sql").read_text(encoding="utf-8")


def migrate(conn: psycopg.Connection[Any], *, target: int | None = None) -> list[int]:
    """Applies the bundled migrations that are missing, up to `target` (default: all).

    Runs in a transaction of its own (or a savepoint of the caller's): either every missing
    migration is applied, or none. Idempotent, and safe to call from several processes at once.

    A database holding HashiCorp Boundary's oplog tables (its ``internal/oplog`` layout, no
    ``key_id`` column) is adopted in place first: ``key_id`` added and filled from each entry's
    blob, migration 1's constraints, indexes and triggers added, migration 1 recorded; no
    entry is rewritten or lost. See :func:`boundary_tables`.

    Returns:
        The versions applied by this call, in order (1 included when it adopted).

    Raises:
        SchemaError: Boundary's tables hold an entry whose data is not a blob naming its key.
    """
    applied_now: list[int] = []
    with conn.transaction():
        _lock(conn)
        if (
            (target is None or target >= 1)
            and not _applied(conn)
            and boundary_tables(conn) is not None
        ):
            _adopt_boundary_tables(conn)
            applied_now.append(migrations()[0].version)
        done = _applied(conn)
        for m in migrations():
            if m.version in done or (target is not None and m.version > target):
                continue
            execute(conn, m.up.encode())
            execute(conn, _sql.MIGRATION_RECORD, (m.version, m.name))
            logger.info("applied oplog migration %d (%s)", m.version, m.name)
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
            logger.info("reverted oplog migration %d (%s)", m.version, m.name)
            reverted.append(m.version)
    return reverted
