"""Set-based replay, planned: consecutive operations grouped into runs that one statement
applies each, and the statements composed. No I/O here (the replayers, :class:`oplog.Replayer`
and ``AsyncReplayer``, run the plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import psycopg
from google.protobuf.message import Message
from psycopg import sql

from oplog import _core, _sql, pgarray
from oplog.catalog import check_identifier
from oplog.errors import DecodeError, SchemaError, UnknownTypeError
from oplog.mapping import Column, Statements, TableMapping, replayed_mask
from oplog.operation import Operation, OpType
from oplog.queue import decode, decode_all

if TYPE_CHECKING:
    from oplog.catalog import TypeCatalog
    from oplog.entry import Entry

__all__ = [
    "Plan",
    "PreparedPage",
    "ReplayCache",
    "Run",
    "TableTraits",
    "decode_entries",
    "decode_page",
    "on_the_keys_index",
]


_SHAPES_MAX = 4096  # update shapes remembered per replayer (each mask combination is one)
_ORD = sql.Identifier("oplog ord")  # a name no table column of the caller's can collide with


_Planned = tuple[
    str, str, TableMapping, tuple[Any, ...], list[Column], "tuple[Any, ...] | None", Message
]
"""An operation :meth:`Plan.add` checked: the run it can join (kind, target, mapping, shape,
columns), its row's key (in PostgreSQL's text form; None for an insert whose key the database
generates), and its message. A plain tuple: a page builds hundreds."""


class Run:
    """Consecutive operations that one statement applies: their kind, table, shape and rows."""

    def __init__(self, kind: str, mapping: TableMapping, target: str, shape: tuple[Any, ...]):
        self.kind = kind  # "insert" | "update" | "delete"
        self.mapping = mapping
        self.target = target
        self.shape = shape
        self.columns: list[Column] = []
        # The run's messages; its statement's values are their columns (see Plan.statement).
        self.messages: list[Message] = []


class PreparedPage(NamedTuple):
    """A page of set-based replay, planned and composed, not yet sent: each step a
    statement (text, values, whether to prepare it) or operations applied one by one."""

    steps: list[tuple[bytes, list[Any], bool | None] | list[Operation]]
    operations: int
    entries: int


class ReplayCache:
    """What a replayer learns once and reuses for every page: per message class its target
    table and mapping, the column types of each target, and composed statements."""

    def __init__(self, statements: Statements, table_suffix: str) -> None:
        self.statements = statements
        self.suffix = table_suffix
        self.resolved: dict[type[Message], tuple[str, TableMapping]] = {}
        self.tables: dict[str, TableTraits] = {}
        self._read_at: dict[str, float] = {}
        self._commuting: dict[tuple[str, TableMapping], bool] = {}
        self.composed: dict[tuple[Any, ...], bytes] = {}
        self.updates: dict[tuple[Any, ...], tuple[list[Column], tuple[Any, ...]]] = {}

    def target(self, msg: Message) -> str:
        """The table `msg`'s operations replay into: its table's name with the suffix."""
        table = self.statements.catalog.table_of(msg).name
        return check_identifier(table + self.suffix, "replay table name")

    def resolve(self, msg: Message) -> tuple[str, TableMapping]:
        found = self.resolved.get(type(msg))
        if found is None:
            target = self.target(msg)
            found = self.resolved[type(msg)] = (target, self.statements.map(msg, target))
        return found

    def fresh_traits(self, target: str, ttl: float) -> TableTraits | None:
        """What the replayer read of `target`, unless that is `ttl` seconds old or more."""
        read_at = self._read_at.get(target)
        if read_at is None or time.monotonic() - read_at >= ttl:
            return None
        return self.tables[target]

    def set_traits(self, target: str, traits: TableTraits) -> None:
        """Records what the replayer read of `target` (for the plan it is about to run)."""
        self._read_at[target] = time.monotonic()
        if self.tables.get(target) != traits:
            self.tables[target] = traits
            for key in [k for k in self._commuting if k[0] == target]:
                del self._commuting[key]

    def commutes(self, target: str, m: TableMapping) -> bool:
        """Whether operations of mapping `m` on different rows of `target` commute
        (:attr:`TableTraits.key`): the table allows it, its key is the mapping's, and an
        insert of the mapping leaves out no column whose default depends on order."""
        found = self._commuting.get((target, m))
        if found is None:
            traits = self.tables[target]
            found = (
                traits.key is not None
                and traits.key == tuple(c.name for c in m.primary_key)
                and traits.defaulted <= {c.name for c in m.columns}
            )
            self._commuting[(target, m)] = found
        return found

    def update_shape(self, m: TableMapping, op: Operation) -> tuple[list[Column], tuple[Any, ...]]:
        """The columns of an UPDATE's run (key, then those it sets) and its shape (the names
        it sets and nulls), checked once per mask and null paths."""
        key = (m, op.field_mask, op.null_paths)
        try:
            found = self.updates.get(key)
            cacheable = True
        except TypeError:  # paths in lists (the caller's operations): checked every time
            found, cacheable = None, False
        if found is None:
            sets, nulls = self.statements.update_columns(m, replayed_mask(m, op), op.null_paths)
            shape = (tuple(c.name for c in sets), tuple(c.name for c in nulls))
            found = ([*m.primary_key, *sets], shape)
            if cacheable and len(self.updates) < _SHAPES_MAX:
                self.updates[key] = found
        return found


class TableTraits(NamedTuple):
    """What a replayer reads about a target table, and reads again once it is
    ``TRAITS_TTL`` seconds old (see ``_TABLE_TRAITS`` in the replayers)."""

    types: dict[str, str]
    """Each column's type, as the server spells it, without its modifier."""
    key: tuple[str, ...] | None
    """The primary key's columns, when operations on different rows of the table commute:
    no trigger, rule, row security, inheritance, foreign key (either way), and no uniqueness
    but the key's. None otherwise."""
    defaulted: frozenset[str]
    """Columns whose default an insert that leaves them out could make depend on the order
    of inserts (a sequence, an identity, anything but a constant or the transaction's time)."""


