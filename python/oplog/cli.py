"""The ``oplog`` command: inspect, verify and replay an operation log, and run the demo.

Database: ``--dsn`` (``--dsn ""``: libpq's defaults), else ``OPLOG_DSN``, else the libpq
environment (``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGSERVICE``, ...) when any of
it is set, else an embedded PostgreSQL in ``--data-dir`` (default
``$XDG_DATA_HOME/oplog/pgdata``; for root ``/var/lib/oplog/pgdata``), started on demand and left
running for later runs.
Keys: ``--key-file`` or ``OPLOG_KEY_FILE`` (default ``$XDG_DATA_HOME/oplog/keys.json``).

Exit codes: 0 success; 1 verification found a problem, or an entry does not replay; 2 usage
error (a bad argument, a malformed DSN, an argument that is not UTF-8); 3 database unreachable
(or the embedded server failed); 4 key file missing, wrong or (with ``--strict-perms``) readable
by others, or an entry does not decrypt; 5 the database lacks tables the command needs (oplog's:
run ``oplog migrate``; the replayed ones: see ``--search-path``), or has tables in the way of a
migration; 6 no such entry; 7 the ``--types`` module or catalog cannot be loaded, or an entry
holds a type it does not know; 8 a file cannot be read or written; 9 the database holds
HashiCorp Boundary's oplog tables, not adopted yet (``oplog migrate`` adopts them); 70 an
unexpected error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import psycopg
from google.protobuf.json_format import MessageToDict

import oplog
from oplog import _core, _sql, embedded, inspection, keyfile, schema
from oplog.catalog import check_identifier
from oplog.chain import SavedHeads
from oplog.checkpoint import check_partition, partition_consumer
from oplog.consumer import lag_behind
from oplog.entry import Entry, ReadPages, entries_from_rows, rows_plaintexts
from oplog.log import Ahead, _anext_or_none, _stored_pages
from oplog.replay import tables_equal
from oplog.replay_plan import Plan, decode_page, on_the_keys_index

EXIT_OK = 0
EXIT_VERIFY = 1
EXIT_USAGE = 2
EXIT_DB = 3
EXIT_KEY = 4
EXIT_SCHEMA = 5
EXIT_NOT_FOUND = 6
EXIT_TYPES = 7
EXIT_IO = 8
EXIT_BOUNDARY = 9
EXIT_UNEXPECTED = 70


# The libpq environment variables that say which server and database to connect to: with any
# of them set (and neither --dsn nor OPLOG_DSN), the command connects as libpq would.
_LIBPQ_ENVIRONMENT = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGOPTIONS", "PGAPPNAME",
)  # fmt: skip


class CommandError(Exception):
    """A failure reported as one line on stderr with an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _fail(code: int, message: str) -> NoReturn:
    raise CommandError(code, message)


# --- context ------------------------------------------------------------------------------------


