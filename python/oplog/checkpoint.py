"""Checkpoints: where a tail of the log is, and the I/O-free state of a tail that moves it.

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
checkpoint there, in the same transaction (:class:`oplog.Consumer`, :meth:`oplog.Oplog.consume`).
The tail's loop is :meth:`oplog.Oplog.tail`; its state between queries is :class:`TailCursor`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.abc import Loader
from psycopg.pq import TransactionStatus

from oplog.catalog import TypeCatalog
from oplog.entry import Entry, entries_from_rows, rows_plaintexts, stored_entries
from oplog.errors import InvalidParameterError, OplogError
from oplog.operation import Operation
from oplog.replay_plan import decode_entries, decode_page
from oplog.wrapping import Wrapper

__all__ = [
    "Checkpoint",
    "Lag",
    "TailCursor",
    "TailPage",
    "check_consume_connections",
    "check_partition",
    "check_tail_arguments",
    "lag_of",
    "lag_params",
    "listen_statement",
    "partition_consumer",
    "partition_of",
]

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


class TailPage:
    """Entries of one page of a poll, each with the checkpoint just after it (made as the
    page is iterated: a consumer needs only the last, `end`).

    A page whose operations are only applied (a replicator's) holds the entries' ids and
    decrypted data instead (:meth:`TailCursor.page_to_apply`): building hundreds of entries
    that nobody reads cost a tenth of a replicator's time. Its :attr:`entries` are built when
    asked for."""

    __slots__ = ("_entries", "_reading", "_rows", "_seen", "_wrapper", "datas", "end")

    def __init__(self, entries: list[Entry], seen: str, reading: str, end: Checkpoint) -> None:
        self._entries: list[Entry] | None = entries
        self.end = end
        self._seen = seen
        self._reading = reading
        self._rows: list[Any] = []
        self._wrapper: Wrapper | None = None
        self.datas: list[bytes] | None = None
        """The entries' decrypted data, in order, when the page was read to be applied."""

    @classmethod
    def _to_apply(
        cls, rows: list[Any], datas: list[bytes], wrapper: Wrapper, seen: str, reading: str,
        end: Checkpoint,
    ) -> TailPage:  # fmt: skip
        page = cls.__new__(cls)
        page._entries, page.end, page._seen, page._reading = None, end, seen, reading
        page._rows, page._wrapper, page.datas = rows, wrapper, datas
        return page

    @property
    def entries(self) -> list[Entry]:
        """The page's entries, decrypted (of a page read to be applied: without the times and
        metadata it did not read)."""
        if self._entries is None:
            assert self.datas is not None
            self._entries = stored_entries(self._rows, self.datas, {}, self._wrapper)
        return self._entries

    def __len__(self) -> int:
        return len(self._rows) if self._entries is None else len(self._entries)

    def operations(self, catalog: TypeCatalog) -> list[Operation]:
        """The operations of the page's entries, in order, decoded in one call.

        Raises:
            DecodeError, UnknownTypeError: An entry does not decode (the message names it).
        """
        if self.datas is None:
            return decode_entries(self.entries, catalog)
        return decode_page(self._rows, self.datas, catalog)

    def __iter__(self) -> Iterator[tuple[Entry, Checkpoint]]:
        """``(entry, checkpoint after it)`` for each entry, in order."""
        trusted = Checkpoint._trusted
        entries = self.entries
        last = len(entries) - 1
        for i, entry in enumerate(entries):
            if i == last:
                yield entry, self.end
            else:
                yield entry, trusted(self._seen, self._reading, int(entry.id or 0))


class TailCursor:
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

    def page(
        self, rows: list[Any], metadata: list[Any], wrapper: Wrapper, times: Loader | None = None
    ) -> TailPage:
        """The page's entries with their checkpoints (each ``create_time`` loaded by `times`
        when asked, see :func:`oplog.entry.time_loader`); advances the position past them."""
        entries = entries_from_rows(rows, metadata, wrapper, times)
        p = self._advance(rows)
        return TailPage(entries, p.seen, p.reading or "", self.position)

    def page_to_apply(self, rows: list[Any], wrapper: Wrapper) -> TailPage:
        """The page as :meth:`page` gives it, for its operations only: its entries' ids and
        decrypted data (rows read without times or metadata), its entries built if asked for.

        Raises:
            DecryptError: An entry does not decrypt with `wrapper` (the message names it).
        """
        datas = rows_plaintexts(rows, wrapper)
        p = self._advance(rows)
        return TailPage._to_apply(rows, datas, wrapper, p.seen, p.reading or "", self.position)

    def _advance(self, rows: list[Any]) -> Checkpoint:
        """Moves the position past a page's `rows`; the position before."""
        p = self.position
        assert p.reading is not None
        if len(rows) < self.batch_size:
            # The poll is fully delivered: its snapshot becomes the whole position.
            self.position = Checkpoint(p.reading)
        elif rows:
            self.position = Checkpoint._trusted(p.seen, p.reading, int(rows[-1][0]))
        self.poll_found += len(rows)
        return p

    def idle(self) -> TailPage:
        """An empty page at the current position (see ``_pages(idle_pages=True)``)."""
        p = self.position
        return TailPage([], p.seen, p.reading or p.seen, p)

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


def listen_statement(channel: str) -> sql.Composed:
    return sql.SQL("listen {}").format(sql.Identifier(channel))


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


def lag_params(checkpoint: Checkpoint) -> dict[str, Any]:
    """The parameters of the lag query (``_sql.LAG``) for `checkpoint`."""
    return {"seen": checkpoint.seen, "reading": checkpoint.reading, "after": checkpoint.after_id}


def lag_of(row: Any) -> Lag:
    """The :class:`Lag` of a lag query's row."""
    return Lag(int(row[0]), row[1], row[2])