class Plan:
    """The steps of a set-based replay: runs (a statement each), and lists of operations that
    are applied on their own, one by one.

    Planning is in two steps: :meth:`add` checks each operation and notes what it does
    (nothing is grouped yet); :meth:`arrange`, once the replayer has read the target tables'
    :class:`TableTraits` into the cache, groups them. Operations are kept in order, with one
    exception that cannot change the result: on tables where operations on different rows
    commute (:attr:`TableTraits.key`), a stretch of operations that each touch another row
    (their keys given) is applied as one statement per kind and shape, whatever their order
    within the stretch. The stretch ends at a row it already touched, at any other operation
    (another table, a key left to the database, options), and at the page's end.
    """

    def __init__(self, cache: ReplayCache) -> None:
        self.cache = cache
        self.steps: list[Run | list[Operation]] = []
        self.count = 0
        # The tables the runs write, each with a message of its type (to create it like).
        self.targets: dict[str, Message] = {}
        # What add() noted: one operation each, in order.
        self._planned: list[_Planned | Operation] = []

    def add(self, operations: Iterable[Operation]) -> None:
        """Checks each of `operations` and notes, in order, the run it could join (a page's
        operations in one call: the loop's per-operation cost is most of planning's).

        Raises:
            InvalidParameterError: As the writer would for it (a path that names no column,
                an unset key for an update or delete, ...).
        """
        cache = self.cache
        resolved = cache.resolved
        targets = self.targets
        note = self._planned.append
        kinds = _KINDS
        before = len(self._planned)
        for op in operations:
            msg, _, op_type, _, _, options = op
            kind = kinds.get(op_type)
            if kind is None or options is not None:
                # Options work row by row (versions, conflicts): applied as apply() would.
                note(op)
                continue
            found = resolved.get(type(msg))
            target, m = cache.resolve(msg) if found is None else found
            if target not in targets:
                targets[target] = msg
            key = m.given_key(msg)
            shape: tuple[Any, ...]
            if kind == "insert":
                if key is None and m.primary_key:
                    columns, shape = m.columns_without_key, _KEY_GENERATED
                else:
                    columns, shape = m.columns, _KEY_GIVEN
            else:
                if key is None:
                    cache.statements.check_key(m, msg)  # raises: no key in table or message
                if kind == "update":
                    columns, shape = cache.update_shape(m, op)
                else:
                    columns, shape = m.primary_key, ()
            note((kind, target, m, shape, columns, key, msg))
        self.count += len(self._planned) - before

    def arrange(self) -> None:
        """Groups what :meth:`add` noted into :attr:`steps` (see the class)."""
        steps = self.steps
        commutes = self.cache.commutes
        # The open group: a stretch of operations that commute (any number of runs, by
        # kind, target, mapping and shape), or else one run kept in order; and the keys of
        # the rows it touched, by target.
        runs: dict[tuple[Any, ...], Run] = {}
        touched: dict[str, set[tuple[Any, ...]]] = {}
        stretch = False

        def close() -> None:
            steps.extend(runs.values())
            runs.clear()
            touched.clear()

        for item in self._planned:
            if isinstance(item, Operation):
                close()
                if steps and isinstance(steps[-1], list):
                    steps[-1].append(item)
                else:
                    steps.append([item])
                continue
            kind, target, mapping, shape, columns, key, message = item
            commuting = key is not None and commutes(target, mapping)
            keys = touched.get(target)
            signature = (kind, target, mapping, shape)
            if (
                commuting != stretch
                or (key is not None and keys is not None and key in keys)
                or (not commuting and signature not in runs)
            ):
                close()
                stretch = commuting
                keys = None
            run = runs.get(signature)
            if run is None:
                run = runs[signature] = Run(kind, mapping, target, shape)
                run.columns = columns
            if key is not None:
                if keys is None:
                    keys = touched[target] = set()
                keys.add(key)
            run.messages.append(message)
        close()
        self._planned = []

    def statement(
        self, run: Run, context: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
    ) -> tuple[bytes, list[Any], bool | None]:
        """A run's statement (composed for `context`'s encoding, once per shape), its
        parameters, and whether to prepare it.

        A join of many rows is planned for their number each time: a plan cached for a
        prepared statement (made for any array, while the table may still have been small)
        would scan the whole table for every run. A single row's statement is prepared: its
        plan is an index lookup whatever the table's size."""
        names = [c.name for c in run.columns]
        single = len(run.messages) == 1
        m = run.mapping
        params: list[Any]
        if single:
            msg = run.messages[0]
            params = [m.text_of[name](msg) for name in names]
            if run.kind == "update":
                # The statement's text sets the columns before it matches the key.
                keys = len(m.primary_key)
                params = params[keys:] + params[:keys]
        else:
            # Each column's values in PostgreSQL's text form, packed by the Rust core.
            specs = [m.text_specs[name] for name in names]
            params = list(map(pgarray.TextArray, _core.pack_text_columns(run.messages, specs)))
        # Composing costs more than sending: each shape is composed once per replayer (and
        # column types: the table may have been altered since).
        types = self.cache.tables[run.target].types
        key = (run.kind, run.target, run.shape, single, *names, *(types.get(n) for n in names))
        query = self.cache.composed.get(key)
        if query is None:
            query = self.cache.composed[key] = self._compose(run, names, single).as_bytes(context)
        prepare = None if single or run.kind == "insert" else False
        return query, params, prepare

    def _compose(self, run: Run, names: list[str], single: bool) -> sql.Composed:
        # The replayer reads each target's column types before it asks for statements.
        types = self.cache.tables[run.target].types
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


