"""Operations: one protobuf message plus what was done with it (the Go ``Message``)."""

from __future__ import annotations

import enum
from typing import NamedTuple

from google.protobuf.message import Message

from oplog.proto.any_operation_pb2 import OperationOptions

__all__ = ["OpType", "Operation", "OperationOptions"]


class OpType(enum.IntEnum):
    """What an operation did; the values are those of the wire format's ``OpType``."""

    UNSPECIFIED = 0
    CREATE = 1
    UPDATE = 2
    DELETE = 3
    CREATE_ITEMS = 4
    DELETE_ITEMS = 5


class Operation(NamedTuple):
    """One operation of an entry: immutable, and cheap to build (a tuple).

    Attributes:
        message: The protobuf message written, updated or deleted.
        type_name: The message's name in the type catalog, e.g. ``"user"``.
        op_type: What was done.
        field_mask: For UPDATE, the fields that were set (proto field names or Go spellings).
        null_paths: For UPDATE, the fields that were set to NULL.
        options: The write's operation options, if any.
    """

    message: Message
    type_name: str
    op_type: OpType
    field_mask: tuple[str, ...] = ()
    null_paths: tuple[str, ...] = ()
    options: OperationOptions | None = None


def normalize_path(path: str) -> str:
    """A field-mask path as it is matched to a field: without underscores, lower case (so
    ``phone_number``, ``PhoneNumber`` and ``PHONENUMBER`` name one field)."""
    return path.replace("_", "").lower()


def go_field_name(name: str) -> str:
    """The Go struct field name protoc-gen-go gives proto field `name` (``phone_number`` ->
    ``PhoneNumber``): a letter after an underscore (or at the start) goes upper case and the
    underscore goes; an underscore before anything else stays; a leading one becomes ``X``."""
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "_" and i == 0:
            out.append("X")
        elif c == "_" and i + 1 < len(name) and name[i + 1].islower():
            pass
        elif c.isdigit() or c == "_":
            out.append(c)
        else:
            out.append(c.upper())
            while i + 1 < len(name) and name[i + 1].islower():
                i += 1
                out.append(name[i])
        i += 1
    return "".join(out)
