"""Following the log as it commits: checkpoints, tails, and named consumer positions.

Reading "entries with id > the last one seen" skips entries: an id is taken when the entry is
inserted, but the transaction commits later, so an entry with a lower id can become visible
after one with a higher id has been read. The tail works with transactions instead.

Every entry records the top-level transaction that wrote it (``oplog_entry.xact_id``, migration
2). A checkpoint is a PostgreSQL snapshot (``pg_snapshot``): the entries it has delivered are
exactly those whose transaction the snapshot sees as committed. A poll takes a new snapshot and
delivers the entries its transaction sees and the checkpoint's does not, in id order; the new
snapshot becomes the checkpoint. A transaction still running at a poll is in neither, so its
entries come with the first poll after it commits, and never if it rolls back. Nothing is
skipped, nothing is delivered twice, and a long transaction delays only its own entries.

Per-aggregate order: writers of one aggregate serialize on its ticket. Every write path of this
library (and of the Go original) reads or locks the ticket before it inserts the entry, and the
redeem succeeds only from a version that the previous redeemer's commit made current. So of
two entries of one aggregate, the later one took its id after the earlier one committed: a
snapshot that sees it sees the earlier one too, and one poll delivers in id order. Ordering by
transaction id would not do: a transaction's id is assigned at its first write, which can come
before it waited for the ticket.

The tail runs on a connection of its own, outside any transaction (each poll is one short
read-only transaction); a consumer applies what it reads on another connection and saves its
checkpoint there, in the same transaction (:class:`Consumer`, :func:`consume`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from oplog._db import execute
from oplog.entry import Entry, entries_from_rows
from oplog.errors import InvalidParameterError, OplogError, SchemaError
from oplog.wrapping import Wrapper

__all__ = [
    "CONSUMER_TABLE",
    "LAG",
    "SNAPSHOT",
    "TAIL_METADATA",
    "TAIL_PAGE",
    "Checkpoint",
    "Consumer",
    "ConsumerBase",
    "Lag",
    "TailPage",
    "check_consume_connections",
    "check_partition",
    "check_tail_arguments",
    "consume",
    "lag_of",
    "lag_params",
    "needs_migration_2",
    "partition_consumer",
    "partition_of",
    "tail_pages",
]

CONSUMER_TABLE = "oplog_consumer"

_SNAPSHOT = re.compile(r"^(\d{1,20}):(\d{1,20}):((?:\d{1,20}(?:,\d{1,20})*)?)$")


def _check_snapshot(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidParameterError(f"{what} must be a str, not {text!r}")
    match = _SNAPSHOT.match(text)
    if match is None:
        raise InvalidParameterError(f"{what} {text!r} is not a snapshot (xmin:xmax:xip,...)")
    xmin, xmax = int(match.group(1)), int(match.group(2))
    running = [int(x) for x in match.group(3).split(",")] if match.group(3) else []
    if not 1 <= xmin <= xmax or any(not xmin <= x < xmax for x in running):
        raise InvalidParameterError(f"{what} {text!r} is not a snapshot: xmin <= xip < xmax")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """A position in the log's commit order: what a tail has delivered so far.

    ``str(checkpoint)`` is its stable text form (store it anywhere; :meth:`parse` reads it
    back). Usually it is one snapshot; in the middle of delivering a poll it also names the
    poll's snapshot and the last entry id delivered of it.

    Attributes:
        seen: A snapshot (``xmin:xmax:xip,...``): every entry of a transaction it sees as
            committed has been delivered.
        reading: The snapshot of the poll being delivered, or None between polls.
        after_id: Of the entries `reading` adds to `seen`, those with id <= `after_id` have
            been delivered (0 when `reading` is None).
    """

    seen: str
    reading: str | None = None
    after_id: int = 0

    START: ClassVar[Checkpoint]
    """Before the first entry: a tail from here delivers the whole log."""

    def __post_init__(self) -> None:
        _check_snapshot(self.seen, "checkpoint snapshot")
        if self.reading is not None:
            _check_snapshot(self.reading, "checkpoint snapshot")
        if not isinstance(self.after_id, int) or self.after_id < 0:
            raise InvalidParameterError(f"checkpoint after_id must be an int >= 0: {self}")
        if self.reading is None and self.after_id:
            raise InvalidParameterError("a checkpoint between polls has no after_id")

    def __str__(self) -> str:
        if self.reading is None:
            return self.seen
        return f"{self.seen};{self.reading};{self.after_id}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint whose text form is `text`.

        Raises:
            InvalidParameterError: `text` is not a checkpoint.
        """
        if not isinstance(text, str):
            raise InvalidParameterError(f"a checkpoint is a str, not {text!r}")
        parts = text.split(";")
        if len(parts) == 1:
            return cls(parts[0])
        if len(parts) == 3 and parts[2].isdigit():
            return cls(parts[0], parts[1], int(parts[2]))
        raise InvalidParameterError(f"{text!r} is not a checkpoint")

    @classmethod
    def _trusted(cls, seen: str, reading: str | None, after_id: int) -> Checkpoint:
        # For snapshots already checked (a tail makes one checkpoint per entry).
        checkpoint = object.__new__(cls)
        object.__setattr__(checkpoint, "seen", seen)
        object.__setattr__(checkpoint, "reading", reading)
        object.__setattr__(checkpoint, "after_id", after_id)
        return checkpoint

    @classmethod
    def of(cls, value: Checkpoint | str | None) -> Checkpoint:
        """`value` as a checkpoint: a checkpoint, its text form, or None for :attr:`START`."""
        if value is None:
            return cls.START
        if isinstance(value, Checkpoint):
            return value
        return cls.parse(value)


