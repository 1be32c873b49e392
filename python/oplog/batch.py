"""The batch engine of ``write_many``: a batch of entries checked whole, then encoded,
encrypted and sent chunk by chunk, and made atomic on the caller's connection."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

import psycopg

from oplog import _core, _sql, pgarray
from oplog.chain import EMPTY_METADATA, metadata_digest
from oplog.entry import metadata_rows, normalize_metadata
from oplog.errors import InvalidParameterError, OplogError, UnknownTypeError
from oplog.operation import Operation
from oplog.queue import check_classes, for_go_readers

if TYPE_CHECKING:
    from oplog.settings import OplogSettings

__all__ = ["BatchItem", "EntryBatch", "batch_block"]

BatchItem = tuple[str, Iterable[Operation], Optional[Mapping[str, Union[Sequence[str], str]]]]
"""One entry of a batch: ``(aggregate_name, operations, metadata or None)``."""

_CHUNKED_FROM = 256  # entries; smaller batches are one statement, prepared before it is sent
_FIRST_CHUNK = 128  # the server starts on these while the client prepares the rest
_CHUNK_GROWTH = 3


class EntryBatch:
    """A batch of entries to write: checked whole up front (item shape, operations present,
    aggregate and metadata), then encoded and encrypted chunk by chunk as it is sent.

    A batch smaller than ``_CHUNKED_FROM`` is one statement (`statements` yields one), fully
    prepared before it is sent. A larger one is several: the first redeems the tickets of the
    whole batch, the others are gated on it; the caller sends them in one pipeline and one
    transaction or savepoint, since an item may still fail to encode after the first is sent.
    """

    def __init__(self, log: OplogSettings, items: Iterable[BatchItem]) -> None:
        self.log = log
        self.aggregates: list[str] = []
        self.operations: list[list[Operation]] = []
        # Per item, its metadata rows; batches often repeat one mapping, normalized once.
        self.metadata: list[tuple[list[str], list[str | None]]] = []
        tickets: set[str] = set()
        last: object = None
        rows: tuple[list[str], list[str | None]] = ([], [])
        for index, item in enumerate(items):
            try:
                aggregate_name, operations, metadata = item
            except (TypeError, ValueError):
                raise InvalidParameterError(
                    f"item {index}: expected (aggregate_name, operations, metadata)"
                ) from None
            tickets.add(log.ticket_name(aggregate_name))
            ops = list(operations)
            if not ops:
                raise InvalidParameterError(f"item {index}: an entry needs an operation")
            try:
                check_classes(log.catalog, ops)
            except (InvalidParameterError, UnknownTypeError) as exc:
                raise type(exc)(f"item {index}: {exc.args[0]}") from None
            if metadata is not last or index == 0:
                rows = metadata_rows(normalize_metadata(metadata))
                last = metadata
            self.aggregates.append(aggregate_name)
            self.operations.append(ops)
            self.metadata.append(rows)
        self.size = len(self.aggregates)
        self.tickets = sorted(tickets)
        self.chunked = self.size >= _CHUNKED_FROM
        self.token = secrets.token_hex(8) if self.chunked else ""
        # Chained (oplog.chain): the heads of the batch's aggregates, locked and read by the
        # caller before the statements are asked for; each chunk's tags advance them.
        self.tag_key = log.tag_key()
        self.heads: dict[str, tuple[int, bytes]] = {}
        self._prepared: list[tuple[str, dict[str, Any]]] = []
        self._chained: list[tuple[str, dict[str, Any]]] = []
        self._blobs: list[list[bytes]] = []
        if not self.chunked and self.size:
            # Every item encodes before anything is sent.
            self._prepared.append((_sql.WRITE_MANY, self._params(0, self.size)))

    @property
    def head_names(self) -> list[str]:
        """The batch's aggregates, in name order: the heads to lock before sending."""
        return sorted(set(self.aggregates))

    def bounds(self) -> Iterator[tuple[int, int]]:
        """The chunks' [start, end) item ranges."""
        if not self.chunked:
            yield 0, self.size
            return
        start, size = 0, _FIRST_CHUNK
        while start < self.size:
            end = min(start + size, self.size)
            # A short tail joins the chunk before it.
            if self.size - end < _FIRST_CHUNK:
                end = self.size
            yield start, end
            start, size = end, size * _CHUNK_GROWTH

    def statements(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(query, params) per chunk, in order, prepared as they are asked for."""
        for index, (start, end) in enumerate(self.bounds()):
            if index == len(self._prepared):
                query = _sql.WRITE_MANY_FIRST if index == 0 else _sql.WRITE_MANY_NEXT
                self._prepared.append((query, self._params(start, end)))
            if self.tag_key is None:
                yield self._prepared[index]
                continue
            if index == len(self._chained):
                self._chained.append(self._chain(index, start, end))
            yield self._chained[index]

    def _chain(self, index: int, start: int, end: int) -> tuple[str, dict[str, Any]]:
        """A chunk's statement chained onto the heads (which it advances)."""
        assert self.tag_key is not None
        query, params = self._prepared[index]
        last = end == self.size
        if not self.chunked:
            query = _sql.CHAINED_MANY
        elif index == 0:
            query = _sql.CHAINED_MANY_FIRST
        else:
            query = _sql.CHAINED_MANY_LAST if last else _sql.CHAINED_MANY_NEXT
        aggregates = self.aggregates[start:end]
        digests: list[bytes] = []
        memo: dict[int, bytes] = {}
        for rows in self.metadata[start:end]:
            if not rows[0]:
                digests.append(EMPTY_METADATA)
                continue
            digest = memo.get(id(rows))
            if digest is None:
                digest = memo[id(rows)] = metadata_digest(*rows)
            digests.append(digest)
        seqs, tags = _core.chain_tags(
            self.tag_key, params["key_id"], aggregates, self._blobs[index], digests,
            self.heads,
        )  # fmt: skip
        params = {
            **params,
            "seqs": pgarray.Int8Array.of(seqs),
            "tags": pgarray.ByteaArray.of(tags),
        }
        if last:  # every head of the batch, as it stands after the batch
            names = sorted(self.heads)
            params["head_names"] = pgarray.TextArray.of(names)
            params["head_seqs"] = pgarray.Int8Array.of([self.heads[n][0] for n in names])
            params["head_tags"] = pgarray.ByteaArray.of([self.heads[n][1] for n in names])
        return query, params

    def _params(self, start: int, end: int) -> dict[str, Any]:
        encrypt = self.log.wrapper.encrypt
        version = self.log.format_version
        encode = _core.encode_operations
        chunk = self.operations[start:end]
        if version == "v1":
            chunk = [for_go_readers(ops) for ops in chunk]
        blobs = [encrypt(encode(ops, version)) for ops in chunk]
        self._blobs.append(blobs)  # for the chunk's tags
        meta_ord: list[int] = []
        meta_keys: list[str] = []
        meta_values: list[str | None] = []
        for ord_, (keys, values) in enumerate(self.metadata[start:end], start=1):
            if keys:
                meta_ord += [ord_] * len(keys)
                meta_keys += keys
                meta_values += values
        params: dict[str, Any] = {
            "version": version,
            "key_id": self.log.wrapper.key_id,
            "aggregates": pgarray.TextArray.of(self.aggregates[start:end]),
            "datas": pgarray.ByteaArray.of(blobs),
            "meta_ord": pgarray.Int8Array.of(meta_ord),
            "keys": pgarray.TextArray.of(meta_keys),
            "values": pgarray.TextArray.of(meta_values),
        }
        if start == 0:
            params["tickets"] = self.tickets
            params["ticket_count"] = len(self.tickets)
        if self.chunked:
            params["token"] = self.token
        return params

    def check_ids(self, ids: list[int]) -> list[int]:
        """The batch's ids; an error (the batch rolled back) unless there is one per item."""
        if len(ids) != self.size:
            raise OplogError(f"a batch of {self.size} entries wrote {len(ids)}; it was rolled back")
        return ids


def batch_block(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> _Block:
    """How a chunked batch is made atomic on `conn`: its own transaction in autocommit mode,
    else a savepoint in the caller's transaction (which stays usable if the batch fails)."""
    status = conn.info.transaction_status
    in_block = status in (
        psycopg.pq.TransactionStatus.INTRANS,
        psycopg.pq.TransactionStatus.INERROR,
    )
    if conn.autocommit and not in_block:
        return _Block(b"begin", b"commit", (b"rollback",))
    return _Block(
        b"savepoint oplog_write_many",
        b"release savepoint oplog_write_many",
        (b"rollback to savepoint oplog_write_many", b"release savepoint oplog_write_many"),
    )


class _Block(NamedTuple):
    begin: bytes
    end: bytes
    undo: tuple[bytes, ...]
