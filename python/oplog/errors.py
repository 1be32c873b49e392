"""The exceptions oplog raises.

::

    OplogError(Exception)
     ├─ InvalidParameterError(OplogError, ValueError)   bad arguments; nothing written
     │   └─ SchemaError                                 the database lacks a table (or an oplog
     │                                                  migration) the call needs
     ├─ DecodeError(OplogError, ValueError)             malformed queue / envelope / blob
     ├─ UnknownTypeError(OplogError, KeyError)          type name or class not in the catalog
     ├─ DecryptError(OplogError)                        authentication failed, unknown key id, ...
     ├─ KeyFileError(OplogError)                        a key file missing, unreadable, malformed
     ├─ EmbeddedServerError(OplogError)                 the embedded server did not start or stop
     ├─ TicketNotFoundError(OplogError)
     └─ TicketConflictError(OplogError)                 another writer redeemed the ticket first;
                                                        the one retryable error

Every class is importable from ``oplog`` itself. The Rust core raises ``DecodeError`` and
``InvalidParameterError`` from this module, so ``except oplog.DecodeError`` catches both sides.
"""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "DecryptError",
    "EmbeddedServerError",
    "InvalidParameterError",
    "KeyFileError",
    "OplogError",
    "SchemaError",
    "TicketAlreadyRedeemedError",
    "TicketConflictError",
    "TicketNotFoundError",
    "UnknownTypeError",
]


class OplogError(Exception):
    """The base of every error oplog raises on purpose."""


class InvalidParameterError(OplogError, ValueError):
    """An argument is invalid; nothing was written or changed."""


class SchemaError(InvalidParameterError):
    """The database lacks a table or column the call needs: an oplog migration not applied
    (``oplog.migrate``), or a replayed table not on the connection's search_path."""


class DecodeError(OplogError, ValueError):
    """Bytes that should hold a queue, an envelope or a blob are malformed.

    Attributes:
        offset: The byte offset in the input at which decoding failed, when known.
    """

    offset: int | None

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message, offset)
        self.offset = offset

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownTypeError(OplogError, KeyError):
    """A type name or message class is not in the type catalog."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument; this is a sentence, not a key.
        return str(self.args[0]) if self.args else ""


class DecryptError(OplogError):
    """A blob could not be decrypted: wrong key, unknown key id, tampered or truncated data."""


class KeyFileError(OplogError):
    """The key file is missing, unreadable, malformed, or (when asked to be strict) readable by
    others than its owner."""


class EmbeddedServerError(OplogError):
    """The embedded server is not installed or did not start or stop."""


class TicketNotFoundError(OplogError):
    """No ticket exists for the aggregate name."""


class TicketConflictError(OplogError):
    """Another writer redeemed the ticket first; roll back and retry the whole transaction."""


TicketAlreadyRedeemedError = TicketConflictError
"""The Go original's name for `TicketConflictError`."""
