"""Reading a log to look at it (oplog/inspection.py): filters, entries that do not decrypt
reported and not raised, counts."""

from __future__ import annotations

from typing import Any

import psycopg

import oplog
from oplog import inspection
from tests.db import CATALOG, WRAPPER, commit_entry, user_create


def test_entry_ids_filter_by_aggregate_metadata_after_and_limit(
    conn: psycopg.Connection[Any],
) -> None:
    """entry_ids keeps the entries after an id, of an aggregate, carrying every given metadata
    pair, in id order, up to a limit."""
    commit_entry(conn, "a", "1", source="x")
    commit_entry(conn, "b", "2", source="x")
    commit_entry(conn, "a", "3", source="y")
    commit_entry(conn, "a", "4", source="x")
    ids = inspection.entry_ids(conn)
    assert len(ids) == 4
    assert ids == sorted(ids)
    assert inspection.entry_ids(conn, aggregate="a") == [ids[0], ids[2], ids[3]]
    assert inspection.entry_ids(conn, metadata=[("source", "x")]) == [ids[0], ids[1], ids[3]]
    assert inspection.entry_ids(conn, aggregate="a", metadata=[("source", "x")], limit=1) == [
        ids[0]
    ]
    assert inspection.entry_ids(conn, after=ids[2]) == [ids[3]]
    assert inspection.entry_ids(conn, metadata=[("source", "x"), ("source", "y")]) == []
    assert inspection.entry_metadata(conn, ids[:2]) == {
        ids[0]: {"source": ["x"]},
        ids[1]: {"source": ["x"]},
    }


def test_stored_entries_report_an_entry_that_does_not_decrypt(
    conn: psycopg.Connection[Any],
) -> None:
    """stored_entries yields every entry decrypted, and for one under another key a problem
    instead of an exception, and goes on to the next."""
    commit_entry(conn, "a", "mine")
    stranger = oplog.Oplog(oplog.AeadWrapper.generate("other-key"), CATALOG)
    stranger.write(conn, "a", [user_create("theirs")])
    commit_entry(conn, "a", "mine again")
    with conn.transaction():
        found = list(inspection.stored_entries(conn, WRAPPER))
    assert [error is None for _, _, error in found] == [True, False, True]
    entry, _, _ = found[0]
    assert entry is not None
    assert entry.unmarshal_data(CATALOG)[0].message.name == "mine"  # type: ignore[attr-defined]
    _, bad_id, error = found[1]
    assert error is not None
    assert error.startswith("does not decrypt")
    assert inspection.count_entries(conn) == 3
    with conn.transaction():
        assert [i for _, i, _ in inspection.stored_entries(conn, WRAPPER, [bad_id])] == [bad_id]


def test_log_stats_count_per_aggregate_key_ticket_and_consumer(
    conn: psycopg.Connection[Any],
) -> None:
    """log_stats counts entries and bytes per aggregate, entries per key id, ticket versions,
    and lists consumers with their positions."""
    for aggregate in ("a", "a", "b"):
        commit_entry(conn, aggregate, "x")
    oplog.Consumer("reader").save(conn, oplog.Checkpoint.START)
    conn.commit()
    stats = inspection.log_stats(conn)
    assert [(a, n) for a, n, *_ in stats.aggregates] == [("a", 2), ("b", 1)]
    assert all(size > 0 for _, _, size, _, _ in stats.aggregates)
    assert stats.keys == [(WRAPPER.key_id, 3)]
    assert stats.tickets == [("a", 3), ("b", 2)]
    assert [(name, checkpoint) for name, checkpoint, _ in stats.consumers] == [
        ("reader", str(oplog.Checkpoint.START))
    ]