# No transaction is visible in "1:1:" (everything is at or after xmax), so from here every
# entry is new, including those written before migration 2 (transaction id 1).
Checkpoint.START = Checkpoint("1:1:")

# The current snapshot, as text. In autocommit (or a fresh transaction at READ COMMITTED) it is
# the snapshot of this statement.
SNAPSHOT = "select pg_current_snapshot()::text"

# One page of a poll: entries of transactions `reading` sees and `seen` does not, in id order.
# The first two conditions bound the index range; `reading` is passed explicitly, so a page can
# be read in any later transaction and still selects the same entries. Never prepared: the best
# plan depends on the snapshots (catching up: walk the primary key; following: the few entries
# of recent transactions, sorted), and a generic plan sorts the whole range for every page.
TAIL_PAGE = """
select id, create_time, version, aggregate_name, data, key_id from oplog_entry
where xact_id >= pg_snapshot_xmin(%(seen)s::pg_snapshot)
  and xact_id < pg_snapshot_xmax(%(reading)s::pg_snapshot)
  and not pg_visible_in_snapshot(xact_id, %(seen)s::pg_snapshot)
  and pg_visible_in_snapshot(xact_id, %(reading)s::pg_snapshot)
  and id > %(after)s
  and (%(parts)s::int = 1
       or mod(('x' || left(md5(aggregate_name), 8))::bit(32)::bigint, %(parts)s::int)
          = %(part)s::int)
order by id
limit %(limit)s
"""

TAIL_METADATA = """
select entry_id, key, value from oplog_metadata where entry_id = any(%s) order by id
"""


def partition_of(aggregate_name: str, partitions: int) -> int:
    """The partition (0 to `partitions` - 1) an aggregate's entries belong to: the first 32
    bits of the MD5 of its name (UTF-8), as an unsigned big-endian number, modulo
    `partitions`. Stable across processes, machines and PostgreSQL versions; the tail computes
    the same on the server."""
    digest = hashlib.md5(aggregate_name.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % partitions


def check_partition(partition: object) -> tuple[int, int] | None:
    """`partition` as ``(k, n)`` (or None), or InvalidParameterError."""
    if partition is None:
        return None
    if (
        not isinstance(partition, tuple)
        or len(partition) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in partition)
        or not 0 <= partition[0] < partition[1]
    ):
        raise InvalidParameterError(f"a partition is (k, n) with 0 <= k < n, not {partition!r}")
    return partition[0], partition[1]


def partition_consumer(name: str, partition: tuple[int, int] | None) -> str:
    """The consumer name a partition's worker keeps its position under: ``name/k-of-n``."""
    return name if partition is None else f"{name}/{partition[0]}-of-{partition[1]}"


TailPage = list[tuple[Entry, Checkpoint]]
"""Entries of one page of a poll, each with the checkpoint just after it."""


