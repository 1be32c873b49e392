"""Replay: applying decoded operations to tables, in order.

Replaying every entry of a log into suffix tables (``users`` -> ``users_replay``) must reproduce
the live tables exactly; that is how a log is verified, and (with no suffix) how it is replicated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from itertools import groupby
from typing import TYPE_CHECKING, Any

import psycopg
from google.protobuf.message import Message
from psycopg import sql

from oplog import pgarray
from oplog._db import execute
from oplog.catalog import check_identifier
from oplog.errors import DecodeError, InvalidParameterError, SchemaError, UnknownTypeError
from oplog.operation import Operation, OpType
from oplog.writer import Writer, _Column, _is_unset, _Mapping, to_db

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
        self._types: dict[str, dict[str, str]] = {}
        self._statements: dict[tuple[Any, ...], bytes] = {}
        # Per message class: its target table and mapping (looked up once, not per operation).
        self._resolved: dict[type[Message], tuple[str, _Mapping]] = {}

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

    # --- set-based replay ---------------------------------------------------------------------

    def apply_entries(self, entries: Iterable[Entry], catalog: TypeCatalog) -> int:
        """Applies the operations of (decrypted) entries, in order, with as few statements as
        their order allows (see :meth:`apply_many`); returns how many entries were applied.

        Raises:
            DecodeError, UnknownTypeError, InvalidParameterError: As :meth:`apply_entry`.
        """
        operations: list[Operation] = []
        count = 0
        for entry in entries:
            try:
                operations += entry.unmarshal_data(catalog)
            except (DecodeError, UnknownTypeError) as exc:
                raise type(exc)(f"entry {entry.id}: {exc.args[0]}", *exc.args[1:]) from exc
            count += 1
        self.apply_many(operations)
        return count

    def apply_many(self, operations: Iterable[Operation]) -> int:
        """Applies `operations` in order, as :meth:`apply` does, but set-based: each run of
        consecutive operations of one kind on one table with one shape (the same columns set
        and nulled, keys given or generated) is one statement over array parameters, and the
        statements go in one pipeline. A run ends wherever batching could change the result:
        another kind, table or shape; a row the run already touched; an operation with
        options (applied on its own, as :meth:`apply` would). The result is that of
        :meth:`apply`, row for row.

        Returns:
            The number of operations applied.

        Raises:
            InvalidParameterError: As :meth:`apply`.
        """
        plan = _Plan(self)
        for op in operations:
            plan.add(op)
        plan.close()
        conn = self._writer.conn
        pgarray.register(conn)
        if len(plan.steps) == 1 and not isinstance(plan.steps[0], list):
            plan.run_step(plan.steps[0])
        elif plan.steps:
            with conn.pipeline():
                for step in plan.steps:
                    plan.run_step(step)
        return plan.count

    def _column_types(self, table: str) -> dict[str, str]:
        """The SQL type of each column of `table` (as the search_path finds it), without its
        modifier."""
        found = self._types.get(table)
        if found is None:
            # Without the type modifier (format_type spells varchar(3) as "character varying",
            # char(3) as bpchar): values are cast to the type and assigned to the column, so a
            # value too long for it fails as an insert of it one by one fails, not truncated.
            rows = execute(
                self._writer.conn,
                "select a.attname, format_type(a.atttypid, null) from pg_attribute a"
                " where a.attrelid = to_regclass(quote_ident(%s)) and a.attnum > 0"
                " and not a.attisdropped",
                (table,),
            ).fetchall()
            if not rows:
                raise SchemaError(f"no table {table!r} on the search_path")
            found = self._types[table] = {str(name): str(kind) for name, kind in rows}
        return found


def _as_text(value: object) -> str | None:
    """A column value in PostgreSQL's text input format (None stays NULL): what set-based
    statements send, cast on the server to the column's type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same double; inf, nan
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise InvalidParameterError(f"cannot send a {type(value).__name__} value in a set-based replay")


_ORD = sql.Identifier("oplog ord")  # a name no table column of the caller's can collide with


