# Generated from python/oplog/replay_async.py by scripts/async_to_sync.py: do not edit.
# Edit the asyncio source, then run `make sync`.
"""Replay: applying decoded operations to tables, in order.

Replaying every entry of a log into suffix tables (``users`` -> ``users_replay``) must reproduce
the live tables exactly; that is how a log is verified, and (with no suffix) how it is replicated.
The set-based plan is in :mod:`oplog.replay_plan`; this module runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from itertools import groupby
from typing import TYPE_CHECKING, Any

import psycopg
from google.protobuf.message import Message
from psycopg import pq, sql

from oplog import pgarray
from oplog._db import execute
from oplog.catalog import check_identifier
from oplog.errors import DecodeError, InvalidParameterError, SchemaError, UnknownTypeError
from oplog.mapping import replayed_mask
from oplog.operation import Operation, OpType
from oplog.replay_plan import Plan, PreparedPage, ReplayCache, TableTraits, decode_entries
from oplog.writer import Writer

if TYPE_CHECKING:
    from oplog.catalog import TypeCatalog
    from oplog.entry import Entry

__all__ = ["Replayer", "tables_equal"]

# What set-based replay needs to know of a table (as the search_path finds it), one row per
# column: its name; its type without its modifier (format_type spells varchar(3) as "character
# varying" and char(3) as bpchar, so a value too long for its column fails on assignment as an
# insert of it one by one fails, not truncated); whether it is an identity column; its
# default's text (a generated column's expression is computed from its own row: no default);
# and, the same on every row, the table's primary key columns if operations on different rows
# of it commute (TableTraits.key): a plain table, not inherited from or partitioned, without
# row security, rules, triggers (foreign keys are triggers too), and without uniqueness other
# than its primary key. Read again once TRAITS_TTL has passed: a replica's tables may change
# while it runs.
_TABLE_TRAITS = """
with t as materialized (  -- the table once, not once per column
  select c.oid, case when c.relkind = 'r' and not c.relispartition and not c.relhassubclass
      and not c.relrowsecurity and not c.relhasrules
      and not exists (select from pg_trigger t where t.tgrelid = c.oid)
      and not exists (select from pg_constraint k where k.contype in ('f', 'u', 'x')
        and (k.conrelid = c.oid or k.confrelid = c.oid))
      and not exists (select from pg_index i where i.indrelid = c.oid and i.indisunique
        and not i.indisprimary)
    then array(select a.attname::text
      from pg_index i cross join unnest(i.indkey) with ordinality as k (attnum, n)
      join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
      where i.indrelid = c.oid and i.indisprimary order by k.n) end as key
  from pg_class c where c.oid = to_regclass(quote_ident(%s))
)
select a.attname, format_type(a.atttypid, null), a.attidentity <> '',
  case when a.attgenerated = '' then pg_get_expr(d.adbin, d.adrelid) end, t.key