class _Cursor:
    """The I/O-free state of a tail: which snapshot to read next and from where."""

    def __init__(
        self, after: Checkpoint, batch_size: int, partition: tuple[int, int] | None = None
    ) -> None:
        self.position = after
        self.batch_size = batch_size
        self.part, self.parts = partition or (0, 1)
        self.poll_found = 0  # entries delivered by the current poll so far
        # Whether this tail took the current poll's snapshot: a poll resumed from a checkpoint
        # was taken before the tail started, so finding nothing in it is not being caught up.
        self.fresh = False

    @property
    def needs_snapshot(self) -> bool:
        return self.position.reading is None

    def start(self, now: str) -> None:
        """Checks the starting checkpoint against `now`, the server's current snapshot, and
        begins the first poll with it if the checkpoint is between polls.

        Raises:
            OplogError: The checkpoint is ahead of the server: a position kept while the
                database was restored or replaced. From it every new entry would look
                delivered.
        """
        current = _xmax(now)
        for snapshot in (self.position.seen, self.position.reading):
            if snapshot is not None and _xmax(snapshot) > current:
                raise OplogError(
                    f"checkpoint {self.position} is ahead of this server, whose current"
                    f" snapshot is {now}: was the database restored or replaced? A tail from"
                    " it would deliver nothing; start from a checkpoint of this server"
                )
        if self.needs_snapshot:
            self.begin(now)

    def begin(self, snapshot: str) -> None:
        self.position = Checkpoint(self.position.seen, snapshot, 0)
        self.poll_found = 0
        self.fresh = True

    def params(self) -> dict[str, Any]:
        p = self.position
        return {
            "seen": p.seen, "reading": p.reading, "after": p.after_id, "limit": self.batch_size,
            "part": self.part, "parts": self.parts,
        }  # fmt: skip

    def page(self, rows: list[Any], metadata: list[Any], wrapper: Wrapper) -> TailPage:
        """The page's entries with their checkpoints; advances the position past them."""
        p = self.position
        assert p.reading is not None
        entries = entries_from_rows(rows, metadata, wrapper)
        finished = len(rows) < self.batch_size
        trusted = Checkpoint._trusted
        out = [(e, trusted(p.seen, p.reading, int(e.id or 0))) for e in entries]
        if finished:
            # The poll is fully delivered: its snapshot becomes the whole position.
            self.position = Checkpoint(p.reading)
            if out:
                out[-1] = (out[-1][0], self.position)
        elif out:
            self.position = out[-1][1]
        self.poll_found += len(out)
        return out

    @property
    def caught_up(self) -> bool:
        """The last poll, taken by this tail, is fully delivered and found nothing new: every
        entry committed before the tail started has been delivered."""
        return self.needs_snapshot and self.fresh and self.poll_found == 0


def _xmax(snapshot: str) -> int:
    return int(snapshot.split(":", 2)[1])