class _Run:
    """Consecutive operations that one statement applies: their kind, table, shape and rows."""

    def __init__(self, kind: str, mapping: _Mapping, target: str, shape: tuple[Any, ...]):
        self.kind = kind  # "insert" | "update" | "delete"
        self.mapping = mapping
        self.target = target
        self.shape = shape
        self.columns: list[_Column] = []
        self.rows: list[list[Any]] = []
        self.keys: set[tuple[Any, ...]] = set()


class _Plan:
    """The steps of a set-based replay: runs, and operations applied on their own."""

    def __init__(self, replayer: Replayer) -> None:
        self.replayer = replayer
        self.writer = replayer._writer
        self.steps: list[_Run | list[Operation]] = []
        self.current: _Run | None = None
        self.count = 0

    def close(self) -> None:
        if self.current is not None:
            self.steps.append(self.current)
            self.current = None

    def _single(self, op: Operation) -> None:
        self.close()
        if self.steps and isinstance(self.steps[-1], list):
            self.steps[-1].append(op)
        else:
            self.steps.append([op])

    def add(self, op: Operation) -> None:
        self.count += 1
        kind = _KINDS.get(op.op_type)
        if kind is None or op.options is not None:
            # Options work row by row (versions, conflicts): applied as apply() would.
            self._single(op)
            return
        w = self.writer
        msg = op.message
        resolved = self.replayer._resolved.get(type(msg))
        if resolved is None:
            target = self.replayer._target(msg)
            resolved = self.replayer._resolved[type(msg)] = (target, w._map(msg, target))
        target, m = resolved
        key: tuple[Any, ...] | None
        if kind == "insert":
            generated = all(_is_unset(msg, c) for c in m.primary_key) if m.primary_key else False
            columns = m.columns_without_key if generated else m.columns
            shape: tuple[Any, ...] = (generated,)
            values = [to_db(msg, c) for c in columns]
            if generated or not m.primary_key:
                key = None
            else:
                key = tuple(values[i] for i in m.key_positions)
        elif kind == "update":
            sets, nulls = w._update_columns(m, op.field_mask, op.null_paths)
            key = tuple(w._key_params(m, msg))
            columns = [*m.primary_key, *sets]
            shape = (tuple(c.name for c in sets), tuple(c.name for c in nulls))
            values = [*key, *(to_db(msg, c) for c in sets)]
        else:
            key = tuple(w._key_params(m, msg))
            columns = list(m.primary_key)
            shape = ()
            values = list(key)
        run = self.current
        if (
            run is None
            or run.kind != kind
            or run.target != target
            or run.mapping is not m
            or run.shape != shape
            or (key is not None and key in run.keys)
        ):
            self.close()
            run = self.current = _Run(kind, m, target, shape)
            run.columns = columns
        if key is not None:
            run.keys.add(key)
        run.rows.append(values)

    def run_step(self, step: _Run | list[Operation]) -> None:
        if isinstance(step, list):
            self.replayer.apply(step)
            return
        query, params = self._statement(step)
        # A join of many rows is planned for their number: a plan cached for a prepared
        # statement (made for any array, while the table may still have been small) would scan
        # the whole table for every run. A single row's statement is prepared: its plan is an
        # index lookup whatever the table's size.
        prepare = None if len(step.rows) == 1 or step.kind == "insert" else False
        execute(self.writer.conn, query, params, prepare=prepare)

    def _statement(self, run: _Run) -> tuple[bytes, list[Any]]:
        names = [c.name for c in run.columns]
        single = len(run.rows) == 1
        params: list[Any]
        if single:
            params = [_as_text(value) for value in run.rows[0]]
            if run.kind == "update":
                # The statement's text sets the columns before it matches the key.
                keys = len(run.mapping.primary_key)
                params = params[keys:] + params[:keys]
        else:
            params = [
                pgarray.TextArray.of([_as_text(row[i]) for row in run.rows])
                for i in range(len(names))
            ]
        # Composing costs more than sending: each shape is composed once per replayer.
        key = (run.kind, run.target, run.shape, single, *names)
        query = self.replayer._statements.get(key)
        if query is None:
            query = self.replayer._statements[key] = self._compose(run, names, single).as_bytes(
                self.writer.conn
            )
        return query, params

    def _compose(self, run: _Run, names: list[str], single: bool) -> sql.Composed:
        types = self.replayer._column_types(run.target)
        table = sql.Identifier(run.target)
        unnest = sql.SQL("unnest({}) as u ({})").format(
            sql.SQL(", ").join(sql.SQL("%b::text[]") * len(names)),
            sql.SQL(", ").join(map(sql.Identifier, names)),
        )

        def cast(name: str) -> sql.Composable:
            try:
                kind = types[name]
            except KeyError:
                raise SchemaError(f"table {run.target!r} has no column {name!r}") from None
            # The type's name as the server spells it (format_type quotes what needs it); one
            # row's values are parameters, many rows' are the columns of unnest.
            value = sql.SQL("%b::text") if single else sql.SQL("u.{}").format(sql.Identifier(name))
            return sql.SQL("{}::{}").format(value, sql.SQL(kind))

        m = run.mapping
        if single:
            return _compose_single(run, table, names, cast)
        if run.kind == "insert":
            query = sql.SQL(
                "insert into {t} ({cols}) overriding system value"
                " select {vals} from unnest({arrays}) with ordinality as u ({cols}, {ord})"
                " order by u.{ord}"
            ).format(
                t=table,
                cols=sql.SQL(", ").join(map(sql.Identifier, names)),
                vals=sql.SQL(", ").join(cast(n) for n in names),
                arrays=sql.SQL(", ").join(sql.SQL("%b::text[]") * len(names)),
                ord=_ORD,
            )
        elif run.kind == "update":
            sets, nulls = run.shape
            assignments = [sql.SQL("{} = {}").format(sql.Identifier(n), cast(n)) for n in sets]
            assignments += [sql.SQL("{} = null").format(sql.Identifier(n)) for n in nulls]
            query = sql.SQL("update {t} as t set {a} from {u} where {w}").format(
                t=table,
                a=sql.SQL(", ").join(assignments),
                u=unnest,
                w=_key_match(m, cast),
            )
        else:
            query = sql.SQL("delete from {t} as t using {u} where {w}").format(
                t=table, u=unnest, w=_key_match(m, cast)
            )
        return query


