"""oplog: an encrypted, ordered operation log in PostgreSQL, byte-compatible with HashiCorp
Boundary's ``internal/oplog``.

The names below are the public API; ``oplog._core`` (the Rust codec) is private.
"""

from __future__ import annotations

from oplog.catalog import Table, TypeCatalog
from oplog.errors import (
    DecodeError,
    DecryptError,
    InvalidParameterError,
    OplogError,
    TicketAlreadyRedeemedError,
    TicketConflictError,
    TicketNotFoundError,
    UnknownTypeError,
)
from oplog.operation import Operation, OperationOptions, OpType
from oplog.queue import Queue

__all__ = [
    "DecodeError",
    "DecryptError",
    "InvalidParameterError",
    "OpType",
    "Operation",
    "OperationOptions",
    "OplogError",
    "Queue",
    "Table",
    "TicketAlreadyRedeemedError",
    "TicketConflictError",
    "TicketNotFoundError",
    "TypeCatalog",
    "UnknownTypeError",
]

__version__ = "0.1.0"
