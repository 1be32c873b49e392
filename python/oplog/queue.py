"""The queue: the encoded list of operations stored (encrypted) in an entry's ``data``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from oplog import _core
from oplog.catalog import TypeCatalog
from oplog.errors import DecodeError, InvalidParameterError, UnknownTypeError
from oplog.operation import Operation, OperationOptions, OpType

__all__ = ["Queue", "check_classes"]

Version = Literal["v1", "v2"]

_OP_TYPES = tuple(OpType)
_new_operation = tuple.__new__
_parse_options = OperationOptions.FromString


def check_classes(catalog: TypeCatalog, batch: Sequence[Operation]) -> None:
    """Checks that each operation's message is an instance of exactly the class its type name
    is registered for in `catalog` (a message of another class would be stored under the
    wrong name and read back garbled).

    Raises:
        InvalidParameterError: An item is not an Operation, or its message is of another class.
        UnknownTypeError: A type name is not in the catalog.
    """
    classes = catalog._classes
    for index, op in enumerate(batch):
        if not (isinstance(op, tuple) and len(op) == 6):
            raise InvalidParameterError(
                f"operation {index}: expected an oplog.Operation, not {type(op).__name__}"
            )
        message, type_name = op[0], op[1]
        cls = classes.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            raise UnknownTypeError(f"type name {type_name!r} is not in the catalog")
        if type(message) is not cls:
            got = message.__qualname__ if isinstance(message, type) else type(message).__qualname__
            what = "the class " if isinstance(message, type) else ""
            raise InvalidParameterError(
                f"operation {index}: type name {type_name!r} is registered for "
                f"{cls.__qualname__}, not {what}{got}"
            )


def _paths(paths: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(paths, str):
        raise InvalidParameterError(f"{what} must be a sequence of str, not a str")
    return tuple(paths)


class Queue:
    """A FIFO of operations in the Go oplog's queue format.

    Write with :meth:`add` / :meth:`extend` and take the bytes with ``bytes(queue)``; read with
    :meth:`remove` or by iterating. Reading needs a catalog to turn type names into classes.

    Args:
        data: Encoded operations to read (a copy is taken if it is not ``bytes``).
        catalog: The type catalog for decoding; when given, :meth:`extend` also checks that
            each message is of the class its type name is registered for.
        version: The format written: ``"v2"`` (Boundary today: null paths and options) or
            ``"v1"`` (Boundary 2020). Both are read.

    Raises:
        InvalidParameterError: `version` is neither ``"v1"`` nor ``"v2"``.
    """

    __slots__ = ("_catalog", "_data", "_pending", "_pos", "_version")

    def __init__(
        self,
        data: bytes | bytearray | memoryview = b"",
        *,
        catalog: TypeCatalog | None = None,
        version: Version = "v2",
    ) -> None:
        if version not in ("v1", "v2"):
            raise InvalidParameterError(f"unknown queue version {version!r}: use 'v1' or 'v2'")
        self._catalog = catalog
        self._version: Version = version
        self._data = bytes(data)
        self._pos = 0
        self._pending: list[bytes] = []

    @property
    def version(self) -> Version:
        """The format this queue writes."""
        return self._version

    def add(
        self,
        message: Message,
        type_name: str,
        op_type: OpType,
        *,
        field_mask: Sequence[str] = (),
        null_paths: Sequence[str] = (),
        options: OperationOptions | None = None,
    ) -> None:
        """Appends one operation.

        Raises:
            InvalidParameterError: The operation is invalid (see :meth:`extend`); nothing is added.
            UnknownTypeError: The queue has a catalog and `type_name` is not in it.
        """
        operation = Operation(
            message,
            type_name,
            op_type,
            _paths(field_mask, "field_mask"),
            _paths(null_paths, "null_paths"),
            options,
        )
        self.extend((operation,))

    def extend(self, operations: Iterable[Operation]) -> None:
        """Appends operations in order, encoding all of them in one call into the Rust core.

        Raises:
            InvalidParameterError: An operation is invalid: its message is not a protobuf
                message (or, with a catalog, not of its type name's class); the type name is
                empty; the op type is UNSPECIFIED or unknown; an UPDATE has neither field-mask
                nor null paths, or a path is in both (case-insensitively); null paths or options
                in a v1 queue. Nothing of the batch is added.
            UnknownTypeError: The queue has a catalog and a type name is not in it.
        """
        batch = operations if isinstance(operations, (list, tuple)) else list(operations)
        if self._catalog is not None:
            check_classes(self._catalog, batch)
        self._pending.append(_core.encode_operations(batch, self._version))

    def _consolidate(self) -> bytes:
        if self._pending:
            self._data = b"".join((self._data[self._pos :], *self._pending))
            self._pos = 0
            self._pending.clear()
        return self._data

    def __bytes__(self) -> bytes:
        """The encoded operations not yet removed."""
        data = self._consolidate()
        return data[self._pos :] if self._pos else data

    @property
    def nbytes(self) -> int:
        """How many encoded bytes are not yet removed."""
        return len(self._data) - self._pos + sum(map(len, self._pending))

    def _decoder(self) -> TypeCatalog:
        if self._catalog is None:
            raise InvalidParameterError("decoding a queue needs a type catalog: Queue(catalog=)")
        return self._catalog

    def remove(self) -> Operation | None:
        """Removes and returns the first operation, or ``None`` when the queue is empty.

        Raises:
            InvalidParameterError: The queue has no catalog.
            DecodeError: The next frame is malformed; the queue is left as it was.
            UnknownTypeError: The operation's type name is not in the catalog.
        """
        catalog = self._decoder()
        data = self._consolidate()
        raw, end = _core.decode_operations(data, self._pos, 1)
        if not raw:
            return None
        operation = next(_build(raw, catalog))
        self._pos = end
        return operation

    def __iter__(self) -> Iterator[Operation]:
        """Removes and yields every operation, in order.

        The whole queue is unframed (and its type names checked) before the first operation is
        yielded, so a malformed queue raises before anything is consumed. Messages are parsed
        as they are yielded.

        Raises:
            InvalidParameterError: The queue has no catalog.
            DecodeError: The queue is malformed.
            UnknownTypeError: A type name is not in the catalog.
        """
        catalog = self._decoder()
        data = self._consolidate()
        raw, end = _core.decode_operations(data, self._pos, None)
        names = {op[0] for op in raw}
        for name in names:
            catalog.get(name)
        self._pos = end
        return _build(raw, catalog)

    def __repr__(self) -> str:
        return f"Queue(version={self._version!r}, nbytes={self.nbytes})"


def _build(raw: list[_core._RawOperation], catalog: TypeCatalog) -> Iterator[Operation]:
    """Turns the core's raw tuples into Operations, parsing each message as it goes."""
    parsers = catalog._parsers
    for type_name, value, op_type, field_mask, null_paths, options, offset in raw:
        parse = parsers.get(type_name)
        if parse is None:
            raise UnknownTypeError(f"type name {type_name!r} is not in the catalog")
        try:
            message = parse(value)
            opts = None if options is None else _parse_options(options)
        except ProtobufDecodeError as exc:
            raise DecodeError(
                f"frame at offset {offset}: its {type_name!r} message does not parse: {exc}",
                offset,
            ) from exc
        yield _new_operation(
            Operation, (message, type_name, _OP_TYPES[op_type], field_mask, null_paths, opts)
        )
