"""Migrations: bundled, idempotent, concurrent-safe, reversible; entries are immutable."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

import oplog
from oplog import schema
from tests.pg import Server


@pytest.fixture
def empty_dsn(pg: Server) -> Iterator[str]:
    """A database with nothing in it."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_schema_empty with (force)")
        admin.execute("create database t_schema_empty")
    yield pg.dsn_for("t_schema_empty")
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_schema_empty with (force)")


def _tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrations_are_bundled_in_the_package() -> None:
    """The package carries numbered up and down SQL, starting at 1."""
    found = schema.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(m.up.strip() and m.down.strip() for m in found)


def test_migrate_applies_everything_once(empty_dsn: str) -> None:
    """migrate() creates the oplog tables, records the versions, and does nothing the 2nd time."""
    with psycopg.connect(empty_dsn) as conn:
        applied = oplog.migrate(conn)
        assert applied == [m.version for m in schema.migrations()]
        assert {"oplog_entry", "oplog_ticket", "oplog_metadata"} <= _tables(conn)
        assert oplog.migrate(conn) == []
        assert schema.applied_versions(conn) == applied
        conn.commit()


def test_concurrent_migrations_apply_each_version_once(empty_dsn: str) -> None:
    """Four connections migrating at once: one applies, the others find nothing to do."""
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            with psycopg.connect(empty_dsn, autocommit=True) as conn:
                barrier.wait()
                results.append(oplog.migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    everything = [m.version for m in schema.migrations()]
    assert sorted(results, key=len) == [[], [], [], everything]


def test_migrate_down_reverts_everything(empty_dsn: str) -> None:
    """migrate_down() drops what migrate() created, and the log can be migrated again."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        oplog.migrate(conn)
        assert oplog.migrate_down(conn) == [m.version for m in reversed(schema.migrations())]
        assert _tables(conn) == {"oplog_schema_migrations"}
        assert schema.applied_versions(conn) == []
        assert oplog.migrate(conn) != []
        with pytest.raises(oplog.InvalidParameterError):
            oplog.migrate_down(conn, target=-1)


def test_a_failing_migration_leaves_nothing_behind(empty_dsn: str) -> None:
    """If applying fails part-way, no table and no version record remain."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("create table oplog_ticket (x int)")  # makes migration 1 fail
        with pytest.raises(pg_errors.DuplicateTable):
            oplog.migrate(conn)
        assert _tables(conn) == {"oplog_ticket"}
        assert schema.applied_versions(conn) == []


def _write_entry(conn: psycopg.Connection[Any]) -> int:
    from tests.db import CATALOG, WRAPPER

    log = oplog.Oplog(WRAPPER, CATALOG)
    from oplog.proto.oplog_test_pb2 import TestUser

    entry = log.write(
        conn,
        "users",
        [oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)],
        metadata={"k": ["v"]},
    )
    assert entry.id is not None
    return entry.id


@pytest.mark.parametrize(
    "statement",
    [
        "update oplog_entry set aggregate_name = 'other'",
        "update oplog_entry set data = '\\x00'::bytea",
        "update oplog_entry set key_id = key_id",
        "update oplog_metadata set value = 'changed'",
        "update oplog_metadata set key = key",
    ],
)
def test_entries_and_metadata_are_immutable(conn: psycopg.Connection[Any], statement: str) -> None:
    """Updating any column of an entry or metadata row is rejected by the database."""
    _write_entry(conn)
    conn.commit()
    with pytest.raises(pg_errors.RestrictViolation, match="immutable"):
        conn.execute(statement.encode())
    conn.rollback()


def test_deleting_an_entry_deletes_its_metadata(conn: psycopg.Connection[Any]) -> None:
    """Entries can be deleted (retention); their metadata goes with them."""
    entry_id = _write_entry(conn)
    conn.execute("delete from oplog_entry where id = %s", (entry_id,))
    row = conn.execute("select count(*) from oplog_metadata").fetchone()
    assert row == (0,)
