"""Which database errors become which oplog errors (oplog/_dberrors.py), on a real server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import oplog
from oplog._dberrors import requiring_migration, ticket_conflicts


def test_a_unique_violation_on_a_ticket_is_a_conflict(conn: psycopg.Connection[Any]) -> None:
    """A duplicate ticket (two writers creating one) is a TicketConflictError naming what was
    being done and the SQLSTATE."""
    conn.execute("insert into oplog_ticket (name, version) values ('t', 1)")
    conflict = pytest.raises(oplog.TicketConflictError, match=r"^init 't': 23505 ")
    with conflict, ticket_conflicts("init 't'"):
        conn.execute("insert into oplog_ticket (name, version) values ('t', 1)")
    conn.rollback()


def test_a_unique_violation_on_the_callers_table_passes_through(
    conn: psycopg.Connection[Any],
) -> None:
    """A duplicate key in the caller's own table is the caller's error: a retry cannot
    resolve it, so it is not turned into a conflict."""
    conn.execute("insert into users (id, name) values (1, 'a')")
    with pytest.raises(psycopg.errors.UniqueViolation), ticket_conflicts("apply"):
        conn.execute("insert into users (id, name) values (1, 'b')")
    conn.rollback()


def test_a_missing_table_or_column_names_the_migration(conn: psycopg.Connection[Any]) -> None:
    """An undefined table or column inside requiring_migration(n) is a SchemaError saying
    which migration to apply; other errors pass through."""
    missing = pytest.raises(oplog.SchemaError, match=r"lacks oplog migration 2 .*oplog\.migrate")
    with missing, requiring_migration(2):
        conn.execute("select no_such_column from oplog_entry")
    conn.rollback()
    with pytest.raises(oplog.SchemaError, match="lacks oplog migration 7:"), requiring_migration(7):
        conn.execute("select * from no_such_table")
    conn.rollback()
    with pytest.raises(psycopg.errors.DivisionByZero), requiring_migration(2):
        conn.execute("select 1 / 0")
    conn.rollback()