def _key_match(m: TableMapping, cast: Callable[[str], sql.Composable]) -> sql.Composable:
    return sql.SQL(" and ").join(
        sql.SQL("t.{} = {}").format(sql.Identifier(c.name), cast(c.name)) for c in m.primary_key
    )


def _compose_single(
    run: Run, table: sql.Identifier, names: list[str], cast: Callable[[str], sql.Composable]
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


def decode_entries(entries: list[Entry], catalog: TypeCatalog) -> list[Operation]:
    """The operations of (decrypted) `entries`, in order, decoded in one call (a call per
    entry costs more than a small entry's decode).

    Raises:
        DecodeError, UnknownTypeError: An entry does not decode (the message names it).
        DecryptError: An entry is still encrypted.
    """
    datas = []
    for entry in entries:
        if entry.encrypted:
            entry.unmarshal_data(catalog)  # raises: still encrypted
        datas.append(entry.data if type(entry.data) is bytes else bytes(entry.data))
    operations, decoded = decode_all(datas, catalog)
    if decoded < len(datas):
        _undecodable(entries[decoded].id or 0, datas[decoded], catalog)
    return operations


def decode_page(
    rows: Sequence[Sequence[Any]], datas: list[bytes], catalog: TypeCatalog
) -> list[Operation]:
    """The operations of stored entry `rows` (their id first) from their decrypted `datas`,
    without building entries (a page that is only applied), in order, decoded in one call.

    Raises:
        DecodeError, UnknownTypeError: An entry does not decode (the message names it).
    """
    operations, decoded = decode_all(datas, catalog)
    if decoded < len(datas):
        _undecodable(rows[decoded][0], datas[decoded], catalog)
    return operations


def _undecodable(entry_id: int, data: bytes, catalog: TypeCatalog) -> NoReturn:
    """Raises the error of entry `entry_id`'s `data`, which did not decode in its page."""
    try:
        decode(data, catalog)  # raises the queue's error
    except (DecodeError, UnknownTypeError) as exc:
        raise type(exc)(f"entry {entry_id}: {exc.args[0]}", *exc.args[1:]) from exc
    raise AssertionError(f"entry {entry_id} decodes alone but not in its page")


def on_the_keys_index(page: PreparedPage, scans: str) -> PreparedPage:
    """`page` with its statements run with enable_seqscan off (``_sql.INDEX_SCANS``) and the
    setting put back to `scans` after them, in the same pipeline: for a replay in one long
    transaction (its tables new, not analyzed), whose traits' catalog queries, and whatever
    the transaction does next, keep the planner's own setting."""
    before: tuple[bytes, list[Any], bool | None] = (_sql.INDEX_SCANS.encode(), [], False)
    after: tuple[bytes, list[Any], bool | None] = (_sql.PUT_BACK_SEQSCAN.encode(), [scans], False)
    return page._replace(steps=[before, *page.steps, after])


_KEY_GIVEN = (False,)
_KEY_GENERATED = (True,)
"""The shapes of an insert: whether the database generates its key."""

_KINDS = {
    OpType.CREATE: "insert",
    OpType.CREATE_ITEMS: "insert",
    OpType.UPDATE: "update",
    OpType.DELETE: "delete",
    OpType.DELETE_ITEMS: "delete",
}
