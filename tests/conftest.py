"""Test-session configuration shared by every test module."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings

import oplog
from tests.db import TEST_TABLES, reset
from tests.drivers import DRIVERS, Driver
from tests.pg import Server, running_server

# The machine is shared and noisy: no per-example deadline, and no failure when the first draw
# is slow (Hypothesis builds its Unicode tables on first use).
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    max_examples=300,
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


# --- PostgreSQL -------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test that uses the database `db`, so `-m db` selects them."""
    for item in items:
        if "pg" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


_TEMPLATE = "oplog_template"


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    """The session's PostgreSQL server (see tests/pg.py for how it is chosen)."""
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def template_db(pg: Server) -> str:
    """A database with oplog migrated and the test tables created, to copy per module."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {_TEMPLATE} with (force)")
        admin.execute(f"create database {_TEMPLATE}")
    with psycopg.connect(pg.dsn_for(_TEMPLATE), autocommit=True) as conn:
        oplog.migrate(conn)
        conn.execute(TEST_TABLES.encode())
    return _TEMPLATE


@pytest.fixture(scope="module")
def dsn(pg: Server, template_db: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for the test module, copied from the template."""
    name = "t_" + re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.execute(f"create database {name} template {template_db}")
    yield pg.dsn_for(name)
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection (autocommit off) to the module's database, its tables emptied first."""
    with psycopg.connect(dsn) as connection:
        reset(connection)
        yield connection
        connection.rollback()


@pytest.fixture
def connect(
    dsn: str, conn: psycopg.Connection[Any]
) -> Iterator[Callable[..., psycopg.Connection[Any]]]:
    """Opens more connections to the module's database (emptied first, through `conn`); all
    are closed after the test."""
    opened: list[psycopg.Connection[Any]] = []

    def _connect(**kwargs: Any) -> psycopg.Connection[Any]:
        connection = psycopg.connect(dsn, **kwargs)
        opened.append(connection)
        return connection

    yield _connect
    for connection in opened:
        connection.close()


@pytest.fixture(params=sorted(DRIVERS))
def make_driver(
    request: pytest.FixtureRequest, dsn: str, conn: psycopg.Connection[Any]
) -> Iterator[Callable[..., Driver]]:
    """Opens drivers of one kind (sync or async) on the emptied module database."""
    opened: list[Driver] = []

    def make(isolation: psycopg.IsolationLevel | None = None, **connect: Any) -> Driver:
        driver = DRIVERS[request.param](dsn, isolation, **connect)
        opened.append(driver)
        return driver

    yield make
    for driver in opened:
        driver.close()


@pytest.fixture
def consumed(conn: psycopg.Connection[Any]) -> str:
    """A table consumers in these tests apply entries to (no unique key: duplicates count)."""
    conn.execute("create table consumed (entry_id bigint not null, name text not null)")
    conn.commit()
    return "consumed"
