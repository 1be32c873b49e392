"""Database errors, classified: which of the server's errors (by SQLSTATE and the table it
names, never by message text) become which oplog error.

- A serialization failure, deadlock, or unique violation on oplog's own tables (two writers
  creating one ticket): :class:`~oplog.errors.TicketConflictError`, the retryable one
  (:func:`ticket_conflicts`).
- A missing table or column of oplog's where a migration adds it:
  :class:`~oplog.errors.SchemaError` naming the migration (:func:`requiring_migration`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import errors as pg_errors

from oplog.errors import SchemaError, TicketConflictError

__all__ = ["requiring_migration", "ticket_conflicts"]

# SQLSTATEs that mean "another transaction got there first; retry from the start".
_CONFLICTS = (
    pg_errors.SerializationFailure,  # 40001
    pg_errors.DeadlockDetected,  # 40P01
    pg_errors.UniqueViolation,  # 23505
)

# What each migration brings that a statement may miss, for the error that names it.
_MIGRATIONS = {
    1: "the oplog tables with their key_id column",
    2: "entry transaction ids, consumer positions",
    5: "entry tags and chain heads",
}


@contextmanager
def ticket_conflicts(what: str) -> Iterator[None]:
    """Turns serialization failures, deadlocks and unique violations on oplog's own tables
    into TicketConflictError, saying `what` was being done.

    A unique violation on the caller's data (Oplog.apply) is not a conflict a retry can
    resolve, and passes through.
    """
    try:
        yield
    except _CONFLICTS as exc:
        if isinstance(exc, pg_errors.UniqueViolation) and not (
            exc.diag.table_name or ""
        ).startswith("oplog_"):
            raise
        raise TicketConflictError(f"{what}: {exc.sqlstate} {exc.diag.message_primary}") from exc


@contextmanager
def requiring_migration(version: int) -> Iterator[None]:
    """Reports a database without oplog migration `version` (a table or column the
    statements in the block need) as a SchemaError saying how to apply it."""
    try:
        yield
    except (pg_errors.UndefinedColumn, pg_errors.UndefinedTable) as exc:
        brings = _MIGRATIONS.get(version)
        what = f" ({brings})" if brings else ""
        raise SchemaError(
            f"the database lacks oplog migration {version}{what}: apply it with oplog.migrate"
            " (`oplog migrate`), which also adopts HashiCorp Boundary's oplog tables in place"
            f" ({exc.diag.message_primary})"
        ) from exc
