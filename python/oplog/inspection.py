"""Reading a log to look at it: entries found by filters, every stored entry with the ones that
do not decrypt reported instead of raised, and counts per aggregate, key and ticket. What the
``oplog`` command's ``ls``, ``show``, ``verify`` and ``stats`` show."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from oplog import _sql, pgarray, schema
from oplog._db import execute
from oplog.entry import Entry, Metadata, group_metadata
from oplog.errors import DecryptError
from oplog.wrapping import Wrapper

__all__ = [
    "LogStats",
    "count_entries",
    "entry_ids",
    "entry_metadata",
    "log_stats",
    "stored_entries",
]


def entry_ids(
    conn: psycopg.Connection[Any],
    *,
    after: int = 0,
    aggregate: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    limit: int | None = None,
) -> list[int]:
    """The ids of the entries after id `after`, of `aggregate` (any when None), carrying every
    ``(key, value)`` of `metadata`, in id order, at most `limit` of them."""
    conditions = [sql.SQL("e.id > %s")]
    params: list[Any] = [after]
    if aggregate is not None:
        conditions.append(sql.SQL("e.aggregate_name = %s"))
        params.append(aggregate)
    for key, value in metadata:
        conditions.append(sql.SQL(_sql.HAS_METADATA))
        params += [key, value]
    query = sql.SQL(_sql.ENTRY_IDS).format(
        sql.SQL(" and ").join(conditions),
        sql.SQL(" limit %s") if limit is not None else sql.SQL(""),
    )
    if limit is not None:
        params.append(limit)
    return [int(row[0]) for row in execute(conn, query, params).fetchall()]


def stored_entries(
    conn: psycopg.Connection[Any], wrapper: Wrapper, ids: list[int] | None = None
) -> Iterator[tuple[Entry | None, int, str | None]]:
    """``(entry, id, None)`` for every stored entry (or those of `ids`), in id order, each
    decrypted (without metadata); ``(None, id, problem)`` for one that does not decrypt. Read
    with a server-side cursor, 500 rows at a time; needs a transaction (or autocommit off)."""
    query, params = (_sql.ALL_ENTRIES, ()) if ids is None else (_sql.ENTRIES_BY_ID, (ids,))
    with conn.cursor(name="oplog_entries") as cur:
        cur.itersize = 500
        cur.execute(query.encode(), params)
        for id_, create_time, version, name, data, key_id in cur:
            entry = Entry.from_row(
                id=id_, create_time=create_time, format_version=version, aggregate_name=name,
                data=bytes(data), key_id=key_id, metadata={}, wrapper=wrapper,
            )  # fmt: skip
            try:
                entry.decrypt_data()
            except DecryptError as exc:
                yield None, id_, f"does not decrypt: {exc}"
                continue
            yield entry, id_, None


def entry_metadata(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, Metadata]:
    """The metadata of the entries `ids`, by entry id (entries without any are absent)."""
    pgarray.register(conn)
    rows = execute(conn, _sql.ENTRY_METADATA, (pgarray.Int8Array.of(ids),)).fetchall()
    return group_metadata(rows)


def count_entries(conn: psycopg.Connection[Any]) -> int:
    """How many entries the log holds."""
    row = execute(conn, _sql.COUNT_ENTRIES).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class LogStats:
    """Counts of a log.

    Attributes:
        aggregates: ``(aggregate name, entries, bytes of data, first id, last id)`` each.
        keys: ``(key id, entries)`` each.
        tickets: ``(ticket name, version)`` each.
        consumers: ``(consumer name, checkpoint, last saved)`` each (none before migration 2).
    """

    aggregates: list[tuple[Any, ...]]
    keys: list[tuple[Any, ...]]
    tickets: list[tuple[Any, ...]]
    consumers: list[tuple[Any, ...]]


def log_stats(conn: psycopg.Connection[Any]) -> LogStats:
    """The log's counts per aggregate, key id and ticket, and its consumers' positions."""
    consumers = (
        execute(conn, _sql.CONSUMERS).fetchall() if 2 in schema.applied_versions(conn) else []
    )
    return LogStats(
        aggregates=execute(conn, _sql.STATS_AGGREGATES).fetchall(),
        keys=execute(conn, _sql.STATS_KEYS).fetchall(),
        tickets=execute(conn, _sql.STATS_TICKETS).fetchall(),
        consumers=consumers,
    )
