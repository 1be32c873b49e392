"""Protobuf messages to table rows and back, and the statements that write them: no I/O here
(the writers, :class:`oplog.Writer` and ``AsyncWriter``, execute what this composes).

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

from oplog.catalog import Table, TypeCatalog, check_identifier
from oplog.errors import InvalidParameterError
from oplog.operation import Operation, OperationOptions, OpType, normalize_path

__all__ = ["Column", "Statements", "TableMapping", "from_db", "is_unset", "to_db"]

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


class Column(NamedTuple):
    field: Any  # a FieldDescriptor (pure-Python or upb)
    name: str
    kind: str  # "scalar" | "timestamp" | "wrapper"
    presence: bool


class TableMapping:
    """How one message class maps onto one table: its columns, key and mask paths."""

    def __init__(self, cls: type[Message], table: Table) -> None:
        self.table = table
        self.columns: list[Column] = []
        by_normalized: dict[str, Column] = {}
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
            column = Column(field, field.name, kind, field.has_presence)
            self.columns.append(column)
            by_normalized[normalize_path(field.name)] = column
        self.by_normalized = by_normalized
        self.by_name = {c.name: c for c in self.columns}
        self.primary_key = [self.by_name[name] for name in table.primary_key]
        self.columns_without_key = [c for c in self.columns if c not in self.primary_key]
        # Each column's value of a message in PostgreSQL's text form (set-based replay).
        self.text_of = {c.name: text_converter(c) for c in self.columns}
        self._key_texts = [self.text_of[c.name] for c in self.primary_key]
        # What the Rust core packs a column of many messages' values by (see text_kind).
        self.text_specs = {
            c.name: (c.name, text_kind(c), self.text_of[c.name]) for c in self.columns
        }
        self.given_key = self._given_key()
        """`msg`'s primary key in PostgreSQL's text form: None when the table has none, or when
        `msg` leaves every column of it unset (:meth:`key_unset`: an insert leaves it to the
        database; an update or delete is refused)."""

    def _given_key(self) -> Callable[[Message], tuple[str | None, ...] | None]:
        key = self.primary_key
        if not key:
            return lambda msg: None
        (first, *rest) = key
        if not rest and text_kind(first) == TEXT_INTEGER:
            # One integer column (the usual key), without presence: unset is 0.
            name = first.field.name

            def integer(msg: Message) -> tuple[str | None, ...] | None:
                value = getattr(msg, name)
                return None if value == 0 else (str(value),)

            return integer
        return lambda msg: None if self.key_unset(msg) else self.key_text(msg)

    def key_text(self, msg: Message) -> tuple[str | None, ...]:
        """`msg`'s primary key in PostgreSQL's text form."""
        texts = self._key_texts
        if len(texts) == 1:
            return (texts[0](msg),)
        return tuple(text(msg) for text in texts)

    def key_unset(self, msg: Message) -> bool:
        """Whether `msg` leaves every column of a primary key unset (for the database to
        generate); False for a table without one."""
        key = self.primary_key
        if len(key) == 1:
            return is_unset(msg, key[0])
        return bool(key) and all(is_unset(msg, c) for c in key)

    def resolve(self, path: str) -> Column:
        """The column a field-mask path names."""
        if not isinstance(path, str) or not path:
            raise InvalidParameterError(f"field path must be a non-empty str, not {path!r}")
        column = self.by_normalized.get(normalize_path(path))
        if column is None:
            raise InvalidParameterError(
                f"field path {path!r} names no column of table {self.table.name!r}"
            )
        return column


_MAPPINGS: dict[tuple[type[Message], Table], TableMapping] = {}

# Composed statement texts by (encoding, kind, mapping, shape); bounded, since every distinct
# mask combination is a shape.
_COMPILED: dict[tuple[Any, ...], bytes] = {}
_COMPILED_MAX = 4096


def _mapping(cls: type[Message], table: Table) -> TableMapping:
    key = (cls, table)
    found = _MAPPINGS.get(key)
    if found is None:
        found = _MAPPINGS[key] = TableMapping(cls, table)
    return found


def to_db(msg: Message, column: Column) -> Any:
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


def as_text(value: object) -> str | None:
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


_INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_ENUM,
}  # fmt: skip


def text_converter(column: Column) -> Callable[[Message], str | None]:
    """A function giving `column`'s value of a message in PostgreSQL's text input form (None
    for NULL), the same as ``as_text(to_db(msg, column))``: built once per column, so that the
    set-based replay's loop does not branch on the field's kind for every value."""
    name = column.field.name
    kind = column.field.type
    if column.kind != "scalar" or column.presence:
        return lambda msg: as_text(to_db(msg, column))
    if kind == FieldDescriptor.TYPE_STRING:

        def string(msg: Message) -> str:
            value: str = getattr(msg, name)
            if "\x00" in value:
                return as_text(to_db(msg, column)) or ""  # raises, naming the field
            return value

        return string
    if kind in _INTEGER_TYPES:
        return lambda msg: str(getattr(msg, name))
    if kind == FieldDescriptor.TYPE_BOOL:
        return lambda msg: "t" if getattr(msg, name) else "f"
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda msg: "\\x" + getattr(msg, name).hex()
    return lambda msg: as_text(to_db(msg, column))


TEXT_BY_CONVERTER, TEXT_STRING, TEXT_INTEGER, TEXT_BOOL, TEXT_BYTES = range(5)


def text_kind(column: Column) -> int:
    """How ``_core.pack_text_columns`` reads `column`: for the plain scalar kinds it formats
    the attribute itself, as :func:`text_converter` would; for the rest (presence, timestamps,
    wrappers, floats) it calls the column's converter."""
    kind = column.field.type
    if column.kind != "scalar" or column.presence:
        return TEXT_BY_CONVERTER
    if kind == FieldDescriptor.TYPE_STRING:
        return TEXT_STRING
    if kind in _INTEGER_TYPES:
        return TEXT_INTEGER
    if kind == FieldDescriptor.TYPE_BOOL:
        return TEXT_BOOL
    if kind == FieldDescriptor.TYPE_BYTES:
        return TEXT_BYTES
    return TEXT_BY_CONVERTER


