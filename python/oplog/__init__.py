"""oplog: an encrypted, ordered operation log in PostgreSQL, byte-compatible with HashiCorp
Boundary's ``internal/oplog``.

The names below are the public API; ``oplog._core`` (the Rust codec) is private.
"""

from __future__ import annotations

from oplog.batch import BatchItem
from oplog.catalog import Table, TypeCatalog
from oplog.chain import VerifyProblem, VerifyReport
from oplog.checkpoint import Checkpoint, Lag, partition_of
from oplog.consumer import Consumer
from oplog.entry import Entry
from oplog.errors import (
    DecodeError,
    DecryptError,
    EmbeddedServerError,
    InvalidParameterError,
    KeyFileError,
    OplogError,
    SchemaError,
    TicketAlreadyRedeemedError,
    TicketConflictError,
    TicketNotFoundError,
    UnknownTypeError,
)
from oplog.keyfile import load_keys
from oplog.log import Oplog
from oplog.operation import Operation, OperationOptions, OpType
from oplog.queue import Queue
from oplog.replay import Replayer
from oplog.schema import migrate, migrate_down
from oplog.ticket import Ticket, Ticketer
from oplog.transaction import run_in_transaction
from oplog.wrapping import AeadWrapper, KeyDeriving, MultiWrapper, Wrapper
from oplog.writer import Writer

__all__ = [
    "AeadWrapper",
    "BatchItem",
    "Checkpoint",
    "Consumer",
    "DecodeError",
    "DecryptError",
    "EmbeddedServerError",
    "Entry",
    "InvalidParameterError",
    "KeyDeriving",
    "KeyFileError",
    "Lag",
    "MultiWrapper",
    "OpType",
    "Operation",
    "OperationOptions",
    "Oplog",
    "OplogError",
    "Queue",
    "Replayer",
    "SchemaError",
    "Table",
    "Ticket",
    "TicketAlreadyRedeemedError",
    "TicketConflictError",
    "TicketNotFoundError",
    "Ticketer",
    "TypeCatalog",
    "UnknownTypeError",
    "VerifyProblem",
    "VerifyReport",
    "Wrapper",
    "Writer",
    "load_keys",
    "migrate",
    "migrate_down",
    "partition_of",
    "run_in_transaction",
]

__version__ = "0.1.0"
