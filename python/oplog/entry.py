"""Entries: an aggregate's ordered operations, encrypted, as one row of ``oplog_entry``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg import pq
from psycopg.abc import Loader

from oplog import _sql
from oplog._db import execute
from oplog._dberrors import ticket_conflicts
from oplog.catalog import TypeCatalog
from oplog.errors import DecryptError, InvalidParameterError, TicketConflictError
from oplog.operation import Operation
from oplog.queue import Queue, Version, decode
from oplog.replay import Replayer
from oplog.ticket import (
    Ticket,
    Ticketer,
    check_aggregate_name,
    check_text,
)
from oplog.wrapping import Wrapper, page_plaintexts
from oplog.writer import Writer

__all__ = [
    "PAGE_SIZE",
    "Entry",
    "Metadata",
    "ReadPages",
    "entries_from_rows",
    "group_metadata",
    "metadata_rows",
    "normalize_metadata",
    "rows_plaintexts",
    "stored_entries",
    "time_loader",
]

Metadata = dict[str, list[str]]
"""Key -> values. A key with an empty list is stored as a key without a value."""


def normalize_metadata(metadata: Mapping[str, Sequence[str] | str] | None) -> Metadata:
    """Validates metadata and returns it as ``{key: [values]}`` (a str value is one value).

    Raises:
        InvalidParameterError: `metadata` is not a mapping; a key is not a non-empty str; a
            value is neither a str nor a sequence of str, or is empty (a key without a value
            is ``key: []``; stored, an empty value reads back as none); a key or value is
            not storable text (see :func:`oplog.ticket.check_text`: valid UTF-8, no NUL, at
            most 2048 bytes).
    """
    out: Metadata = {}
    if metadata is None:
        return out
    if not isinstance(metadata, Mapping):
        raise InvalidParameterError(f"metadata must be a mapping, not {type(metadata).__name__}")
    for key, values in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidParameterError(f"metadata keys are non-empty str, not {key!r}")
        check_text(key, "metadata key")
        if isinstance(values, str):
            items = [values]
        else:
            try:
                items = list(values)
            except TypeError:
                raise InvalidParameterError(
                    f"metadata {key!r} must be a str or a sequence of str, not"
                    f" {type(values).__name__}"
                ) from None
        for value in items:
            if not isinstance(value, str):
                raise InvalidParameterError(f"metadata {key!r} has a non-str value {value!r}")
            if not value:
                # Stored, an empty value is what the Go original writes for a key without one.
                raise InvalidParameterError(
                    f"metadata {key!r} has an empty value: a key without a value is {key!r}: []"
                )
            check_text(value, f"metadata {key!r} value")
        out[key] = items
    return out


def metadata_rows(metadata: Metadata) -> tuple[list[str], list[str | None]]:
    """Parallel key and value lists; a key without values is one row with a NULL value."""
    keys: list[str] = []
    values: list[str | None] = []
    for key, items in metadata.items():
        row_values: list[str | None] = list(items) if items else [None]
        for value in row_values:
            keys.append(key)
            values.append(value)
    return keys, values


def group_metadata(rows: Iterable[Sequence[Any]]) -> dict[int, Metadata]:
    """The inverse of :func:`metadata_rows` over stored ``(entry_id, key, value)`` rows:
    metadata per entry id. A NULL value (as oplog writes it) and an empty one (as the Go
    original writes it, and reads a NULL back) both mean a key without values."""
    out: dict[int, Metadata] = {}
    for entry_id, key, value in rows:
        values = out.setdefault(entry_id, {}).setdefault(key, [])
        if value:  # NULL (oplog) or '' (the Go original): a key without a value
            values.append(value)
    return out


class Entry:
    """One oplog entry: operations on one aggregate, with metadata, stored encrypted.

    Args:
        aggregate_name: The aggregate the entry belongs to, e.g. ``"users"``.
        metadata: Key -> values (a key may have no value).
        wrapper: Encrypts (and decrypts) the data.
        ticketer: Names the ticket of the aggregate (needed to write).
        format_version: The queue format written: ``"v2"`` (default) or ``"v1"``; stored in
            the entry's ``version`` column.

    Attributes:
        id: The entry's id once written or read, else None.
        create_time: When the row was inserted, once written or read.
        key_id: The id of the key the data is (or will be) encrypted with.
        data: The plaintext queue, or the encrypted blob after :meth:`encrypt_data`.
        blob: The blob as read from the database (kept after `data` is decrypted; what a
            replica's copy of the log stores), or None for an entry not read.

    Raises:
        InvalidParameterError: The aggregate name, metadata or format version is invalid.
    """

    __slots__ = (
        "_create_text",
        "_create_time",
        "_encrypted",
        "_time_loader",
        "aggregate_name",
        "blob",
        "data",
        "format_version",
        "id",
        "key_id",
        "metadata",
        "ticketer",
        "wrapper",
    )

    def __init__(
        self,
        aggregate_name: str,
        *,
        metadata: Mapping[str, Sequence[str] | str] | None = None,
        wrapper: Wrapper | None = None,
        ticketer: Ticketer | None = None,
        format_version: Version = "v2",
    ) -> None:
        check_aggregate_name(aggregate_name)
        if format_version not in ("v1", "v2"):
            raise InvalidParameterError(
                f"unknown entry format version {format_version!r}: use 'v1' or 'v2'"
            )
        self.aggregate_name = aggregate_name
        self.metadata = normalize_metadata(metadata)
        self.wrapper = wrapper
        self.ticketer = ticketer
        self.format_version: str = format_version
        self.id: int | None = None
        self._create_time: dt.datetime | None = None
        self._create_text = ""
        self._time_loader: Loader | None = None
        self.key_id = wrapper.key_id if wrapper is not None else ""
        self.data = b""
        self._encrypted = False
        # The blob as read from the database (`data` may since be decrypted); None until then.
        self.blob: bytes | None = None

    @classmethod
    def from_row(
        cls,
        *,
        id: int,
        create_time: dt.datetime,
        format_version: str,
        aggregate_name: str,
        data: bytes,
        key_id: str,
        metadata: Metadata,
        wrapper: Wrapper | None = None,
    ) -> Entry:
        """An entry as stored (data still encrypted)."""
        return cls._stored(
            id, create_time, format_version, aggregate_name, data, key_id, metadata, wrapper, None
        )

    @classmethod
    def _stored(
        cls,
        id_: int,
        create_time: Any,
        format_version: str,
        aggregate_name: str,
        blob: bytes,
        key_id: str,
        metadata: Metadata,
        wrapper: Wrapper | None,
        plaintext: bytes | None,
        times: Loader | None = None,
    ) -> Entry:
        """:meth:`from_row`, positional (a page makes hundreds), and decrypted already when
        given the blob's `plaintext`. `create_time` is a datetime; with `times`, its text form,
        loaded by `times` when first asked for (see :func:`time_loader`)."""
        entry = cls.__new__(cls)
        entry.aggregate_name = aggregate_name
        entry.metadata = metadata
        entry.wrapper = wrapper
        entry.ticketer = None
        entry.format_version = format_version
        entry.id = id_
        if times is None:
            entry._create_time, entry._time_loader = create_time, None
        else:
            entry._create_text, entry._time_loader = create_time, times
        entry.key_id = key_id
        entry.blob = blob
        entry.data = blob if plaintext is None else plaintext
        entry._encrypted = plaintext is None
        return entry

    @property
    def encrypted(self) -> bool:
        """Whether `data` currently holds the encrypted blob."""
        return self._encrypted

    def _wrapper(self) -> Wrapper:
        if self.wrapper is None:
            raise InvalidParameterError("this entry has no wrapper: Entry(..., wrapper=)")
        return self.wrapper

    def encrypt_data(self) -> None:
        """Encrypts `data` in place with the wrapper.

        Raises:
            InvalidParameterError: No wrapper, or the data is already encrypted.
        """
        wrapper = self._wrapper()
        if self._encrypted:
            raise InvalidParameterError("the entry's data is already encrypted")
        self.data = wrapper.encrypt(self.data)
        self.key_id = wrapper.key_id
        self._encrypted = True

    def decrypt_data(self) -> None:
        """Decrypts `data` in place with the wrapper.

        Raises:
            InvalidParameterError: No wrapper, or the data is not encrypted.
            DecryptError: The blob does not decrypt (wrong key, tampered); data is unchanged.
        """
        wrapper = self._wrapper()
        if not self._encrypted:
            raise InvalidParameterError("the entry's data is not encrypted")
        self.data = wrapper.decrypt(self.data)
        self._encrypted = False

    def unmarshal_data(self, catalog: TypeCatalog) -> list[Operation]:
        """The operations of the (decrypted) data, in order.

        Raises:
            InvalidParameterError: The data is still encrypted.
            DecodeError, UnknownTypeError: The queue does not decode with `catalog`.
        """
        if self._encrypted:
            raise InvalidParameterError("decrypt the entry's data before unmarshalling it")
        return decode(self.data, catalog)

    def write_entry_with(self, writer: Writer, ticket: Ticket, *operations: Operation) -> None:
        """Encodes `operations` as the entry's data (replacing any), encrypts and writes it.

        Unlike the Go original, data already in the entry is replaced, not appended to, so
        calling this again after a conflict writes the operations once.

        Raises:
            InvalidParameterError: No operations, or an invalid one; see also :meth:`write`.
        """
        self.set_operations(operations)
        self.write(writer, ticket)

    def set_operations(self, operations: Sequence[Operation]) -> None:
        """Encodes `operations` as the entry's (plaintext) data, replacing what was there.

        Raises:
            InvalidParameterError: No operations, or an invalid one.
        """
        if not operations:
            raise InvalidParameterError("an entry needs at least one operation")
        queue = Queue(version=self.format_version)  # type: ignore[arg-type]
        queue.extend(operations)
        self.data = bytes(queue)
        self._encrypted = False

    def write(self, writer: Writer, ticket: Ticket) -> None:
        """Encrypts the data (if needed), redeems the ticket, and inserts the entry and its
        metadata, all in one statement in the writer's transaction.

        Raises:
            InvalidParameterError: Empty data, no wrapper or ticketer, or a ticket that is not
                this aggregate's.
            TicketConflictError: Another writer redeemed the ticket first, or the statement
                hit a serialization failure, deadlock or unique violation. Roll back.
        """
        if self.ticketer is None:
            raise InvalidParameterError("this entry has no ticketer: Entry(..., ticketer=)")
        expected = self.ticketer.ticket_name(self.aggregate_name)
        if not isinstance(ticket, Ticket) or ticket.name != expected:
            raise InvalidParameterError(f"the entry needs the ticket {expected!r}, not {ticket!r}")
        if not self.data:
            raise InvalidParameterError("the entry has no data")
        if not self._encrypted:
            self.encrypt_data()
        keys, values = metadata_rows(self.metadata)
        with ticket_conflicts(f"write entry for {self.aggregate_name!r}"):
            row = execute(
                writer.conn,
                _sql.WRITE_ENTRY,
                {
                    "ticket": ticket.name,
                    "ticket_version": ticket.version,
                    "version": self.format_version,
                    "aggregate_name": self.aggregate_name,
                    "data": self.data,
                    "key_id": self.key_id,
                    "keys": keys,
                    "values": values,
                },
            ).fetchone()
        if row is None:
            raise TicketConflictError(
                f"ticket {ticket.name!r} version {ticket.version} was already redeemed"
            )
        self.id = int(row[0])
        self.create_time = row[1]

    def replay(self, writer: Writer, catalog: TypeCatalog, table_suffix: str = "_replay") -> None:
        """Applies the entry's operations to ``<table><table_suffix>`` tables.

        Decrypts the data first if needed (leaving it decrypted).
        """
        if self._encrypted:
            self.decrypt_data()
        Replayer(writer, table_suffix).apply(self.unmarshal_data(catalog))

    @property
    def create_time(self) -> dt.datetime | None:
        """When the row was inserted, once written or read."""
        loader = self._time_loader
        if loader is not None:
            # Read as text with its page: loaded now, once (a race loads the same value
            # twice; the text stays for it).
            self._create_time = loader.load(self._create_text.encode())
            self._time_loader = None
        return self._create_time

    @create_time.setter
    def create_time(self, value: dt.datetime | None) -> None:
        self._create_time, self._time_loader = value, None

    def __repr__(self) -> str:
        state = "encrypted" if self._encrypted else "plaintext"
        return (
            f"Entry(id={self.id!r}, aggregate_name={self.aggregate_name!r}, "
            f"format_version={self.format_version!r}, key_id={self.key_id!r},"
            f" {state} {len(self.data)} bytes)"
        )


def time_loader(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> Loader:
    """What `conn` loads a ``timestamptz`` in text form with (its time zone and DateStyle, or a
    loader of the caller's). A page of entries is read with ``create_time::text`` and each
    entry loads its time with this when it is first asked for: loading a time costs more than
    the rest of the row, and a consumer, a replay or a replica never asks."""
    oid = conn.adapters.types["timestamptz"].oid
    loader = conn.adapters.get_loader(oid, pq.Format.TEXT)
    if loader is None:
        raise AssertionError("psycopg has no text loader for timestamptz")
    return loader(oid, conn)


def entries_from_rows(
    rows: Iterable[Sequence[Any]],
    metadata: Iterable[Sequence[Any]],
    wrapper: Wrapper,
    times: Loader | None = None,
) -> list[Entry]:
    """Entries from stored ``(id, create_time, version, aggregate_name, data, key_id)`` rows
    and their ``(entry_id, key, value)`` metadata rows, decrypted with `wrapper`. With
    `times` (:func:`time_loader`), each ``create_time`` is its text form, loaded when asked.

    Raises:
        DecryptError: An entry does not decrypt with `wrapper` (the message names it).
    """
    rows = rows if isinstance(rows, list) else list(rows)
    datas = rows_plaintexts(rows, wrapper)
    return stored_entries(rows, datas, group_metadata(metadata), wrapper, times)


def stored_entries(
    rows: list[Sequence[Any]],
    datas: list[bytes],
    by_entry: Mapping[int, Metadata],
    wrapper: Wrapper | None,
    times: Loader | None = None,
) -> list[Entry]:
    """Entries from stored rows (as :func:`entries_from_rows` takes them), their decrypted
    `datas` and their metadata by entry id."""
    stored = Entry._stored
    return [
        stored(id_, time, version, name, blob if type(blob) is bytes else bytes(blob), key_id,
               by_entry.get(id_, {}), wrapper, data, times)
        for (id_, time, version, name, blob, key_id), data in zip(rows, datas)
    ]  # fmt: skip


def rows_plaintexts(rows: list[Sequence[Any]], wrapper: Wrapper) -> list[bytes]:
    """The decrypted data of stored rows, as :func:`entries_from_rows` decrypts it, without
    building entries (for a page whose operations are only applied).

    Raises:
        DecryptError: An entry does not decrypt with `wrapper` (the message names it).
    """
    blobs = [bytes(row[4]) for row in rows]
    out = page_plaintexts(wrapper, blobs)
    if None not in out:  # (each blob opened by the Rust core, as usual)
        return cast("list[bytes]", out)
    for i, plaintext in enumerate(out):
        if plaintext is None:
            try:
                out[i] = wrapper.decrypt(blobs[i])
            except DecryptError as exc:
                raise DecryptError(f"entry {rows[i][0]} does not decrypt: {exc}") from exc
    return cast("list[bytes]", out)


PAGE_SIZE = 500
"""Entries per page of a read (and of a replay)."""


class ReadPages:
    """The paging state of a read: which page to ask for next."""

    def __init__(self, aggregate_name: str | None, after_id: int, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise InvalidParameterError(f"limit must be >= 0, not {limit}")
        self.aggregate_name = aggregate_name
        self.last = after_id
        self.remaining = limit
        self.done = False

    def next_query(self) -> tuple[Any, ...] | None:
        if self.done or (self.remaining is not None and self.remaining <= 0):
            return None
        self.page = PAGE_SIZE if self.remaining is None else min(PAGE_SIZE, self.remaining)
        return (self.last, self.aggregate_name, self.aggregate_name, self.page)

    def advance(self, rows: list[Any]) -> None:
        """Moves past a page's `rows` (as the query :meth:`next_query` gave returned them)."""
        if rows:
            self.last = rows[-1][0]
        if self.remaining is not None:
            self.remaining -= len(rows)
        self.done = len(rows) < self.page
