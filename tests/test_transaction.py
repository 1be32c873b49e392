"""run_in_transaction (oplog/transaction.py and transaction_async.py), sync and asyncio."""

from __future__ import annotations

import psycopg

import oplog
from tests.db import CATALOG, WRAPPER, batch_items, count, side_write
from tests.drivers import Connect, MakeDriver


def test_run_in_transaction_retries_a_conflict_and_commits_once(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """A conflict on the first attempt rolls it back; the retry builds the batch afresh and
    commits exactly one copy of it."""
    setup = connect(autocommit=True)
    oplog.Oplog(WRAPPER, CATALOG).write_many(setup, batch_items(1, ["a"]))
    d = make_driver(psycopg.IsolationLevel.REPEATABLE_READ)

    def interfere(attempt: int) -> None:
        if attempt == 1:
            side_write(setup, "a")

    ids, retries = d.run_in_transaction(batch_items(5, ["a"]), interfere)
    assert retries == 1
    assert len(ids) == 5
    assert ids == sorted(ids)
    assert count(setup, "oplog_entry") == 2 + 5
    assert setup.execute("select version from oplog_ticket").fetchone() == (4,)