def from_db(msg: Message, column: Column, value: Any) -> None:
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


def is_unset(msg: Message, column: Column) -> bool:
    field = column.field
    if column.presence:
        return not msg.HasField(field.name)
    return bool(getattr(msg, field.name) == field.default_value)


def _assignments(sets: list[Column], nulls: list[Column]) -> sql.Composable:
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(c.name)) for c in sets]
    assignments += [sql.SQL("{} = null").format(sql.Identifier(c.name)) for c in nulls]
    return sql.SQL(", ").join(assignments)


class Statements:
    """Composes the statements that write messages as rows of their tables (and maps the
    rows' values), for a catalog. Nothing is executed: `context` (a connection, sync or async)
    only gives the encoding the statements are composed in.

    Args:
        context: The connection the statements will run on.
        catalog: Maps message classes to tables.
    """

    __slots__ = ("_context", "catalog")

    def __init__(
        self, context: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], catalog: TypeCatalog
    ) -> None:
        self._context = context
        self.catalog = catalog

    def map(self, msg: Message, table: str | None) -> TableMapping:
        if not isinstance(msg, Message):
            raise InvalidParameterError(f"expected a protobuf message, not {type(msg).__name__}")
        mapping = self.catalog.table_of(msg)
        if table is not None:
            mapping = mapping._replace(name=check_identifier(table, "table name"))
        return _mapping(type(msg), mapping)

    def check_key(self, m: TableMapping, msg: Message) -> None:
        """Raises InvalidParameterError unless `m` has a primary key and `msg` sets it."""
        if not m.primary_key:
            raise InvalidParameterError(
                f"table {m.table.name!r} has no primary key in the catalog: cannot update or delete"
            )
        if all(is_unset(msg, c) for c in m.primary_key):
            raise InvalidParameterError(
                f"{type(msg).__qualname__}: primary key {m.table.primary_key} is not set"
            )

    def key_params(self, m: TableMapping, msg: Message) -> list[Any]:
        """The primary-key values of `msg`, which must be set (see :meth:`check_key`)."""
        self.check_key(m, msg)
        return [to_db(msg, c) for c in m.primary_key]

    @staticmethod
    def where(m: TableMapping, versioned: bool) -> sql.Composable:
        """``key = %s and ...`` (and ``version = %s``): composed only when a statement shape
        is compiled, since composing costs more than the rest of a small write."""
        clauses = [sql.SQL("{} = %s").format(sql.Identifier(c.name)) for c in m.primary_key]
        if versioned:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier("version")))
        return sql.SQL(" and ").join(clauses)

    def on_conflict(
        self, m: TableMapping, columns: list[Column], options: OperationOptions | None
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

    def compiled(self, key: tuple[Any, ...], build: Callable[[], sql.Composable]) -> bytes:
        """The SQL text of a statement, composed once per shape and connection encoding:
        composing and quoting cost more than the rest of a small write."""
        full = (self._context.info.encoding, *key)
        query = _COMPILED.get(full)
        if query is None:
            query = build().as_bytes(self._context)
            if len(_COMPILED) < _COMPILED_MAX:
                _COMPILED[full] = query
        return query

    def insert(
        self, m: TableMapping, msg: Message, override: bool, options: OperationOptions | None = None
    ) -> tuple[bytes, list[Any]]:
        generated = all(is_unset(msg, c) for c in m.primary_key) if m.primary_key else False
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
                self.on_conflict(m, columns, options),
                sql.SQL(", ").join(sql.Identifier(c.name) for c in m.columns),
            )

        query = self.compiled(("insert", m, generated, override, conflict), build)
        return query, [to_db(msg, c) for c in columns]

    def update_columns(
        self, m: TableMapping, field_mask: Iterable[str], null_paths: Iterable[str]
    ) -> tuple[list[Column], list[Column]]:
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

    def ticket_gated(self, op: Operation) -> tuple[bytes, list[Any], tuple[Any, ...]]:
        """For :meth:`oplog.Oplog.apply`: the statement performing `op` (a CREATE, UPDATE or
        DELETE) as the body of a CTE that changes nothing unless the CTE ``ticket`` returned a
        row (gated on the ticket's redeem), its parameters, and the identity ``(table, key
        values)`` of the row it touches.

        Raises:
            InvalidParameterError: Another operation type, options, or an unset primary key.
        """
        msg = op.message
        m = self.map(msg, None)
        if op.options is not None:
            raise InvalidParameterError("apply does not take operation options")
        if m.primary_key and all(is_unset(msg, c) for c in m.primary_key):
            raise InvalidParameterError(
                f"{type(msg).__qualname__}: apply needs the primary key set (for keys the"
                " database generates, use Writer.create and Oplog.write)"
            )
        key = self.key_params(m, msg)
        identity = (m.table.name, *key)
        if op.op_type == OpType.CREATE:
            columns = m.columns
            query = self.compiled(
                ("gated insert", m),
                lambda: sql.SQL("insert into {} ({}) select {} from ticket").format(
                    sql.Identifier(m.table.name),
                    sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                ),
            )
            return query, [to_db(msg, c) for c in columns], identity
        if op.op_type == OpType.UPDATE:
            sets, nulls = self.update_columns(m, op.field_mask, op.null_paths)
            query = self.compiled(
                ("gated update", m, *(c.name for c in sets), None, *(c.name for c in nulls)),
                lambda: sql.SQL("update {} set {} where {} and exists (select from ticket)").format(
                    sql.Identifier(m.table.name), _assignments(sets, nulls), self.where(m, False)
                ),
            )
            return query, [*(to_db(msg, c) for c in sets), *key], identity
        if op.op_type == OpType.DELETE:
            query = self.compiled(
                ("gated delete", m),
                lambda: sql.SQL("delete from {} where {} and exists (select from ticket)").format(
                    sql.Identifier(m.table.name), self.where(m, False)
                ),
            )
            return query, key, identity
        raise InvalidParameterError(
            f"apply performs CREATE, UPDATE and DELETE operations, not {op.op_type.name}"
        )

    def version_params(self, m: TableMapping, options: OperationOptions | None) -> list[Any]:
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

    def update(
        self,
        msg: Message,
        field_mask: Iterable[str],
        null_paths: Iterable[str],
        table: str | None,
        options: OperationOptions | None,
    ) -> tuple[bytes, list[Any]]:
        """The statement updating the row of `msg` (see ``Writer.update``) and its
        parameters."""
        m = self.map(msg, table)
        sets, nulls = self.update_columns(m, field_mask, null_paths)
        params = self.key_params(m, msg) + self.version_params(m, options)
        versioned = len(params) > len(m.primary_key)
        query = self.compiled(
            ("update", m, *(c.name for c in sets), None, *(c.name for c in nulls), versioned),
            lambda: sql.SQL("update {} set {} where {}").format(
                sql.Identifier(m.table.name), _assignments(sets, nulls), self.where(m, versioned)
            ),
        )
        return query, [*(to_db(msg, c) for c in sets), *params]

    def delete(
        self, msg: Message, table: str | None, options: OperationOptions | None
    ) -> tuple[bytes, list[Any]]:
        """The statement deleting the row of `msg` (by its key) and its parameters."""
        m = self.map(msg, table)
        params = self.key_params(m, msg) + self.version_params(m, options)
        return self._delete(m, len(params) > len(m.primary_key)), params

    def delete_items(self, msgs: Sequence[Message], table: str | None) -> tuple[bytes, list[Any]]:
        """The statement deleting one row by its key, and the keys of `msgs` (of one type)."""
        first = type(msgs[0])
        if any(type(msg) is not first for msg in msgs):
            raise InvalidParameterError("delete_items needs messages of one type")
        m = self.map(msgs[0], table)
        return self._delete(m, False), [self.key_params(m, msg) for msg in msgs]

    def _delete(self, m: TableMapping, versioned: bool) -> bytes:
        return self.compiled(
            ("delete", m, versioned),
            lambda: sql.SQL("delete from {} where {}").format(
                sql.Identifier(m.table.name), self.where(m, versioned)
            ),
        )

    def insert_items(
        self, msgs: Sequence[Message], table: str | None, override: bool
    ) -> tuple[TableMapping, bytes, list[list[Any]]] | None:
        """One insert for several messages of one type and each one's parameters, or None
        when their statements differ (some keys generated, some given)."""
        first = type(msgs[0])
        if any(type(msg) is not first for msg in msgs):
            raise InvalidParameterError("create_items needs messages of one type")
        m = self.map(msgs[0], table)
        inserts = [self.insert(m, msg, override) for msg in msgs]
        if len({query for query, _ in inserts}) > 1:
            return None
        return m, inserts[0][0], [params for _, params in inserts]


def replayed_mask(m: TableMapping, op: Operation) -> Sequence[str]:
    """The paths an UPDATE sets when it is replayed: its field mask; for an UPDATE with
    neither mask nor null paths (which be9f25cce1 writes, and replays as a save of the whole
    row), every column but the key."""
    if op.field_mask or op.null_paths:
        return op.field_mask
    return [c.name for c in m.columns_without_key]
