"""oplog in the transactions of real frameworks: Django's transaction.atomic(), a SQLAlchemy 2
Session, psycopg_pool (sync and asyncio). Each writes entries in the caller's transaction, and
they commit or roll back with it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import oplog
from oplog import aio
from oplog.proto.oplog_test_pb2 import TestUser
from tests.db import CATALOG, TEST_TABLES, WRAPPER, count
from tests.pg import Server

LOG = oplog.Oplog(WRAPPER, CATALOG)


def _user(i: int, op: oplog.OpType = oplog.OpType.CREATE) -> list[oplog.Operation]:
    mask = ("name",) if op == oplog.OpType.UPDATE else ()
    return [oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", op, mask)]


@pytest.fixture(scope="module")
def app_dsn(pg: Server) -> Iterator[str]:
    """An application's database: migrated, with the test tables."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_apps with (force)")
        admin.execute("create database t_apps")
    dsn = pg.dsn_for("t_apps")
    with psycopg.connect(dsn, autocommit=True) as conn:
        oplog.migrate(conn)
        conn.execute(TEST_TABLES.encode())
    yield dsn
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_apps with (force)")


@pytest.fixture
def check(app_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection that sees what was committed, the tables emptied first."""
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("truncate oplog_entry, oplog_metadata, oplog_ticket, users cascade")
        yield conn


def _django(app_dsn: str) -> Any:
    """Django configured for the application's database (once per process)."""
    import django
    from django.conf import settings

    if not settings.configured:
        params = conninfo_to_dict(app_dsn)
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": params["dbname"],
                    "USER": params.get("user", ""),
                    "PASSWORD": params.get("password", ""),
                    "HOST": params.get("host", ""),
                    "PORT": params.get("port", ""),
                }
            },
            USE_TZ=True,
            INSTALLED_APPS=[],
        )
        django.setup()
    from django.db import connection, transaction

    return connection, transaction


def test_django_atomic_commits_and_rolls_back_the_entries(
    app_dsn: str, check: psycopg.Connection[Any]
) -> None:
    """Inside transaction.atomic(), write, write_many and apply on Django's psycopg connection
    join its transaction: committed with it, rolled back with it (and by a savepoint)."""
    connection, transaction = _django(app_dsn)
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:  # the ORM's own statement, same transaction
                cursor.execute("insert into users (id, name) values (1, 'django')")
            conn = connection.connection
            LOG.write(conn, "users", _user(1, oplog.OpType.UPDATE))
            LOG.write_many(conn, [("users", _user(2, oplog.OpType.DELETE), None)])
            LOG.apply(conn, "users", _user(3))
        assert count(check, "oplog_entry") == 3
        assert count(check, "users") == 2

        def failing(i: int) -> None:
            with transaction.atomic():  # the outermost: a transaction; inside one: a savepoint
                LOG.write(connection.connection, "users", _user(i, oplog.OpType.DELETE))
                raise RuntimeError("the view failed")

        with pytest.raises(RuntimeError):
            failing(4)
        with transaction.atomic():
            LOG.write(connection.connection, "users", _user(5, oplog.OpType.DELETE))
            with pytest.raises(RuntimeError):
                failing(6)
        assert count(check, "oplog_entry") == 4
        assert count(check, "users") == 2
    finally:
        connection.close()


def _driver_connection(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under a Session's transaction (SQLAlchemy's driver connection)."""
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    return conn


def test_a_sqlalchemy_session_commits_and_rolls_back_the_entries(
    app_dsn: str, check: psycopg.Connection[Any]
) -> None:
    """In a SQLAlchemy 2 Session transaction the driver connection (psycopg) carries the
    entries with the session's own statements; a rollback takes both."""
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(app_dsn))
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("insert into users (id, name) values (1, 'sqlalchemy')"))
            conn = _driver_connection(session)
            LOG.write(conn, "users", _user(1, oplog.OpType.UPDATE))
            LOG.apply(conn, "users", _user(2))
        assert count(check, "oplog_entry") == 2

        def failing() -> None:
            with Session(engine) as session, session.begin():
                conn = _driver_connection(session)
                LOG.write(conn, "users", _user(3, oplog.OpType.DELETE))
                raise RuntimeError("the request failed")

        with pytest.raises(RuntimeError):
            failing()
        assert count(check, "oplog_entry") == 2
        assert count(check, "users") == 2
    finally:
        engine.dispose()


def test_a_psycopg_pool_connection_commits_and_rolls_back_the_entries(
    app_dsn: str, check: psycopg.Connection[Any]
) -> None:
    """pool.connection() is a transaction: entries written in it commit when the block ends
    and roll back when it raises (sync and asyncio pools)."""
    with ConnectionPool(app_dsn, min_size=1, max_size=2, open=True) as pool:
        with pool.connection() as conn:
            LOG.write(conn, "users", _user(1, oplog.OpType.DELETE))
            LOG.write_many(conn, [("users", _user(2, oplog.OpType.DELETE), None)])

        def failing() -> None:
            with pool.connection() as conn:
                LOG.write(conn, "users", _user(3, oplog.OpType.DELETE))
                raise RuntimeError("the job failed")

        with pytest.raises(RuntimeError):
            failing()
    assert count(check, "oplog_entry") == 2

    async def with_asyncio() -> None:
        log = aio.AsyncOplog(WRAPPER, CATALOG)
        async with AsyncConnectionPool(app_dsn, min_size=1, max_size=2, open=False) as pool:
            async with pool.connection() as conn:
                await log.apply(conn, "users", _user(4))

            async def failing() -> None:
                async with pool.connection() as conn:
                    await log.write(conn, "users", _user(5, oplog.OpType.DELETE))
                    raise RuntimeError("the task failed")

            with pytest.raises(RuntimeError):
                await failing()

    asyncio.run(with_asyncio())
    assert count(check, "oplog_entry") == 3
    assert count(check, "users") == 1


def test_run_in_transaction_needs_a_connection_with_no_transaction_open(
    app_dsn: str, check: psycopg.Connection[Any]
) -> None:
    """run_in_transaction opens (and retries) its own transaction: on a connection already in
    one (a framework's, or after any read on a non-autocommit psycopg connection) it refuses
    with InvalidParameterError; on an idle one (autocommit, or just committed) it works."""
    with psycopg.connect(app_dsn) as conn:
        conn.execute("select 1")  # psycopg opened a transaction for it
        with pytest.raises(oplog.InvalidParameterError, match="no transaction open"):
            oplog.run_in_transaction(conn, lambda c: LOG.write(c, "users", _user(1)))
        conn.commit()
        oplog.run_in_transaction(conn, lambda c: LOG.write(c, "users", _user(1)))
    assert count(check, "oplog_entry") == 1