def check_tail_arguments(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    batch_size: int,
    poll_interval: float,
    channel: str | None,
) -> None:
    """Raises InvalidParameterError unless the arguments of a tail are usable."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be an int >= 1, not {batch_size!r}")
    if not poll_interval > 0:
        raise InvalidParameterError(f"poll_interval must be > 0, not {poll_interval!r}")
    if channel is not None and (not isinstance(channel, str) or not channel):
        raise InvalidParameterError(f"channel must be a non-empty str, not {channel!r}")
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise InvalidParameterError(
            "a tail needs a connection of its own, outside a transaction: inside one it would"
            " see a frozen or growing snapshot and hold it open"
        )


@contextlib.contextmanager
def needs_migration_2() -> Iterator[None]:
    """Reports a database without migration 2 (the tail's columns and tables) plainly."""
    try:
        yield
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
        raise SchemaError(
            "the database lacks oplog migration 2 (entry transaction ids, consumer positions):"
            f" apply it with oplog.migrate ({exc.diag.message_primary})"
        ) from exc


def check_consume_connections(
    source: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    target: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> None:
    """Raises InvalidParameterError unless a consumer can tail `source` and commit on
    `target`."""
    if source is target:
        raise InvalidParameterError("consume needs two connections: one tails, one applies")
    if target.info.transaction_status != TransactionStatus.IDLE:
        raise InvalidParameterError(
            "consume commits a transaction per page on the target connection: it must not be"
            " inside a transaction already"
        )


def _listen(channel: str) -> sql.Composed:
    return sql.SQL("listen {}").format(sql.Identifier(channel))


def tail_pages(
    conn: psycopg.Connection[Any],
    wrapper: Wrapper,
    after: Checkpoint,
    *,
    batch_size: int,
    poll_interval: float,
    channel: str | None,
    stop: threading.Event | None,
    follow: bool,
    partition: tuple[int, int] | None = None,
) -> Generator[TailPage, None, None]:
    """The pages of a tail (see :meth:`oplog.Oplog.tail`); never yields an empty page. With
    `partition` ``(k, n)``, only entries of aggregates in partition k of n (see
    :func:`partition_of`)."""
    check_tail_arguments(conn, batch_size, poll_interval, channel)
    cursor = _Cursor(after, batch_size, check_partition(partition))

    def end_read() -> None:
        if not conn.autocommit:
            conn.commit()

    if channel is not None:
        execute(conn, _listen(channel))
        end_read()
    row = execute(conn, SNAPSHOT).fetchone()
    assert row is not None
    cursor.start(row[0])
    while stop is None or not stop.is_set():
        if cursor.needs_snapshot:
            row = execute(conn, SNAPSHOT).fetchone()
            assert row is not None
            cursor.begin(row[0])
        with needs_migration_2():
            rows = execute(conn, TAIL_PAGE, cursor.params(), prepare=False).fetchall()
        ids = [row[0] for row in rows]
        metadata = execute(conn, TAIL_METADATA, (ids,)).fetchall() if ids else []
        end_read()
        page = cursor.page(rows, metadata, wrapper)
        if page:
            yield page
        if cursor.caught_up:
            if not follow:
                return
            _wait(conn, channel, poll_interval, stop)


def _wait(
    conn: psycopg.Connection[Any],
    channel: str | None,
    seconds: float,
    stop: threading.Event | None,
) -> None:
    """Waits up to `seconds` for a notification on `channel` (if any), or for `stop`."""
    deadline = time.monotonic() + seconds
    # With a stop event, wake up often enough to notice it while waiting on the socket.
    step = 0.2 if stop is not None else seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop is not None and stop.is_set():
            return
        if channel is None:
            if stop is not None:
                stop.wait(left)
            else:
                time.sleep(left)
            return
        if any(True for _ in conn.notifies(timeout=min(step, left), stop_after=1)):
            return


@dataclass(frozen=True)
class Lag:
    """How far a consumer is behind the log it follows.

    Attributes:
        entries: Committed entries after the consumer's position (not yet applied).
        oldest: When the oldest of them was written (``create_time``), or None.
        age: How long ago that was, by the source server's clock, or None.
    """

    entries: int
    oldest: dt.datetime | None
    age: dt.timedelta | None


# Committed entries a checkpoint has not delivered: visible in the current snapshot, not in
# `seen`, and (inside a poll) not among the poll's entries up to `after`.
LAG = """
select count(*), min(create_time), current_timestamp - min(create_time) from oplog_entry
where xact_id >= pg_snapshot_xmin(%(seen)s::pg_snapshot)
  and not pg_visible_in_snapshot(xact_id, %(seen)s::pg_snapshot)
  and pg_visible_in_snapshot(xact_id, pg_current_snapshot())
  and not (%(reading)s::pg_snapshot is not null
           and pg_visible_in_snapshot(xact_id, %(reading)s::pg_snapshot) and id <= %(after)s)
"""


def lag_params(checkpoint: Checkpoint) -> dict[str, Any]:
    """The parameters of :data:`LAG` for `checkpoint`."""
    return {"seen": checkpoint.seen, "reading": checkpoint.reading, "after": checkpoint.after_id}


def lag_of(row: Any) -> Lag:
    """The :class:`Lag` of a :data:`LAG` row."""
    return Lag(int(row[0]), row[1], row[2])


class ConsumerBase:
    """The name of a consumer and the statements on its ``oplog_consumer`` row; the I/O is
    in :class:`Consumer` and ``oplog.aio.AsyncConsumer``.

    Raises:
        InvalidParameterError: `name` is not a non-empty str.
    """

    _GET = sql.SQL("select checkpoint from {} where name = %s").format(
        sql.Identifier(CONSUMER_TABLE)
    )
    _LOCK = _GET + sql.SQL(" for update")
    _CREATE = sql.SQL(
        "insert into {} (name, checkpoint) values (%s, %s) on conflict (name) do nothing"
    ).format(sql.Identifier(CONSUMER_TABLE))
    _SAVE = sql.SQL(
        "insert into {} (name, checkpoint) values (%s, %s) on conflict (name)"
        " do update set checkpoint = excluded.checkpoint, update_time = current_timestamp"
    ).format(sql.Identifier(CONSUMER_TABLE))

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(f"a consumer name is a non-empty str, not {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def _read_statement(self, lock: bool) -> tuple[sql.Composed, tuple[str]]:
        return (self._LOCK if lock else self._GET), (self.name,)

    def _create_statement(self) -> tuple[sql.Composed, tuple[str, str]]:
        return self._CREATE, (self.name, str(Checkpoint.START))

    def _save_statement(self, checkpoint: Checkpoint | str) -> tuple[sql.Composed, tuple[str, str]]:
        return self._SAVE, (self.name, str(Checkpoint.of(checkpoint)))


class Consumer(ConsumerBase):
    """A named reader of the log whose checkpoint is stored in the ``oplog_consumer`` table,
    in the consumer's own transactions.

    Apply what the tail delivers and :meth:`save` the checkpoint in one transaction, and each
    entry is processed exactly once across crashes and restarts (:meth:`oplog.Oplog.consume`
    does this loop).

    Raises:
        InvalidParameterError: `name` is not a non-empty str.
    """

    def position(self, conn: psycopg.Connection[Any], *, lock: bool = False) -> Checkpoint:
        """The consumer's saved checkpoint (:attr:`Checkpoint.START` for a new consumer).

        With `lock`, the consumer's row is created if missing and locked until the caller's
        transaction ends, so two processes running the same consumer take turns instead of
        both applying the same entries.
        """
        with needs_migration_2():
            row = execute(conn, *self._read_statement(lock)).fetchone()
            if row is None and lock:
                # A new consumer: make the row that the lock needs (once), then take it.
                execute(conn, *self._create_statement())
                row = execute(conn, *self._read_statement(lock)).fetchone()
        return Checkpoint.START if row is None else Checkpoint.parse(row[0])

    def save(self, conn: psycopg.Connection[Any], checkpoint: Checkpoint | str) -> None:
        """Stores `checkpoint` as the consumer's position, in the caller's transaction."""
        with needs_migration_2():
            execute(conn, *self._save_statement(checkpoint))

    def lag(
        self, source: psycopg.Connection[Any], target: psycopg.Connection[Any] | None = None
    ) -> Lag:
        """How many committed entries of the log on `source` the consumer has not applied,
        and how old the oldest of them is. The consumer's position is read from `target`
        (where it applies entries; default `source`).

        One count over the entries after the position: cheap while the consumer keeps up,
        a scan of the backlog when it does not.
        """
        position = self.position(source if target is None else target)
        with needs_migration_2():
            row = execute(source, LAG, lag_params(position)).fetchone()
        return lag_of(row)


def consume(
    source: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    wrapper: Wrapper,
    consumer: Consumer,
    apply: Callable[[psycopg.Connection[Any], Entry], object] | None,
    *,
    batch_size: int = 500,
    poll_interval: float = 1.0,
    channel: str | None = None,
    stop: threading.Event | None = None,
    follow: bool = True,
    on_commit: Callable[[int, Checkpoint], object] | None = None,
    apply_page: Callable[[psycopg.Connection[Any], list[Entry]], object] | None = None,
    partition: tuple[int, int] | None = None,
) -> int:
    """See :meth:`oplog.Oplog.consume`; `apply_page` (instead of `apply`) takes a page's
    entries at once."""
    check_consume_connections(source, target)
    with target.transaction():
        position = consumer.position(target)
    applied = 0
    while True:
        restart = False
        pages = tail_pages(
            source, wrapper, position, batch_size=batch_size, poll_interval=poll_interval,
            channel=channel, stop=stop, follow=follow, partition=partition,
        )  # fmt: skip
        try:
            for page in pages:
                with target.transaction():
                    stored = consumer.position(target, lock=True)
                    if stored != position:
                        # Another process running this consumer got further: continue from
                        # where it is (this page was its work).
                        position, restart = stored, True
                        break
                    if apply_page is not None:
                        apply_page(target, [entry for entry, _ in page])
                    else:
                        assert apply is not None
                        for entry, _ in page:
                            apply(target, entry)
                    position = page[-1][1]
                    consumer.save(target, position)
                applied += len(page)
                if on_commit is not None:
                    on_commit(len(page), position)
        finally:
            pages.close()
        if not restart:
            return applied
