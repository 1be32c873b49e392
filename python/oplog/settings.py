"""An oplog's settings, and what they make of an entry before it is sent (shared by the sync
and the asyncio front doors, :class:`oplog.Oplog` and ``oplog.aio.AsyncOplog``)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg

from oplog import _core, _sql, chain
from oplog.batch import BatchItem, EntryBatch
from oplog.catalog import TypeCatalog
from oplog.entry import Entry, metadata_rows
from oplog.errors import DecodeError, DecryptError, InvalidParameterError, UnknownTypeError
from oplog.mapping import Statements
from oplog.operation import Operation
from oplog.queue import Version, check_classes, decode
from oplog.ticket import LockMode, Ticketer, check_lock_mode, ticket_name
from oplog.wrapping import Wrapper

__all__ = ["OplogSettings", "logger", "warn_if_outside_a_transaction"]

logger = logging.getLogger("oplog")
"""oplog's logger (no handlers added): warnings on autocommit writes and loose key files,
migrations applied (info), ticket conflicts, retries and consumer pages (debug). Never keys or
plaintext."""

# Connections already warned about (once each), without keeping them alive.
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def warn_if_outside_a_transaction(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], what: str
) -> None:
    """Warns (once per connection) when `conn` is in autocommit mode with no transaction
    open: the entry `what` writes then commits on its own, apart from the data change it
    records, and the "same transaction" guarantee is gone."""
    if (
        conn.autocommit
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        and conn not in _WARNED
    ):
        _WARNED.add(conn)
        logger.warning(
            "oplog %s on an autocommit connection outside a transaction: the entry commits on"
            " its own, not in the same transaction as the data change it records (open one"
            " with conn.transaction(), or use apply)",
            what,
        )


class OplogSettings:
    """What an :class:`oplog.Oplog` (or ``AsyncOplog``) is configured with, and what that
    makes of an entry before it is sent: encoding, encryption, statements and their
    parameters. No I/O here.

    Args:
        wrapper: Encrypts new entries and decrypts stored ones (a MultiWrapper for rotation).
        catalog: The message types that operations may carry.
        aggregate_names: One ticket per aggregate name (default), or one for all.
        lock: ``"optimistic"`` (default) or ``"pessimistic"`` ticket reads by :meth:`ticketer`
            (the lower-level API); ``write`` and ``write_many`` redeem in one statement that
            waits for a concurrent writer at READ COMMITTED either way.
        format_version: The queue format written, ``"v2"`` (default) or ``"v1"``.
    """

    def __init__(
        self,
        wrapper: Wrapper,
        catalog: TypeCatalog,
        *,
        aggregate_names: bool = True,
        lock: LockMode = "optimistic",
        format_version: Version = "v2",
    ) -> None:
        if not isinstance(catalog, TypeCatalog):
            raise InvalidParameterError(f"catalog must be a TypeCatalog, not {catalog!r}")
        if format_version not in ("v1", "v2"):
            raise InvalidParameterError(
                f"unknown entry format version {format_version!r}: use 'v1' or 'v2'"
            )
        self.wrapper = wrapper
        self.catalog = catalog
        self.aggregate_names = aggregate_names
        self.lock: LockMode = check_lock_mode(lock)
        self.format_version: Version = format_version
        try:
            self._tag_key = chain.tag_key(wrapper)
        except DecryptError:  # a MultiWrapper whose primary derives no keys
            self._tag_key = None
        self._heads: dict[tuple[str, int, str, str], tuple[int, bytes]] = {}
        self._stale: dict[tuple[str, int, str, str], int] = {}

    def tag_key(self) -> bytes | None:
        """The key of the tags of new entries, or None when the wrapper derives no keys (then
        entries are written without tags: see :mod:`oplog.chain`)."""
        return self._tag_key

    def check_entry(self, data: bytes) -> tuple[str, str] | None:
        """What is wrong with a stored blob, as (problem kind, sentence), or None: it must
        decrypt, and decode with the catalog (with an empty catalog, its envelopes only)."""
        try:
            plain = self.wrapper.decrypt(data)
        except DecryptError as exc:
            return "undecryptable", f"does not decrypt: {exc}"
        try:
            if len(self.catalog):
                decode(plain, self.catalog)
            else:
                _core.decode_operations(plain, 0, None)
        except (DecodeError, UnknownTypeError) as exc:
            return "undecodable", f"does not decode: {exc}"
        return None

    def chain_entry(self, heads: dict[str, tuple[int, bytes]], params: dict[str, Any]) -> None:
        """Chains one prepared entry (:meth:`prepare_write`'s params) onto `heads`, which it
        advances: sets the params' ``prev_tag``, ``chain_seq`` and ``chain_tag``."""
        assert self._tag_key is not None
        keys = params["keys"]
        digest = chain.metadata_digest(keys, params["values"]) if keys else chain.EMPTY_METADATA
        name = params["aggregate_name"]
        params["prev_tag"] = heads[name][1]
        seqs, tags = _core.chain_tags(
            self._tag_key, params["key_id"], [name], [params["data"]], [digest], heads
        )
        params["chain_seq"], params["chain_tag"] = seqs[0], tags[0]

    # A writer's guess of each aggregate's head, by database: what it last wrote there. A
    # chained write sends its entry on the guess and the statement checks it (see
    # _sql.WRITE_CHAINED), so a writer that is the only one of its aggregates needs no round
    # trip to learn the head; a wrong guess (another writer, a rollback) costs the round trip
    # that locks the head, never a wrong chain.
    _HEADS_KEPT = 65_536
    _LOCK_AFTER_STALE = 16  # writes

    def cached_head(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], aggregate: str
    ) -> dict[str, tuple[int, bytes]] | None:
        """The head last written to `aggregate` in `conn`'s database, as a heads dict; None
        when unknown, or for the next few writes after a guess turned out stale (a contended
        aggregate: a wrong guess costs a round trip that waits for the other writer)."""
        info = conn.info
        key = (info.host, info.port, info.dbname, aggregate)
        skip = self._stale.get(key)
        if skip:
            self._stale[key] = skip - 1
            return None
        head = self._heads.get(key)
        return None if head is None else {aggregate: head}

    def head_was_stale(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], aggregate: str
    ) -> None:
        """Notes that the guess of `aggregate`'s head was stale: lock it first for a while."""
        if len(self._stale) >= self._HEADS_KEPT:
            self._stale.clear()
        info = conn.info
        self._stale[(info.host, info.port, info.dbname, aggregate)] = self._LOCK_AFTER_STALE

    def remember_head(
        self,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        aggregate: str,
        head: tuple[int, bytes],
    ) -> None:
        if len(self._heads) >= self._HEADS_KEPT:
            self._heads.clear()
        info = conn.info
        self._heads[(info.host, info.port, info.dbname, aggregate)] = head

    def ticket_name(self, aggregate_name: str) -> str:
        """The ticket an aggregate name uses."""
        return ticket_name(aggregate_name, self.aggregate_names)

    def ticketer(self, conn: psycopg.Connection[Any]) -> Ticketer:
        """A ticketer (the lower-level, synchronous API) on `conn` with this log's ticket
        settings."""
        return Ticketer(conn, aggregate_names=self.aggregate_names, lock=self.lock)

    def prepare_write(
        self,
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None,
    ) -> tuple[Entry, dict[str, Any]]:
        ticket = self.ticket_name(aggregate_name)
        entry = Entry(
            aggregate_name,
            metadata=metadata,
            wrapper=self.wrapper,
            format_version=self.format_version,
        )
        ops = tuple(operations)
        check_classes(self.catalog, ops)
        entry.set_operations(ops)
        entry.encrypt_data()
        keys, values = metadata_rows(entry.metadata)
        return entry, {
            "ticket": ticket,
            "ticket_version": None,
            "version": entry.format_version,
            "aggregate_name": aggregate_name,
            "data": entry.data,
            "key_id": entry.key_id,
            "keys": keys,
            "values": values,
        }

    def prepare_apply(
        self,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None,
    ) -> tuple[Entry, bytes, list[Any], ApplyChain | None]:
        ops = tuple(operations)
        check_classes(self.catalog, ops)
        # Composing needs only the connection's encoding; nothing is executed here.
        statements = Statements(conn, self.catalog)
        chained = self._tag_key is not None
        parts = [b"with ", _sql.APPLY_CHAINED_TICKET if chained else _sql.APPLY_TICKET]
        data_params: list[Any] = []
        touched: set[tuple[Any, ...]] = set()
        for op in ops:
            query, params, identity = statements.ticket_gated(op)
            if identity in touched:
                # The parts of one statement do not see each other's changes.
                raise InvalidParameterError(
                    f"apply changes each row once; {identity[0]} {identity[1:]} appears twice"
                )
            touched.add(identity)
            parts += [b", d%d as (" % len(touched), query, b")"]
            data_params += params
        entry, p = self.prepare_write(aggregate_name, ops, metadata)
        # Chained, the head's check and the chain's values are filled in once the head is
        # known (ApplyChain.fill).
        head_params = [None] * 5 + [p["ticket"]] if chained else []
        params = [
            *head_params, p["ticket"], *data_params,
            p["version"], p["aggregate_name"], p["data"], p["key_id"],
        ]  # fmt: skip
        if chained:
            parts.append(_sql.APPLY_CHAINED_ENTRY)
            params += [None, None]
        else:
            parts.append(_sql.APPLY_ENTRY)
        if p["keys"]:  # metadata rows, only when there are any (fewer parameters to adapt)
            parts.append(_sql.APPLY_METADATA)
            params += [p["keys"], p["values"]]
        parts.append(_sql.APPLY_RESULT)
        chain = ApplyChain(p, params, 6 + 1 + len(data_params) + 4) if chained else None
        return entry, b"".join(parts), params, chain

    def prepare_batch(self, items: Iterable[BatchItem]) -> EntryBatch | None:
        """Checks a batch's items (None for an empty batch); see :class:`EntryBatch`."""
        batch = EntryBatch(self, items)
        return batch if batch.size else None


class ApplyChain:
    """Where a chained apply's sequence and tag go in its parameters, once the head is
    locked (the statement is composed before)."""

    def __init__(self, prepared: dict[str, Any], params: list[Any], at: int) -> None:
        self.prepared = prepared
        self.params = params
        self.at = at

    def fill(self, log: OplogSettings, heads: dict[str, tuple[int, bytes]]) -> None:
        p = self.prepared
        log.chain_entry(heads, p)
        seq, tag = p["chain_seq"], p["chain_tag"]
        self.params[:5] = [seq, tag, p["aggregate_name"], seq, p["prev_tag"]]
        self.params[self.at : self.at + 2] = [seq, tag]
