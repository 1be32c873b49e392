"""The writer: protobuf messages to table rows, in the caller's transaction.

A message type's table and primary key come from the catalog; its columns are its proto field
names (minus ``exclude``). Field-mask paths match field names case-insensitively and also in the
Go spelling (``PhoneNumber`` is ``phone_number``). Every identifier is composed with
``psycopg.sql.Identifier``; nothing a caller passes is formatted into SQL text.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import psycopg
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg import sql

from oplog._db import cursor, execute
from oplog.catalog import Table, TypeCatalog, check_identifier
from oplog.errors import InvalidParameterError, SchemaError
from oplog.operation import Operation, OperationOptions, OpType

__all__ = ["Writer"]

_UTC = dt.timezone.utc
_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
_TIMESTAMP = "google.protobuf.Timestamp"


def _is_repeated(field: Any) -> bool:
    # protobuf 6+ has is_repeated and no label; 5.x has only label.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _normalize(path: str) -> str:
    return path.replace("_", "").lower()


class _Column(NamedTuple):
    field: Any  # a FieldDescriptor (pure-Python or upb)
    name: str
    kind: str  # "scalar" | "timestamp" | "wrapper"
    presence: bool


class _Mapping:
    """How one message class maps onto one table."""

    def __init__(self, cls: type[Message], table: Table) -> None:
        self.table = table
        self.columns: list[_Column] = []
        by_normalized: dict[str, _Column] = {}
        fields: list[Any] = list(cls.DESCRIPTOR.fields)
        for field in fields:
            if field.name in table.exclude:
                continue
            if _is_repeated(field):
                raise InvalidParameterError(
                    f"{cls.__qualname__}.{field.name}: repeated fields cannot map to a column"
                )
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                full = field.message_type.full_name
                if full == _TIMESTAMP:
                    kind = "timestamp"
                elif full in _WRAPPERS:
                    kind = "wrapper"
                else:
                    raise InvalidParameterError(
                        f"{cls.__qualname__}.{field.name}: {full} cannot map to a column"
                    )
            else:
                kind = "scalar"
            column = _Column(field, field.name, kind, field.has_presence)
            self.columns.append(column)
            by_normalized[_normalize(field.name)] = column
        self.by_normalized = by_normalized
        self.by_name = {c.name: c for c in self.columns}
        self.primary_key = [self.by_name[name] for name in table.primary_key]
        self.columns_without_key = [c for c in self.columns if c not in self.primary_key]
        # Where each key column sits in `columns` (for reading a key out of a row's values).
        self.key_positions = [self.columns.index(c) for c in self.primary_key]

    def resolve(self, path: str) -> _Column:
        """The column a field-mask path names."""
        if not isinstance(path, str) or not path:
            raise InvalidParameterError(f"field path must be a non-empty str, not {path!r}")
        column = self.by_normalized.get(_normalize(path))
        if column is None:
            raise InvalidParameterError(
                f"field path {path!r} names no column of table {self.table.name!r}"
            )
        return column


_MAPPINGS: dict[tuple[type[Message], Table], _Mapping] = {}

# Composed statement texts by (encoding, kind, mapping, shape); bounded, since every distinct
# mask combination is a shape.
_COMPILED: dict[tuple[Any, ...], bytes] = {}
_COMPILED_MAX = 4096


def _mapping(cls: type[Message], table: Table) -> _Mapping:
    key = (cls, table)
    found = _MAPPINGS.get(key)
    if found is None:
        found = _MAPPINGS[key] = _Mapping(cls, table)
    return found


def to_db(msg: Message, column: _Column) -> Any:
    """The database value of one field of `msg` (None for an unset field with presence)."""
    field = column.field
    if column.presence and not msg.HasField(field.name):
        return None
    value = getattr(msg, field.name)
    if column.kind == "timestamp":
        return value.ToDatetime(tzinfo=_UTC)
    if column.kind == "wrapper":
        value = value.value
    if isinstance(value, str) and "\x00" in value:
        raise InvalidParameterError(
            f"{field.full_name} contains a NUL character, which PostgreSQL text cannot hold"
        )
    return value


def from_db(msg: Message, column: _Column, value: Any) -> None:
    """Sets one field of `msg` from a database value (None clears it)."""
    name = column.field.name
    if value is None:
        msg.ClearField(name)
    elif column.kind == "timestamp":
        stamp = Timestamp()
        stamp.FromDatetime(value)
        getattr(msg, name).CopyFrom(stamp)
    elif column.kind == "wrapper":
        getattr(msg, name).value = value
    elif column.field.type == FieldDescriptor.TYPE_BYTES:
        setattr(msg, name, bytes(value))
    else:
        setattr(msg, name, value)


def _is_unset(msg: Message, column: _Column) -> bool:
    field = column.field
    if column.presence:
        return not msg.HasField(field.name)
    return bool(getattr(msg, field.name) == field.default_value)


def _assignments(sets: list[_Column], nulls: list[_Column]) -> sql.Composable:
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(c.name)) for c in sets]
    assignments += [sql.SQL("{} = null").format(sql.Identifier(c.name)) for c in nulls]
    return sql.SQL(", ").join(assignments)


class Writer:
    """Writes protobuf messages as rows, on a psycopg 3 connection whose transaction the caller
    owns.

    Args:
        conn: The connection.
        catalog: Maps message classes to tables.
    """

    __slots__ = ("_catalog", "_conn")

    def __init__(self, conn: psycopg.Connection[Any], catalog: TypeCatalog) -> None:
        self._conn = conn
        self._catalog = catalog

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection written to."""
        return self._conn

    @property
    def catalog(self) -> TypeCatalog:
        """The catalog of message types and their tables."""
        return self._catalog

    def _map(self, msg: Message, table: str | None) -> _Mapping:
        if not isinstance(msg, Message):
            raise InvalidParameterError(f"expected a protobuf message, not {type(msg).__name__}")
        mapping = self._catalog.table_of(msg)
        if table is not None:
            mapping = mapping._replace(name=check_identifier(table, "table name"))
        return _mapping(type(msg), mapping)

    def _key_params(self, m: _Mapping, msg: Message) -> list[Any]:
        """The primary-key values of `msg`, which must be set."""
        if not m.primary_key:
            raise InvalidParameterError(
                f"table {m.table.name!r} has no primary key in the catalog: cannot update or delete"
            )
        if all(_is_unset(msg, c) for c in m.primary_key):
            raise InvalidParameterError(
                f"{type(msg).__qualname__}: primary key {m.table.primary_key} is not set"
            )
        return [to_db(msg, c) for c in m.primary_key]

    @staticmethod
    def _where(m: _Mapping, versioned: bool) -> sql.Composable:
        """``key = %s and ...`` (and ``version = %s``): composed only when a statement shape
        is compiled, since composing costs more than the rest of a small write."""
        clauses = [sql.SQL("{} = %s").format(sql.Identifier(c.name)) for c in m.primary_key]
        if versioned:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier("version")))
        return sql.SQL(" and ").join(clauses)

    def _on_conflict(
        self, m: _Mapping, columns: list[_Column], options: OperationOptions | None
    ) -> sql.Composable:
        if options is None or not options.HasField("with_on_conflict"):
            return sql.SQL("")
        conflict = options.with_on_conflict
        target_kind = conflict.WhichOneof("target")
        targets = m.primary_key
        if target_kind == "constraint":
            target: sql.Composable = sql.SQL(" on conflict on constraint {}").format(
                sql.Identifier(conflict.constraint)
            )
        elif target_kind == "columns":
            targets = [m.resolve(name) for name in conflict.columns.names]
            target = sql.SQL(" on conflict ({})").format(
                sql.SQL(", ").join(sql.Identifier(c.name) for c in targets)
            )
        elif targets:
            target = sql.SQL(" on conflict ({})").format(
                sql.SQL(", ").join(sql.Identifier(c.name) for c in targets)
            )
        else:
            target = sql.SQL(" on conflict")
        action = conflict.WhichOneof("action")
        if action == "do_nothing":
            return sql.SQL("{} do nothing").format(target)
        if action == "update_all":
            updated = [c for c in columns if c not in targets]
            return sql.SQL("{} do update set {}").format(
                target,
                sql.SQL(", ").join(
                    sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c.name)) for c in updated
                ),
            )
        raise InvalidParameterError(f"on-conflict action {action!r} is not supported")

    def _compiled(self, key: tuple[Any, ...], build: Callable[[], sql.Composable]) -> bytes:
        """The SQL text of a statement, composed once per shape and connection encoding:
        composing and quoting cost more than the rest of a small write."""
        full = (self._conn.info.encoding, *key)
        query = _COMPILED.get(full)
        if query is None:
            query = build().as_bytes(self._conn)
            if len(_COMPILED) < _COMPILED_MAX:
                _COMPILED[full] = query
        return query

    def _insert(
        self, m: _Mapping, msg: Message, override: bool, options: OperationOptions | None = None
    ) -> tuple[bytes, list[Any]]:
        generated = all(_is_unset(msg, c) for c in m.primary_key) if m.primary_key else False
        columns = [c for c in m.columns if not (generated and c in m.primary_key)]
        conflict = (
            options.with_on_conflict.SerializeToString()
            if options is not None and options.HasField("with_on_conflict")
            else None
        )

        def build() -> sql.Composable:
            return sql.SQL("insert into {} ({}){} values ({}){} returning {}").format(
                sql.Identifier(m.table.name),
                sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
                sql.SQL(" overriding system value" if override else ""),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                self._on_conflict(m, columns, options),
                sql.SQL(", ").join(sql.Identifier(c.name) for c in m.columns),
            )

        query = self._compiled(("insert", m, generated, override, conflict), build)
        return query, [to_db(msg, c) for c in columns]

    def create(
        self,
        msg: Message,
        table: str | None = None,
        *,
        options: OperationOptions | None = None,
        _override: bool = False,
    ) -> None:
        """Inserts `msg` as a row, and sets every column the database returns back on `msg`.

        A primary key left at its default (e.g. ``id == 0``) is generated by the database and
        read back, as are other database defaults.

        Args:
            msg: The message.
            table: Overrides the catalog's table.
            options: Operation options; ``with_on_conflict`` (do nothing, or update all columns)
                is honoured. When the conflict leaves the row alone, `msg` is not changed.

        Raises:
            InvalidParameterError: `msg` is not a message or its fields cannot map to columns.
            UnknownTypeError: The message type is not in the catalog.
        """
        m = self._map(msg, table)
        query, params = self._insert(m, msg, _override, options)
        row = execute(self._conn, query, params).fetchone()
        if row is not None:
            for column, value in zip(m.columns, row):
                from_db(msg, column, value)

    def create_items(
        self, msgs: Sequence[Message], table: str | None = None, *, _override: bool = False
    ) -> None:
        """Inserts several messages of one type, in order, in one batch, setting each back.

        Raises:
            InvalidParameterError: The messages are not all of one type.
        """
        msgs = list(msgs)
        if not msgs:
            return
        first = type(msgs[0])
        if any(type(msg) is not first for msg in msgs):
            raise InvalidParameterError("create_items needs messages of one type")
        m = self._map(msgs[0], table)
        batches = [self._insert(m, msg, _override) for msg in msgs]
        if len({q for q, _ in batches}) > 1:
            # Some keys are generated and some given: the statements differ; run each.
            for msg in msgs:
                self.create(msg, table, _override=_override)
            return
        with cursor(self._conn) as cur:
            cur.executemany(batches[0][0], [p for _, p in batches], returning=True)
            for i, msg in enumerate(msgs):
                if i:
                    cur.nextset()
                row = cur.fetchone()
                assert row is not None, "INSERT ... RETURNING returns a row"
                for column, value in zip(m.columns, row):
                    from_db(msg, column, value)

    def update(
        self,
        msg: Message,
        field_mask: Iterable[str],
        null_paths: Iterable[str] = (),
        table: str | None = None,
        *,
        options: OperationOptions | None = None,
    ) -> int:
        """Updates the row of `msg`: fields in `field_mask` from `msg`, `null_paths` to NULL.

        Args:
            msg: The message; its primary key selects the row.
            field_mask: Field paths to set from `msg`.
            null_paths: Field paths to set to NULL.
            table: Overrides the catalog's table.
            options: Operation options; ``with_version`` adds ``AND version = N``.

        Returns:
            The number of rows updated (0 or 1).

        Raises:
            InvalidParameterError: No paths, a path naming no column or a primary-key column, a
                path in both lists, or an unset primary key.
        """
        m = self._map(msg, table)
        sets, nulls = self._update_columns(m, field_mask, null_paths)
        params = self._key_params(m, msg) + self._version_params(m, options)
        versioned = len(params) > len(m.primary_key)
        query = self._compiled(
            ("update", m, *(c.name for c in sets), None, *(c.name for c in nulls), versioned),
            lambda: sql.SQL("update {} set {} where {}").format(
                sql.Identifier(m.table.name), _assignments(sets, nulls), self._where(m, versioned)
            ),
        )
        cur = execute(self._conn, query, [*(to_db(msg, c) for c in sets), *params])
        return cur.rowcount

    def _update_columns(
        self, m: _Mapping, field_mask: Iterable[str], null_paths: Iterable[str]
    ) -> tuple[list[_Column], list[_Column]]:
        """The columns an update sets and nulls, checked."""
        if isinstance(field_mask, str) or isinstance(null_paths, str):
            raise InvalidParameterError("field_mask and null_paths are sequences of str")
        sets = [m.resolve(p) for p in field_mask]
        nulls = [m.resolve(p) for p in null_paths]
        if not sets and not nulls:
            raise InvalidParameterError("update needs field-mask paths or null paths")
        both = {c.name for c in sets} & {c.name for c in nulls}
        if both:
            raise InvalidParameterError(f"paths {sorted(both)} are both set and set to null")
        if any(c in m.primary_key for c in (*sets, *nulls)):
            raise InvalidParameterError("the primary key cannot be updated")
        return sets, nulls

    def gated(self, op: Operation) -> tuple[bytes, list[Any], tuple[Any, ...]]:
        """For :meth:`oplog.Oplog.apply`: the statement performing `op` (a CREATE, UPDATE or
        DELETE) as the body of a CTE that changes nothing unless the CTE ``ticket`` returned a
        row, its parameters, and the identity ``(table, key values)`` of the row it touches.

        Raises:
            InvalidParameterError: Another operation type, options, or an unset primary key.
        """
        msg = op.message
        m = self._map(msg, None)
        if op.options is not None:
            raise InvalidParameterError("apply does not take operation options")
        if m.primary_key and all(_is_unset(msg, c) for c in m.primary_key):
            raise InvalidParameterError(
                f"{type(msg).__qualname__}: apply needs the primary key set (for keys the"
                " database generates, use Writer.create and Oplog.write)"
            )
        key = self._key_params(m, msg)
        identity = (m.table.name, *key)
        if op.op_type == OpType.CREATE:
            columns = m.columns
            query = self._compiled(
                ("gated insert", m),
                lambda: sql.SQL("insert into {} ({}) select {} from ticket").format(
                    sql.Identifier(m.table.name),
                    sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                ),
            )
            return query, [to_db(msg, c) for c in columns], identity
        if op.op_type == OpType.UPDATE:
            sets, nulls = self._update_columns(m, op.field_mask, op.null_paths)
            query = self._compiled(
                ("gated update", m, *(c.name for c in sets), None, *(c.name for c in nulls)),
                lambda: sql.SQL("update {} set {} where {} and exists (select from ticket)").format(
                    sql.Identifier(m.table.name), _assignments(sets, nulls), self._where(m, False)
                ),
            )
            return query, [*(to_db(msg, c) for c in sets), *key], identity
        if op.op_type == OpType.DELETE:
            query = self._compiled(
                ("gated delete", m),
                lambda: sql.SQL("delete from {} where {} and exists (select from ticket)").format(
                    sql.Identifier(m.table.name), self._where(m, False)
                ),
            )
            return query, key, identity
        raise InvalidParameterError(
            f"apply performs CREATE, UPDATE and DELETE operations, not {op.op_type.name}"
        )

    def _version_params(self, m: _Mapping, options: OperationOptions | None) -> list[Any]:
        """``[version]`` when the options ask for a version check, else ``[]``."""
        if options is None:
            return []
        if options.with_where_clause or len(options.with_where_clause_args):
            raise InvalidParameterError("operation options with a where clause are not supported")
        if not options.HasField("with_version"):
            return []
        if "version" not in m.by_name:
            raise InvalidParameterError(f"table {m.table.name!r} has no version column")
        return [options.with_version.value]

    def delete(
        self, msg: Message, table: str | None = None, *, options: OperationOptions | None = None
    ) -> int:
        """Deletes the row of `msg` (selected by its primary key); returns rows deleted."""
        m = self._map(msg, table)
        params = self._key_params(m, msg) + self._version_params(m, options)
        versioned = len(params) > len(m.primary_key)
        query = self._compiled(
            ("delete", m, versioned),
            lambda: sql.SQL("delete from {} where {}").format(
                sql.Identifier(m.table.name), self._where(m, versioned)
            ),
        )
        return execute(self._conn, query, params).rowcount

    def delete_items(self, msgs: Sequence[Message], table: str | None = None) -> int:
        """Deletes the rows of several messages of one type in one batch; returns rows deleted.

        Raises:
            InvalidParameterError: The messages are not all of one type, or a key is unset.
        """
        msgs = list(msgs)
        if not msgs:
            return 0
        first = type(msgs[0])
        if any(type(msg) is not first for msg in msgs):
            raise InvalidParameterError("delete_items needs messages of one type")
        m = self._map(msgs[0], table)
        keys = [self._key_params(m, msg) for msg in msgs]
        query = self._compiled(
            ("delete", m, False),
            lambda: sql.SQL("delete from {} where {}").format(
                sql.Identifier(m.table.name), self._where(m, False)
            ),
        )
        with cursor(self._conn) as cur:
            cur.executemany(query, keys)
            return cur.rowcount

    # --- tables -------------------------------------------------------------------------------

    def _schema_of(self, name: str) -> str | None:
        row = execute(
            self._conn,
            "select n.nspname from pg_catalog.pg_class c"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where c.oid = to_regclass(quote_ident(%s)) and c.relkind in ('r', 'p')",
            (check_identifier(name, "table name"),),
        ).fetchone()
        return None if row is None else str(row[0])

    def has_table(self, name: str) -> bool:
        """Whether a table `name` is visible through the connection's search_path."""
        return self._schema_of(name) is not None

    def create_table_like(self, existing: str, new: str) -> None:
        """Creates table `new` in the schema of `existing`, with its columns, defaults,
        constraints, indexes and identity (not its foreign keys or data).

        Raises:
            InvalidParameterError: `existing` does not exist, or a name is not a valid identifier.
        """
        schema = self._schema_of(existing)
        if schema is None:
            raise SchemaError(f"no table {existing!r} on the search_path")
        execute(
            self._conn,
            sql.SQL("create table {} (like {} including all)").format(
                sql.Identifier(schema, check_identifier(new, "table name")),
                sql.Identifier(schema, existing),
            ),
        )

    def drop_table_if_exists(self, name: str) -> None:
        """Drops table `name` (the one the search_path finds) if there is one."""
        execute(
            self._conn,
            sql.SQL("drop table if exists {}").format(
                sql.Identifier(check_identifier(name, "table name"))
            ),
        )