class Context:
    """What every command needs, resolved lazily from the arguments and the environment."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: TextIO = sys.stdout
        self.json: bool = bool(getattr(args, "json", False))

    @property
    def data_dir(self) -> Path:
        return Path(self.args.data_dir) if self.args.data_dir else embedded.default_data_dir()

    @property
    def key_file(self) -> Path:
        return Path(self.args.key_file) if self.args.key_file else keyfile.default_key_file()

    def _chosen_dsn(self) -> tuple[str, str] | None:
        """The DSN and where it came from: --dsn (``""`` is libpq's defaults), else
        OPLOG_DSN, else the libpq environment when any of its variables is set (an empty
        DSN: libpq reads them); None means the embedded server."""
        if self.args.dsn is not None:
            return str(self.args.dsn), "--dsn"
        if os.environ.get("OPLOG_DSN"):
            return os.environ["OPLOG_DSN"], "OPLOG_DSN"
        found = sorted(name for name in _LIBPQ_ENVIRONMENT if os.environ.get(name))
        if found:
            return "", f"the libpq environment ({', '.join(found)})"
        return None

    def dsn_source(self) -> str:
        """Where the DSN comes from, for error messages."""
        chosen = self._chosen_dsn()
        return "the embedded server" if chosen is None else chosen[1]

    def dsn(self) -> str:
        chosen = self._chosen_dsn()
        if chosen is not None:
            return chosen[0]
        try:
            return embedded.ensure_running(self.data_dir)
        except oplog.EmbeddedServerError as exc:
            _fail(EXIT_DB, str(exc))

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return self.connect_to(self.dsn(), self.dsn_source(), **kwargs)

    def connect_to(self, dsn: str, what: str, **kwargs: Any) -> psycopg.Connection[Any]:
        """Connects to `dsn` (named `what` in errors: a flag or a variable)."""
        if self.args.search_path:
            kwargs["options"] = "-c search_path=" + self.args.search_path.replace(" ", "")
        try:
            return psycopg.connect(dsn, connect_timeout=10, **kwargs)
        except psycopg.OperationalError as exc:
            _fail(EXIT_DB, f"cannot connect to the database: {_first_line(exc)}")
        except psycopg.ProgrammingError as exc:
            # libpq could not parse the string: a usage error, not an unreachable server.
            _fail(EXIT_USAGE, f"{what} is not a valid connection string: {_first_line(exc)}")

    def migrated(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        if not schema.applied_versions(conn):
            _not_adopted(conn)
            _fail(EXIT_SCHEMA, "the database has no oplog tables: run `oplog migrate` first")
        return conn

    def tailable(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        if 2 not in schema.applied_versions(conn):
            _not_adopted(conn)
            _fail(EXIT_SCHEMA, "the database lacks oplog migration 2: run `oplog migrate`")
        return conn

    def wrapper(self) -> oplog.MultiWrapper:
        try:
            # --key-file, else $OPLOG_KEYS (the material), else the key file.
            return keyfile.load_keys(
                self.args.key_file or None,
                strict_permissions=bool(getattr(self.args, "strict_perms", False)),
            )
        except oplog.KeyFileError as exc:
            _fail(EXIT_KEY, str(exc))

    def catalog(self) -> oplog.TypeCatalog | None:
        spec = self.args.types
        if not spec:
            return None
        module_name, _, attribute = spec.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attribute or "CATALOG")
        except (ImportError, AttributeError, ValueError) as exc:
            _fail(EXIT_TYPES, f"cannot load --types {spec}: {type(exc).__name__}: {exc}")
        if not isinstance(found, oplog.TypeCatalog):
            _fail(EXIT_TYPES, f"--types {spec} is a {type(found).__name__}, not a TypeCatalog")
        return found

    def emit(self, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.json:
            for row in rows:
                self.out.write(json.dumps(row, default=str) + "\n")
            return
        _table(self.out, rows, columns)


def _not_adopted(conn: psycopg.Connection[Any]) -> None:
    """Exits 9 when the database holds HashiCorp Boundary's oplog tables, not yet adopted."""
    entries = schema.boundary_tables(conn)
    if entries is not None:
        _fail(
            EXIT_BOUNDARY,
            f"the database holds HashiCorp Boundary's oplog tables ({entries} entries), not"
            " adopted yet: `oplog migrate` adopts them in place (no entry is rewritten)",
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _table(out: TextIO, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={','.join(v) if v else ''}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


class Progress:
    """A progress line on stderr, silent when stderr is not a terminal: a bar with rate and ETA
    when the total is known, else the count and rate with a `detail` that costs something to
    compute (called only when the line is redrawn, at most 10 times a second)."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.start = time.monotonic()
        self.enabled = sys.stderr.isatty() and total != 0
        self.shown = 0.0
        self.drawn = False

    def step(self, n: int = 1, detail: Callable[[], str] | None = None) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.shown <= 0.1 and self.done != self.total):
            return
        self.shown, self.drawn = now, True
        rate = self.done / max(now - self.start, 1e-9)
        if self.total is None:
            # ESC[K clears what a longer line left.
            line = f"{self.label} {self.done:,} ({rate:,.0f}/s)"
            sys.stderr.write(f"\r\x1b[K{line}{detail() if detail else ''}")
        else:
            eta = (self.total - self.done) / rate if rate else 0
            filled = int(30 * self.done / self.total)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}"
                f" {rate:.0f}/s ETA {eta:.0f}s"
            )
            if self.done == self.total:
                sys.stderr.write("\n")
                self.drawn = False
        sys.stderr.flush()

    def end(self) -> None:
        """Ends a line left open (an open-ended count, or a bar that stopped short)."""
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


# --- operations without a catalog ---------------------------------------------------------------


def _describe_ops(entry: Entry, catalog: oplog.TypeCatalog | None) -> list[dict[str, Any]]:
    """The entry's operations: decoded with the catalog, or from the envelope alone."""
    if catalog is not None:
        return [
            {
                "type": op.type_name,
                "op": op.op_type.name,
                "field_mask": list(op.field_mask),
                "null_paths": list(op.null_paths),
                "message": MessageToDict(op.message, preserving_proto_field_name=True),
            }
            for op in entry.unmarshal_data(catalog)
        ]
    raw, _ = _core.decode_operations(entry.data, 0, None)
    return [
        {
            "type": type_name,
            "op": oplog.OpType(op_type).name,
            "field_mask": list(mask),
            "null_paths": list(nulls),
            "value_bytes": len(value),
        }
        for type_name, value, op_type, mask, nulls, _options, _offset in raw
    ]


def _entries(
    ctx: Context, conn: psycopg.Connection[Any], ids: list[int] | None = None
) -> Iterator[tuple[Entry | None, int, str | None]]:
    """(entry, id, error) for every stored entry, decrypting each; errors do not stop it."""
    return inspection.stored_entries(conn, ctx.wrapper(), ids)


# --- commands -----------------------------------------------------------------------------------


def cmd_demo(ctx: Context) -> int:
    """Runs the demo: migrate, write (with a ticket race), read, replay, verify."""
    from oplog import demo

    if ctx.args.print_schema:
        ctx.out.write(demo.schema_sql())
        return EXIT_OK
    if not ctx.key_file.exists():
        keyfile.add_key(ctx.key_file, keyfile.new_key_id())
        sys.stderr.write(f"oplog: created key file {ctx.key_file}\n")
    wrapper = ctx.wrapper()
    dsn = ctx.dsn()
    source = ctx.dsn_source()
    where = f"embedded PostgreSQL in {ctx.data_dir}" if source == "the embedded server" else source
    out = sys.stdout if not ctx.json else open(os.devnull, "w")  # noqa: SIM115
    out.write(f"oplog demo on {where}\n")
    start = time.perf_counter()
    try:
        summary = demo.run(lambda: _connect_dsn(dsn), wrapper, out)
    finally:
        if out is not sys.stdout:
            out.close()
    total = time.perf_counter() - start
    if ctx.json:
        ctx.out.write(json.dumps({**dataclasses.asdict(summary), "total_seconds": total}) + "\n")
    else:
        timings = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in summary.seconds.items())
        ctx.out.write(
            f"summary: {summary.entries_written} entries written ({summary.conflicts} conflict "
            f"retried), {summary.entries_in_log} in the log, {summary.entries_replayed} replayed, "
            f"tables equal: {', '.join(summary.tables_equal) or 'none'}\n"
            f"timings: {timings}; total {total:.2f} s\n"
        )
    return EXIT_OK if not summary.tables_differing and summary.verified_ok else EXIT_VERIFY


def _connect_dsn(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, connect_timeout=10)


def cmd_migrate(ctx: Context) -> int:
    """Applies (or with --down reverts) the bundled migrations."""
    adopting: int | None = None
    with ctx.connect(autocommit=True) as conn:
        try:
            if ctx.args.down:
                versions = oplog.migrate_down(conn, target=ctx.args.target or 0)
                verb = "reverted"
            else:
                adopting = schema.boundary_tables(conn)
                versions = oplog.migrate(conn, target=ctx.args.target)
                verb = "applied"
                if adopting is not None and versions and not ctx.json:
                    ctx.out.write(f"adopted the Boundary oplog tables: {adopting} entries\n")
        except (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject) as exc:
            _fail(
                EXIT_SCHEMA,
                f"cannot migrate: {exc.diag.message_primary}, made by something other than"
                " oplog migrate; nothing was changed",
            )
        current = schema.applied_versions(conn)
    if ctx.json:
        payload: dict[str, Any] = {verb: versions, "current": current}
        if not ctx.args.down and adopting is not None and versions:
            payload["adopted"] = adopting
        ctx.out.write(json.dumps(payload) + "\n")
    else:
        at = current[-1] if current else 0
        ctx.out.write(f"{verb} {versions or 'nothing'}; schema at version {at}\n")
    return EXIT_OK


def cmd_ls(ctx: Context) -> int:
    """Lists entries (filters: aggregate, after id, limit, metadata key=value)."""
    filters: list[tuple[str, str]] = []
    for item in ctx.args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(EXIT_USAGE, f"--metadata takes key=value, not {item!r}")
        filters.append((key, value))
    with ctx.connect() as conn:
        ctx.migrated(conn)
        ids = inspection.entry_ids(
            conn, after=ctx.args.after, aggregate=ctx.args.aggregate or None, metadata=filters,
            limit=ctx.args.limit,
        )  # fmt: skip
        metadata = inspection.entry_metadata(conn, ids)
        rows = []
        for entry, id_, error in _entries(ctx, conn, ids):
            if entry is None:
                _fail(EXIT_KEY, f"entry {id_} {error}")
            rows.append(
                {
                    "id": entry.id,
                    "created": entry.create_time,
                    "aggregate": entry.aggregate_name,
                    "version": entry.format_version,
                    "key_id": entry.key_id,
                    "ops": len(_core.decode_operations(entry.data, 0, None)[0]),
                    "bytes": len(entry.data),
                    "metadata": metadata.get(id_, {}),
                }
            )
    ctx.emit(rows, ["id", "created", "aggregate", "version", "key_id", "ops", "bytes", "metadata"])
    return EXIT_OK


def cmd_show(ctx: Context) -> int:
    """Shows one entry and its operations."""
    catalog = ctx.catalog()
    with ctx.connect() as conn:
        ctx.migrated(conn)
        found = list(_entries(ctx, conn, [ctx.args.id]))
        if not found:
            _fail(EXIT_NOT_FOUND, f"no entry with id {ctx.args.id}")
        entry, id_, error = found[0]
        if entry is None:
            _fail(EXIT_KEY, f"entry {id_} {error}")
        metadata = inspection.entry_metadata(conn, [id_]).get(id_, {})
    try:
        ops = _describe_ops(entry, catalog)
    except (oplog.DecodeError, oplog.UnknownTypeError) as exc:
        _fail(EXIT_VERIFY, f"entry {id_} does not decode: {exc}")
    head = {
        "id": entry.id,
        "created": entry.create_time,
        "aggregate": entry.aggregate_name,
        "version": entry.format_version,
        "key_id": entry.key_id,
        "metadata": metadata,
        "operations": ops,
    }
    if ctx.json:
        ctx.out.write(json.dumps(head, default=str) + "\n")
        return EXIT_OK
    for key in ("id", "created", "aggregate", "version", "key_id", "metadata"):
        ctx.out.write(f"{key + ':':<11}{_cell(head[key])}\n")
    for i, op in enumerate(ops):
        detail = op.get("message", f"{op.get('value_bytes')} bytes")
        masks = f" mask={op['field_mask']}" if op["field_mask"] else ""
        nulls = f" null={op['null_paths']}" if op["null_paths"] else ""
        ctx.out.write(f"  [{i}] {op['op']} {op['type']}{masks}{nulls} {detail}\n")
    return EXIT_OK


def cmd_verify(ctx: Context) -> int:
    """Checks every entry (decrypts, decodes, walks every aggregate's chain: see oplog.chain);
    with --replay also replays into fresh tables (in a transaction that is rolled back) and
    compares them with the live tables; --save-heads / --heads keep and check the heads
    outside the database."""
    catalog = ctx.catalog()
    if ctx.args.replay and catalog is None:
        _fail(EXIT_USAGE, "verify --replay needs --types to know the tables")
    log = oplog.Oplog(ctx.wrapper(), catalog or oplog.TypeCatalog())
    problems: list[dict[str, Any]] = []
    with ctx.connect() as conn:
        ctx.migrated(conn)
        progress = Progress("verify", inspection.count_entries(conn))
        try:
            report = log.verify(
                conn,
                saved_heads=ctx.args.heads,
                require_chain=ctx.args.require_chain,
                contents=not ctx.args.chains_only,
                on_entry=progress.step,
            )
        except oplog.SchemaError as exc:
            _fail(EXIT_SCHEMA, str(exc))
        except oplog.OplogError as exc:  # the saved heads file
            _fail(EXIT_USAGE, str(exc))
        conn.rollback()
        problems = [problem.as_dict() for problem in report.problems]
        if ctx.args.replay and catalog is not None and not problems:
            problems += _replay_and_compare(ctx, conn, catalog, report.entries)
    if ctx.args.save_heads and not problems:
        SavedHeads.save(ctx.args.save_heads, log.wrapper, report.heads)
    for problem in problems:
        if "kind" in problem:
            where = problem["kind"]
        elif "entry" in problem:
            where = f"entry {problem['entry']}"
        else:
            where = f"table {problem['table']}"
        sys.stderr.write(f"oplog: {where}: {problem['problem']}\n")
    result = {
        "entries": report.entries,
        "chained": report.chained,
        "unchained": report.unchained,
        "aggregates": report.aggregates,
        "problems": len(problems),
        "ok": not problems,
    }
    if ctx.json:
        for problem in problems:
            ctx.out.write(json.dumps(problem) + "\n")
        ctx.out.write(json.dumps(result) + "\n")
    else:
        ctx.out.write(
            f"verified {report.entries} entries ({report.chained} chained in"
            f" {report.aggregates} aggregates, {report.unchained} unchained): "
            + (("every chain whole" if ctx.args.chains_only
                else "all decrypt and decode, every chain whole") if not problems
               else f"{len(problems)} problem(s)")
            + (" and replay to equal tables" if ctx.args.replay and not problems else "")
            + (f"; heads saved to {ctx.args.save_heads}" if ctx.args.save_heads and not problems
               else "")
            + "\n"
        )  # fmt: skip
    return EXIT_OK if not problems else EXIT_VERIFY


def _replay_and_compare(
    ctx: Context, conn: psycopg.Connection[Any], catalog: oplog.TypeCatalog, total: int
) -> list[dict[str, Any]]:
    suffix = "_oplog_verify"
    log = oplog.Oplog(ctx.wrapper(), catalog)
    writer = oplog.Writer(conn, catalog)
    tables = sorted({catalog.table_of(catalog.get(name)).name for name in catalog})
    problems: list[dict[str, Any]] = []
    with conn.transaction(force_rollback=True):
        for table in tables:
            if writer.has_table(table):
                writer.drop_table_if_exists(table + suffix)
                writer.create_table_like(table, table + suffix)
        progress = Progress("replay", total)
        replayer = oplog.Replayer(writer, suffix)
        try:
            _replay_pages(conn, log, 0, replayer, progress)
        except _ReplayFailed as failed:
            # The replay cannot go on (its transaction is aborted): that entry is the problem.
            return [{"entry": failed.entry_id, "problem": f"does not replay: {failed.error}"}]
        for table in tables:
            if writer.has_table(table) and not tables_equal(conn, table, table + suffix):
                problems.append({"table": table, "problem": "replay does not reproduce it"})
    return problems


def _check_suffix(catalog: oplog.TypeCatalog, suffix: str) -> None:
    """Exits 2 unless every ``<table><suffix>`` is a table name PostgreSQL can hold."""
    if not suffix:
        _fail(EXIT_USAGE, "--suffix must not be empty: that would replay onto the live tables")
    for name in catalog:
        table = catalog.table_of(catalog.get(name)).name
        try:
            check_identifier(table + suffix, "replay table name")
        except oplog.InvalidParameterError as exc:
            _fail(EXIT_USAGE, f"--suffix {suffix!r} is too long: {exc}")


@contextlib.contextmanager
def _replay_errors(what: str, hint: str) -> Iterator[None]:
    """Turns a failure to replay into an exit code and one line naming `what` (an entry, or
    the target), with `hint` after an integrity error."""
    try:
        yield
    except oplog.UnknownTypeError as exc:
        _fail(EXIT_TYPES, f"{exc} (the --types catalog)")
    except oplog.SchemaError as exc:
        _fail(EXIT_SCHEMA, f"{exc}: are the tables on the search path? (--search-path)")
    except (oplog.DecodeError, oplog.InvalidParameterError) as exc:
        _fail(EXIT_VERIFY, f"cannot replay {exc}")
    except psycopg.errors.UndefinedTable as exc:
        _fail(
            EXIT_SCHEMA,
            f"{what}: {exc.diag.message_primary}: are the tables on the search path?"
            " (--search-path)",
        )
    except psycopg.IntegrityError as exc:
        _fail(
            EXIT_VERIFY,
            f"{what} does not replay into {exc.diag.table_name}: {exc.diag.message_primary}"
            f" ({hint})",
        )
    except psycopg.DataError as exc:
        _fail(EXIT_VERIFY, f"{what} does not replay: {exc.diag.message_primary}")


def _replay_entry(replayer: oplog.Replayer, entry: Entry, catalog: oplog.TypeCatalog) -> None:
    """Replays one entry; a failure exits with its code and a line naming the entry."""
    with _replay_errors(f"entry {entry.id}", "a replay already there? continue it with --after"):
        replayer.apply_entry(entry, catalog)


class _ReplayFailed(Exception):
    """A page did not replay; `error` names the entry that does not."""

    def __init__(self, entry_id: int | None, error: CommandError) -> None:
        super().__init__(str(error))
        self.entry_id = entry_id
        self.error = error


_PlannedRows = tuple[tuple[list[Any], list[Any]], "Plan | oplog.OplogError"]
"""A page of a replay: its stored rows (entries, metadata), and their plan or why none."""


def _replay_pages(
    conn: psycopg.Connection[Any],
    log: oplog.Oplog,
    after_id: int,
    replayer: oplog.Replayer,
    progress: Progress,
) -> int:
    """Replays the entries after `after_id` in pages, set-based (see
    ``Replayer.apply_many``), in the caller's transaction; returns how many. A page that fails
    is rolled back to its savepoint and replayed again one entry at a time, so that the error
    names the entry.

    As ``Oplog.replay`` does, the next page's rows are read before this page's statements are
    sent, and decrypted, decoded and planned while the server applies them. Only the part of
    planning without I/O goes ahead (``Replayer._plan``): the rest (tables made ready, their
    traits read, statements composed) runs in the page's own savepoint, so that whatever
    fails, fails there.

    Raises:
        _ReplayFailed: An entry does not replay.
    """
    catalog = log.catalog
    stored = _stored_pages(conn, ReadPages(None, after_id, None), operations_only=True)

    def plan(rows: tuple[list[Any], list[Any]]) -> _PlannedRows:
        # A page that does not decrypt fails here, as reading it did; one that does not decode
        # or plan is replayed one entry at a time, to name the entry. No entries are built
        # unless then.
        datas = rows_plaintexts(rows[0], log.wrapper)
        try:
            return rows, replayer._plan(decode_page(rows[0], datas, catalog))
        except oplog.OplogError as exc:
            return rows, exc

    # Each page's statements run on the keys' index (replay_plan.on_the_keys_index).
    (scans,) = conn.execute(_sql.SEQSCAN_SETTING).fetchone() or ("on",)
    count = 0
    rows = _anext_or_none(stored)
    page = None if rows is None else plan(rows)
    while page is not None:
        stored_rows, planned = page
        entries_count = len(stored_rows[0])
        rows = _anext_or_none(stored)
        ahead = None if rows is None else Ahead(functools.partial(plan, rows))
        try:
            with conn.transaction():
                if isinstance(planned, oplog.OplogError):
                    raise planned
                prepared = replayer._finish(planned, entries_count)
                prepared = on_the_keys_index(prepared, scans)
                replayer._send(prepared, None if ahead is None else ahead.run)
        except (psycopg.Error, oplog.OplogError) as set_based:
            for entry in entries_from_rows(*stored_rows, log.wrapper):
                try:
                    _replay_entry(replayer, entry, catalog)
                except CommandError as error:
                    raise _ReplayFailed(entry.id, error) from None
            raise set_based  # one by one it replays: report the page's own error
        count += entries_count
        progress.step(entries_count)
        page = None if ahead is None else ahead.get()
    return count


def cmd_replay(ctx: Context) -> int:
    """Replays every entry (after --after) into <table><suffix> tables and commits."""
    catalog = ctx.catalog()
    if catalog is None:
        _fail(EXIT_USAGE, "replay needs --types to know the message types and tables")
    _check_suffix(catalog, ctx.args.suffix)
    with ctx.connect() as conn:
        ctx.migrated(conn)
        log = oplog.Oplog(ctx.wrapper(), catalog)
        replayer = oplog.Replayer(oplog.Writer(conn, catalog), ctx.args.suffix)
        progress = Progress("replay", inspection.count_entries(conn))
        with conn.transaction():
            try:
                count = _replay_pages(conn, log, ctx.args.after, replayer, progress)
            except _ReplayFailed as failed:
                raise failed.error from None
    if ctx.json:
        ctx.out.write(json.dumps({"replayed": count, "suffix": ctx.args.suffix}) + "\n")
    else:
        ctx.out.write(f"replayed {count} entries into tables with suffix {ctx.args.suffix!r}\n")
    return EXIT_OK


def _checkpoint(text: str | None) -> oplog.Checkpoint:
    try:
        return oplog.Checkpoint.of(text)
    except oplog.InvalidParameterError as exc:
        _fail(EXIT_USAGE, str(exc))


def cmd_tail(ctx: Context) -> int:
    """Prints entries in commit order, each with the checkpoint after it (give one to --after
    to continue from there); with --follow, keeps printing entries as they commit."""
    after = _checkpoint(ctx.args.after)
    with ctx.connect(autocommit=True) as conn:
        ctx.tailable(conn)
        log = oplog.Oplog(ctx.wrapper(), ctx.catalog() or oplog.TypeCatalog())
        if ctx.args.from_end:
            after = log.checkpoint(conn)
        for entry, checkpoint in log.tail(
            conn, after, poll_interval=ctx.args.poll_interval, channel=ctx.args.channel,
            follow=ctx.args.follow,
        ):  # fmt: skip
            row = {
                "id": entry.id,
                "created": entry.create_time,
                "aggregate": entry.aggregate_name,
                "ops": len(_core.decode_operations(entry.data, 0, None)[0]),
                "metadata": entry.metadata,
                "checkpoint": str(checkpoint),
            }
            if ctx.json:
                ctx.out.write(json.dumps(row, default=str) + "\n")
            else:
                # A stream has no table to align: one self-describing line per entry.
                ctx.out.write(
                    f"{row['id']:>6}  {_cell(row['created'])}  {row['aggregate']}  "
                    f"ops={row['ops']}  {_cell(row['metadata']) or '-'}  @{row['checkpoint']}\n"
                )
            ctx.out.flush()
    return EXIT_OK


def cmd_replicate(ctx: Context) -> int:
    """Follows the log of --from (default: the --dsn database) and applies every entry to the
    same tables in --to, exactly once, advancing the --consumer position in --to in the same
    transaction. Runs until interrupted, or with --once until it has caught up."""
    catalog = ctx.catalog()
    if catalog is None:
        _fail(EXIT_USAGE, "replicate needs --types to know the message types and tables")
    log = oplog.Oplog(ctx.wrapper(), catalog)
    total = 0
    progress = Progress("applied", None)

    def committed(entries: int, checkpoint: oplog.Checkpoint) -> None:
        nonlocal total
        total += entries
        progress.step(entries, lambda: f"; lag {_lag(source, checkpoint).entries:,} entries")
        if not ctx.json and not ctx.args.once and not progress.enabled:
            lag = _lag(source, checkpoint)
            ctx.out.write(
                f"applied {entries} entries ({total} in all); at {checkpoint}; lag"
                f" {lag.entries} entries\n"
            )
            ctx.out.flush()

    source_dsn = ctx.args.source or ctx.dsn()
    with (
        ctx.connect_to(
            source_dsn, "--from" if ctx.args.source else ctx.dsn_source(), autocommit=True
        ) as source,
        ctx.connect_to(ctx.args.target, "--to") as target,
    ):
        ctx.tailable(source)
        ctx.tailable(target)
        target.rollback()
        with _replay_errors("an entry", "was the target written to by something else?"):
            try:
                log.replicate(
                    source, target, ctx.args.consumer, batch_size=ctx.args.batch_size,
                    poll_interval=ctx.args.poll_interval, channel=ctx.args.channel,
                    follow=not ctx.args.once, on_commit=committed, partition=ctx.args.partition,
                    copy_log=ctx.args.with_log, synchronous_commit=ctx.args.synchronous_commit,
                )  # fmt: skip
            finally:
                progress.end()
        consumer = partition_consumer(ctx.args.consumer, ctx.args.partition)
        with target.transaction():
            position = oplog.Consumer(consumer).position(target)
        lag = _lag(source, position)
    result = {
        "applied": total,
        "consumer": consumer,
        "checkpoint": str(position),
        "lag": lag.entries,
    }
    if ctx.json:
        ctx.out.write(json.dumps(result) + "\n")
    else:
        ctx.out.write(
            f"replicated {total} entries; consumer {consumer!r} at {position};"
            f" lag {lag.entries} entries\n"
        )
    return EXIT_OK


def cmd_stats(ctx: Context) -> int:
    """Entries per aggregate, sizes, key ids in use, ticket versions, consumer positions."""
    with ctx.connect() as conn:
        ctx.migrated(conn)
        stats = inspection.log_stats(conn)
    rows: list[dict[str, Any]] = [
        {"kind": "aggregate", "name": a, "entries": n, "bytes": b, "first_id": lo, "last_id": hi}
        for a, n, b, lo, hi in stats.aggregates
    ]
    rows += [{"kind": "key", "name": k, "entries": n} for k, n in stats.keys]
    rows += [{"kind": "ticket", "name": t, "version": v} for t, v in stats.tickets]
    lags = _lags(ctx, [oplog.Checkpoint.parse(c) for _, c, _ in stats.consumers])
    rows += [
        {
            "kind": "consumer",
            "name": n,
            "checkpoint": c,
            "updated": u,
            "lag": lag.entries,
            "lag_seconds": None if lag.age is None else round(lag.age.total_seconds(), 3),
        }
        for (n, c, u), lag in zip(stats.consumers, lags)
    ]
    columns = ["kind", "name", "entries", "bytes", "first_id", "last_id", "version"]
    extra = ["checkpoint", "updated", "lag", "lag_seconds"] if stats.consumers else []
    ctx.emit(rows, columns + extra)
    return EXIT_OK


def _lags(ctx: Context, positions: list[oplog.Checkpoint]) -> list[oplog.Lag]:
    """Each position's lag behind the log the consumers follow: --from's, else this
    database's."""
    if not positions:
        return []
    source_dsn = ctx.args.source or ctx.dsn()
    what = "--from" if ctx.args.source else ctx.dsn_source()
    with ctx.connect_to(source_dsn, what, autocommit=True) as source:
        ctx.tailable(source)
        return [_lag(source, position) for position in positions]


def _lag(source: psycopg.Connection[Any], position: oplog.Checkpoint) -> oplog.Lag:
    return lag_behind(source, position)


def cmd_keygen(ctx: Context) -> int:
    """Writes a new key file, or adds a new primary key to one (--add)."""
    path = ctx.key_file
    if path.exists() and not ctx.args.add and not ctx.args.force:
        _fail(EXIT_KEY, f"{path} exists: --add a new primary key, or --force to replace it")
    key_id = ctx.args.key_id or keyfile.new_key_id()
    try:
        keyfile.add_key(path, key_id, replace=bool(ctx.args.force))
        ids = ctx.wrapper().key_ids
    except (oplog.KeyFileError, oplog.InvalidParameterError) as exc:
        _fail(EXIT_KEY, str(exc))
    if ctx.json:
        ctx.out.write(json.dumps({"key_file": str(path), "primary": key_id, "key_ids": ids}) + "\n")
    else:
        ctx.out.write(f"wrote {path} (mode 0600): primary key {key_id!r}; keys {ids}\n")
    return EXIT_OK


def cmd_server(ctx: Context) -> int:
    """Shows or stops the embedded server."""
    try:
        if ctx.args.action == "stop":
            stopped = embedded.stop(ctx.data_dir)
            state = {"data_dir": str(ctx.data_dir), "stopped": stopped}
            text = (
                f"stopped the server in {ctx.data_dir}" if stopped else "the server was not running"
            )
        else:
            st = embedded.status(ctx.data_dir)
            state = {
                "data_dir": str(st.data_dir),
                "initialized": st.initialized,
                "running": st.running,
                "pid": st.pid,
                "uri": st.uri,
            }
            text = (
                f"running (pid {st.pid}) in {st.data_dir}: {st.uri}"
                if st.running
                else f"not running; data directory {st.data_dir} "
                + ("exists" if st.initialized else "is not initialized")
            )
    except oplog.EmbeddedServerError as exc:
        _fail(EXIT_DB, str(exc))
    ctx.out.write((json.dumps(state) if ctx.json else text) + "\n")
    return EXIT_OK


# --- parser -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one ``oplog: ...`` line, like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"oplog: {message} (see {self.prog} --help)\n")


def _count_arg(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = "number"
    return parse


def _partition_arg(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        partition = check_partition((int(k), int(n))) if sep else None
    except (ValueError, oplog.InvalidParameterError):
        partition = None
    if partition is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 0 <= K < N")
    return partition


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text}")
    return value


def _text_arg(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oplog`` command."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--dsn",
        help='PostgreSQL connection string ("": libpq\'s defaults); default: $OPLOG_DSN, else'
        " the libpq environment (PGHOST, PGPORT, PGDATABASE, PGUSER, PGSERVICE, ...) when set,"
        " else the embedded server",
    )
    common.add_argument("--data-dir", help="embedded server data directory")
    common.add_argument("--key-file", help="key file (default: $OPLOG_KEY_FILE)")
    common.add_argument(
        "--strict-perms",
        action="store_true",
        help="refuse a key file that its group or others can read (default: warn)",
    )
    common.add_argument("--types", help="package.module:catalog naming a TypeCatalog")
    common.add_argument("--json", action="store_true", help="one JSON object per line")
    common.add_argument(
        "--search-path", help="schemas to find tables in, e.g. oplog_demo,public (for the demo's)"
    )

    parser = _Parser(
        prog="oplog",
        description="Inspect, verify and replay an oplog.",
        epilog=(
            'database: --dsn ("": libpq\'s defaults), else $OPLOG_DSN, else the libpq'
            " environment (PGHOST, PGPORT, PGDATABASE, PGUSER, PGSERVICE, ...) when any is set,"
            " else the embedded server. "
            "exit codes: 0 ok, 1 verification problem, 2 usage, 3 database unreachable, "
            "4 key problem, 5 not migrated, 6 no such entry, 7 --types not loadable, "
            "8 file not readable or writable, 9 Boundary tables not adopted, 70 unexpected error"
        ),
    )
    parser.add_argument("--version", action="version", version=f"oplog {oplog.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[Context], int], help_: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, parents=[common], help=help_, description=fn.__doc__)
        p.set_defaults(run=fn)
        return p

    p = add("demo", cmd_demo, "run the demo: write, race, read, replay, verify")
    p.add_argument(
        "--print-schema",
        action="store_true",
        help="print the SQL of the demo's schema and tables (for a replica) and exit",
    )
    p = add("migrate", cmd_migrate, "apply the bundled migrations")
    p.add_argument("--down", action="store_true", help="revert instead")
    p.add_argument("--target", type=int, help="stop at this version")
    p = add("ls", cmd_ls, "list entries")
    p.add_argument("--aggregate", help="only this aggregate")
    p.add_argument("--after", type=_count_arg(0), default=0, help="only ids after this one")
    p.add_argument("--limit", type=_count_arg(0), help="at most this many")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="metadata filter")
    p = add("show", cmd_show, "show one entry")
    p.add_argument("id", type=_count_arg(1))
    p = add("verify", cmd_verify, "decrypt and decode every entry, walk every chain")
    p.add_argument("--replay", action="store_true", help="also replay and compare tables")
    p.add_argument(
        "--save-heads",
        metavar="FILE",
        help="after a clean verify, write every aggregate's head to FILE, signed with the key",
    )
    p.add_argument(
        "--heads",
        metavar="FILE",
        help="check that every chain still reaches the heads saved in FILE",
    )
    p.add_argument(
        "--require-chain",
        action="store_true",
        help="report entries without a tag as problems",
    )
    p.add_argument(
        "--chains-only",
        action="store_true",
        help="check tags, chains, heads and copies without decrypting (entries without a tag"
        " go unchecked)",
    )
    p = add("replay", cmd_replay, "replay entries into suffix tables")
    p.add_argument("--suffix", default="_replay", help="table name suffix (default _replay)")
    p.add_argument("--after", type=_count_arg(0), default=0, help="only entries after this id")
    p = add("stats", cmd_stats, "entries per aggregate, key ids, tickets, consumers and their lag")
    p.add_argument(
        "--from",
        dest="source",
        metavar="DSN",
        help="the log the consumers follow, for their lag (default: this database)",
    )
    p = add("tail", cmd_tail, "print entries in commit order, with checkpoints")
    p.add_argument("--after", metavar="CHECKPOINT", help="continue after this checkpoint")
    p.add_argument("--from-end", action="store_true", help="only entries committed from now on")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.add_argument("--poll-interval", type=_seconds_arg, default=1.0, help="seconds between polls")
    p.add_argument("--channel", type=_text_arg, help="also wake up on NOTIFY on this channel")
    p = add("replicate", cmd_replicate, "apply the log's entries to another database")
    p.add_argument("--from", dest="source", metavar="DSN", help="source (default: --dsn)")
    p.add_argument("--to", dest="target", metavar="DSN", required=True, help="target database")
    p.add_argument("--consumer", default="replica", help="position name in the target")
    p.add_argument(
        "--with-log",
        action="store_true",
        help="also copy the entries (blobs, metadata, chains), so that verify works on the target",
    )
    p.add_argument("--once", action="store_true", help="stop when caught up")
    p.add_argument(
        "--synchronous-commit",
        action="store_true",
        help="each page's commit waits for the disk (default: not; a page a crash undoes is"
        " applied again)",
    )
    p.add_argument(
        "--partition",
        type=_partition_arg,
        metavar="K/N",
        help="apply only the aggregates of partition K of N (run N of these, K = 0..N-1);"
        " the position is kept as CONSUMER/K-of-N",
    )
    p.add_argument("--batch-size", type=_count_arg(1), default=500, help="entries per transaction")
    p.add_argument("--poll-interval", type=_seconds_arg, default=1.0, help="seconds between polls")
    p.add_argument("--channel", type=_text_arg, help="also wake up on NOTIFY on this channel")
    p = add("keygen", cmd_keygen, "create a key file or add a primary key")
    p.add_argument("--key-id", type=_text_arg, help="id of the new key (default: random)")
    p.add_argument("--add", action="store_true", help="add to an existing file (rotation)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p = add("server", cmd_server, "status or stop of the embedded server")
    p.add_argument("action", choices=["status", "stop"])
    return parser


class _StderrHandler(logging.Handler):
    """Shows the library's warnings (a loose key file) as ``oplog: warning: ...`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"oplog: warning: {record.getMessage()}\n")


def _not_utf8(argv: Sequence[str]) -> str | None:
    for arg in argv:
        try:
            arg.encode()
        except UnicodeEncodeError:
            return arg
    return None


# The library's errors that reach main, in the order they are tested: class, exit code, line.
_ERRORS: list[tuple[type[Exception] | tuple[type[Exception], ...], int, str]] = [
    ((oplog.DecryptError, oplog.KeyFileError), EXIT_KEY, "{}"),
    (oplog.SchemaError, EXIT_SCHEMA, "{}"),
    (oplog.InvalidParameterError, EXIT_USAGE, "{}"),
    (oplog.UnknownTypeError, EXIT_TYPES, "{} (the --types catalog)"),
    (oplog.OplogError, EXIT_VERIFY, "{}"),
    (psycopg.OperationalError, EXIT_DB, "database error: {first}"),
    (
        (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn),
        EXIT_SCHEMA,
        "the database lacks what oplog needs: {first}",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``oplog`` command; returns its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    bad = _not_utf8(arguments)
    if bad is not None:
        shown = bad.encode("utf-8", "backslashreplace").decode()
        sys.stderr.write(f"oplog: argument {shown!r} is not valid UTF-8\n")
        return EXIT_USAGE
    args = build_parser().parse_args(arguments)
    ctx = Context(args)
    library = logging.getLogger("oplog")
    handler = _StderrHandler(logging.WARNING)
    library.addHandler(handler)
    # psycopg logs the cleanup of a failed pipeline ("error ignored terminating ..."); the
    # command reports the error itself, in one line.
    quiet = logging.NullHandler()
    logging.getLogger("psycopg").addHandler(quiet)
    try:
        code: int = args.run(ctx)
        return code
    except CommandError as exc:
        sys.stderr.write(f"oplog: {exc}\n")
        return exc.code
    except BrokenPipeError:
        # The reader went away (`oplog tail | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        sys.stderr.write(f"oplog: {exc}\n")
        return EXIT_IO
    except KeyboardInterrupt:
        sys.stderr.write("oplog: interrupted\n")
        return 130
    except Exception as exc:
        for classes, code, text in _ERRORS:
            if isinstance(exc, classes):
                sys.stderr.write("oplog: " + text.format(exc, first=_first_line(exc)) + "\n")
                return code
        sys.stderr.write(f"oplog: unexpected error (a bug; please report it): {exc!r}\n")
        return EXIT_UNEXPECTED
    finally:
        library.removeHandler(handler)
        logging.getLogger("psycopg").removeHandler(quiet)


if __name__ == "__main__":
    sys.exit(main())