from t join pg_attribute a on a.attrelid = t.oid
left join pg_attrdef d on (d.adrelid, d.adnum) = (a.attrelid, a.attnum)
where a.attnum > 0 and not a.attisdropped
"""

# Defaults that are the same whichever order rows are inserted in: a constant (maybe cast) or
# the transaction's start time.
_STEADY_DEFAULT = re.compile(
    r"(?:'(?:[^']|'')*'|-?[0-9][0-9.e+-]*|true|false|NULL|now\(\)|transaction_timestamp\(\)"
    r"|CURRENT_(?:TIMESTAMP|DATE|TIME)|LOCAL(?:TIMESTAMP|TIME))"
    r"(?:::[a-z ]+(?:\([0-9]+(?:,[0-9]+)?\))?(?:\[\])?)*"
)


TRAITS_TTL = 1.0
"""Seconds a replayer relies on what it read of a target table (TableTraits) before reading
it again."""


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
        self._cache = ReplayCache(writer.statements, table_suffix)

    def _ready_table(self, target: str, msg: Message) -> None:
        """Creates suffix table `target` like `msg`'s table unless it exists (checked once)."""
        if self._suffix and target not in self._ready:
            if not self._writer.has_table(target):
                table = self._writer.catalog.table_of(msg).name
                self._writer.create_table_like(table, target)
            self._ready.add(target)

    def _target(self, msg: Message) -> str:
        target = self._cache.target(msg)
        self._ready_table(target, msg)
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
        """Applies `operations` in order, one statement per operation; returns how many were
        applied. The reference that :meth:`apply_many` must equal.

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
                mask = replayed_mask(w.statements.map(first.message, target), first)
                w.update(first.message, mask, first.null_paths, target, options=first.options)
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

    def apply_entries(
        self,
        entries: Iterable[Entry],
        catalog: TypeCatalog,
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> int:
        """Applies the operations of (decrypted) entries, in order, with as few statements as
        their order allows (see :meth:`apply_many`, also for `meanwhile`); returns how many
        entries were applied.

        Raises:
            DecodeError, UnknownTypeError, InvalidParameterError: As :meth:`apply_entry`.
        """
        page = self._prepare_entries(entries, catalog)
        self._send(page, meanwhile)
        return page.entries

    def apply_many(
        self,
        operations: Iterable[Operation],
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> int:
        """Applies `operations` in order, as :meth:`apply` does, but set-based: each run of
        consecutive operations of one kind on one table with one shape (the same columns set
        and nulled, keys given or generated) is one statement over array parameters, and the
        statements go in one pipeline. A run ends wherever batching could change the result:
        another kind, table or shape; a row the run already touched; an operation with
        options (applied on its own, as :meth:`apply` would). The result is that of
        :meth:`apply`, row for row.

        `meanwhile`, if given, is called (and awaited) once the statements are sent and before
        their results are awaited: work that overlaps with the server's (a consumer reads its
        next page from another connection then; a replay decrypts and plans its next page).
        On a connection already in pipeline mode (the caller's ``conn.pipeline()``), the
        statements join that pipeline, and an error among them is raised at its next sync.

        Returns:
            The number of operations applied.

        Raises:
            InvalidParameterError: As :meth:`apply`.
        """
        page = self._prepare(operations, 0)
        self._send(page, meanwhile)
        return page.operations

    def _prepare_entries(self, entries: Iterable[Entry], catalog: TypeCatalog) -> PreparedPage:
        """The statements of :meth:`apply_entries`, ready to send (see :meth:`_prepare`)."""
        entries = list(entries)
        return self._prepare(decode_entries(entries, catalog), len(entries))

    def _prepare(self, operations: Iterable[Operation], entries: int) -> PreparedPage:
        """The set-based statements of `operations`, planned and composed with their values,
        and nothing sent: what :meth:`_send` sends (:meth:`_plan`, then :meth:`_finish`)."""
        return self._finish(self._plan(operations), entries)

    def _plan(self, operations: Iterable[Operation]) -> Plan:
        """`operations` checked and noted (:meth:`Plan.add`), with no I/O: what a replay can
        do for its next page while the server applies this one, whatever happens to it."""
        plan = Plan(self._cache)
        plan.add(operations)
        return plan

    def _finish(self, plan: Plan, entries: int) -> PreparedPage:
        """`plan`'s statements with their values, nothing sent. The target tables are made
        ready and their traits read (statements on the connection, when not known yet) before
        the plan is arranged."""
        for target, msg in plan.targets.items():
            self._ready_table(target, msg)
            self._table_traits(target)
        return self._compose(plan, entries)

    def _finish_ahead(self, plan: Plan, entries: int) -> PreparedPage | None:
        """:meth:`_finish` when it needs no I/O: every table `plan` writes is ready, and its
        traits were read less than :data:`TRAITS_TTL` seconds ago (a replicator prepares its
        next page so while the target applies the current one). None otherwise."""
        for target in plan.targets:
            if self._suffix and target not in self._ready:
                return None
            if self._cache.fresh_traits(target, TRAITS_TTL) is None:
                return None
        return self._compose(plan, entries)

    def _compose(self, plan: Plan, entries: int) -> PreparedPage:
        """`plan` arranged, and its statements composed with their values (the target tables'
        traits known)."""
        conn = self._writer.conn
        plan.arrange()
        pgarray.register(conn)
        # Every run's statement and values before the first is sent: a value that cannot be
        # sent (a NUL in a text) fails the whole call with nothing written.
        steps = [
            step if isinstance(step, list) else plan.statement(step, conn) for step in plan.steps
        ]
        return PreparedPage(steps, plan.count, entries)

    def _send(self, page: PreparedPage, meanwhile: Callable[[], object] | None) -> None:
        """Sends a prepared page's statements in one pipeline, awaits `meanwhile` (if any),
        then their results. On a connection in pipeline mode already (a replicator's page),
        the statements join that pipeline, and an error among them is raised at its next
        sync: a nested pipeline would sync on entering and on leaving."""
        steps = page.steps
        conn = self._writer.conn
        single = meanwhile is None and len(steps) == 1 and not isinstance(steps[0], list)
        if steps and not single and conn.pgconn.pipeline_status == pq.PipelineStatus.OFF:
            with conn.pipeline():
                self._run_steps(steps, meanwhile)
        else:
            self._run_steps(steps, meanwhile)

    def _run_steps(
        self,
        steps: list[tuple[bytes, list[Any], bool | None] | list[Operation]],
        meanwhile: Callable[[], object] | None,
    ) -> None:
        for step in steps:
            self._run_step(step)
        if meanwhile is not None:
            meanwhile()

    def _run_step(self, step: tuple[bytes, list[Any], bool | None] | list[Operation]) -> None:
        if isinstance(step, list):
            self.apply(step)
            return
        query, params, prepare = step
        execute(self._writer.conn, query, params, prepare=prepare)

    def _table_traits(self, table: str) -> TableTraits:
        """What set-based replay needs to know of `table` (as the search_path finds it):
        see :class:`oplog.replay_plan.TableTraits`; read again when :data:`TRAITS_TTL` seconds
        have passed since the last read (a replica's tables may gain a unique index or a
        trigger while a replicator runs; reading them for every page cost 11% of `replicate`)."""
        found = self._cache.fresh_traits(table, TRAITS_TTL)
        if found is not None:
            return found
        columns = execute(self._writer.conn, _TABLE_TRAITS, (table,)).fetchall()
        if not columns:
            raise SchemaError(f"no table {table!r} on the search_path")
        key = columns[0][4]
        traits = TableTraits(
            types={str(name): str(kind) for name, kind, _, _, _ in columns},
            key=tuple(key) if key else None,
            defaulted=frozenset(
                str(name)
                for name, _, identity, default, _ in columns
                if identity or (default is not None and not _STEADY_DEFAULT.fullmatch(default))
            ),
        )
        self._cache.set_traits(table, traits)
        return traits


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