def _key_match(m: _Mapping, cast: Callable[[str], sql.Composable]) -> sql.Composable:
    return sql.SQL(" and ").join(
        sql.SQL("t.{} = {}").format(sql.Identifier(c.name), cast(c.name)) for c in m.primary_key
    )


def _compose_single(
    run: _Run, table: sql.Identifier, names: list[str], cast: Callable[[str], sql.Composable]
) -> sql.Composed:
    """The statement of a run of one row, its values as parameters in the order they appear
    (for an update, the columns it sets, then the key)."""
    if run.kind == "insert":
        return sql.SQL("insert into {t} ({cols}) overriding system value values ({vals})").format(
            t=table,
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            vals=sql.SQL(", ").join(cast(n) for n in names),
        )
    keys = len(run.mapping.primary_key)
    if run.kind == "update":
        sets, nulls = run.shape
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(n), cast(n)) for n in sets]
        assignments += [sql.SQL("{} = null").format(sql.Identifier(n)) for n in nulls]
        head = sql.SQL("update {t} as t set {a}").format(t=table, a=sql.SQL(", ").join(assignments))
    else:
        head = sql.SQL("delete from {t} as t").format(t=table)
    return sql.SQL("{} where {}").format(
        head,
        sql.SQL(" and ").join(
            sql.SQL("t.{} = {}").format(sql.Identifier(n), cast(n)) for n in names[:keys]
        ),
    )


_KINDS = {
    OpType.CREATE: "insert",
    OpType.CREATE_ITEMS: "insert",
    OpType.UPDATE: "update",
    OpType.DELETE: "delete",
    OpType.DELETE_ITEMS: "delete",
}


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
