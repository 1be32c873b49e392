"""Large array parameters packed by the Rust core in PostgreSQL's binary array format.

psycopg dumps a Python list element by element in Python; for the thousands of elements of a
batch that cost about a fifth of the whole write. These wrappers carry an already-packed payload
and a dumper that passes it through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from oplog import _core

__all__ = ["ByteaArray", "Int8Array", "TextArray", "register"]


class TextArray(bytes):
    """A packed ``text[]``."""

    @classmethod
    def of(cls, items: Sequence[str | None]) -> TextArray:
        """Packs `items` (None is NULL)."""
        return cls(_core.pack_array(items, False))


class ByteaArray(bytes):
    """A packed ``bytea[]``."""

    @classmethod
    def of(cls, items: Sequence[bytes | None]) -> ByteaArray:
        """Packs `items` (None is NULL)."""
        return cls(_core.pack_array(items, True))


class Int8Array(bytes):
    """A packed ``int8[]``."""

    @classmethod
    def of(cls, items: list[int]) -> Int8Array:
        """Packs `items`."""
        return cls(_core.pack_int8_array(items))


class _Packed(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def _dumper(type_name: str) -> type[Dumper]:
    info = psycopg.postgres.types[type_name]
    return type(f"_Packed_{type_name}", (_Packed,), {"oid": info.array_oid})


_DUMPERS = {TextArray: _dumper("text"), ByteaArray: _dumper("bytea"), Int8Array: _dumper("int8")}


def register(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Makes `conn` pass packed arrays through (cheap; idempotent)."""
    adapters = conn.adapters
    for cls, dumper in _DUMPERS.items():
        adapters.register_dumper(cls, dumper)
