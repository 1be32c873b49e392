"""Replay: applying decoded operations to tables, in order.

Replaying every entry of a log into suffix tables (``users`` -> ``users_replay``) must reproduce
the live tables exactly; that is how a log is verified, and (with no suffix) how it is replicated.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby
from typing import TYPE_CHECKING, Any

import psycopg
from google.protobuf.message import Message
from psycopg import sql

from oplog._db import execute
from oplog.catalog import check_identifier
from oplog.errors import DecodeError, InvalidParameterError, UnknownTypeError
from oplog.operation import Operation, OpType
from oplog.writer import Writer

if TYPE_CHECKING:
    from oplog.catalog import TypeCatalog
    from oplog.entry import Entry

__all__ = ["Replayer", "tables_equal"]


def _copy(msg: Message) -> Message:
    # The writer sets returned columns back on the message it is given; the operation's own
    # message stays as decoded.
    clone = type(msg)()
    clone.CopyFrom(msg)
    return clone


class Replayer:
    """Applies operations through a writer into ``<table><suffix>`` tables.

    Suffix tables that do not exist are created like their originals (once per replayer).

    Args:
        writer: Writes to the target tables.
        table_suffix: Appended to every table name; ``""`` applies to the tables themselves.

    Raises:
        InvalidParameterError: The suffix is not a str.
    """

    def __init__(self, writer: Writer, table_suffix: str = "_replay") -> None:
        if not isinstance(table_suffix, str):
            raise InvalidParameterError(f"table_suffix must be a str, not {table_suffix!r}")
        self._writer = writer
        self._suffix = table_suffix
        self._ready: set[str] = set()

    def _target(self, msg: Message) -> str:
        table = self._writer.catalog.table_of(msg).name
        target = check_identifier(table + self._suffix, "replay table name")
        if self._suffix and target not in self._ready:
            if not self._writer.has_table(target):
                self._writer.create_table_like(table, target)
            self._ready.add(target)
        return target

    def apply_entry(self, entry: Entry, catalog: TypeCatalog) -> int:
        """Decodes a (decrypted) entry with `catalog` and applies its operations; returns how
        many were applied.

        Raises:
            DecodeError, UnknownTypeError, InvalidParameterError: As :meth:`apply` and
                :meth:`oplog.Entry.unmarshal_data`, their message starting with the entry's id.
        """
        try:
            return self.apply(entry.unmarshal_data(catalog))
        except (DecodeError, UnknownTypeError, InvalidParameterError) as exc:
            raise type(exc)(f"entry {entry.id}: {exc.args[0]}", *exc.args[1:]) from exc

    def apply(self, operations: Iterable[Operation]) -> int:
        """Applies `operations` in order; returns how many were applied.

        Consecutive CREATE_ITEMS (or DELETE_ITEMS) of one type are applied as one batch, as
        the Go writer's ``CreateItems`` wrote them.

        Raises:
            InvalidParameterError: An operation cannot be replayed (UNSPECIFIED, unsupported
                options, an identifier PostgreSQL cannot hold).
        """
        count = 0
        w = self._writer

        def batch_key(op: Operation) -> tuple[object, ...]:
            if op.op_type in (OpType.CREATE_ITEMS, OpType.DELETE_ITEMS):
                return (op.op_type, type(op.message))
            return (id(op),)

        for _, group in groupby(operations, key=batch_key):
            ops = list(group)
            count += len(ops)
            first = ops[0]
            target = self._target(first.message)
            if first.op_type == OpType.CREATE:
                w.create(_copy(first.message), target, options=first.options, _override=True)
            elif first.op_type == OpType.UPDATE:
                w.update(
                    first.message, first.field_mask, first.null_paths, target, options=first.options
                )
            elif first.op_type == OpType.DELETE:
                w.delete(first.message, target, options=first.options)
            elif first.op_type == OpType.CREATE_ITEMS:
                w.create_items([_copy(op.message) for op in ops], target, _override=True)
            elif first.op_type == OpType.DELETE_ITEMS:
                w.delete_items([op.message for op in ops], target)
            else:
                raise InvalidParameterError(f"cannot replay an operation of type {first.op_type!r}")
        return count


def tables_equal(conn: psycopg.Connection[Any], live: str, replayed: str) -> bool:
    """Whether two tables (with the same columns) hold the same multiset of rows."""
    query = sql.SQL(
        "select (select count(*) from {a}) = (select count(*) from {b})"
        " and not exists (select * from {a} except all select * from {b})"
    ).format(
        a=sql.Identifier(check_identifier(live, "table name")),
        b=sql.Identifier(check_identifier(replayed, "table name")),
    )
    row = execute(conn, query).fetchone()
    return bool(row and row[0])
