"""The queue: the encoded list of operations stored (encrypted) in an entry's ``data``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from google.protobuf.message import Message

from oplog import _core
from oplog.catalog import TypeCatalog
from oplog.errors import InvalidParameterError, UnknownTypeError
from oplog.operation import Operation, OperationOptions, OpType, go_field_name, normalize_path

__all__ = ["Queue", "check_class", "check_classes", "decode"]

Version = Literal["v1", "v2"]


def check_class(catalog: TypeCatalog, message: object, type_name: object, index: int) -> None:
    """Checks that `message` is an instance of exactly the class `type_name` is registered for
    in `catalog` (a message of another class would be stored under the wrong name and read
    back garbled).

    Raises:
        InvalidParameterError: The message is of another class (or is a class).
        UnknownTypeError: The type name is not in the catalog.
    """
    cls = catalog._classes.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise UnknownTypeError(f"type name {type_name!r} is not in the catalog")
    if type(message) is not cls:
        got = message.__qualname__ if isinstance(message, type) else type(message).__qualname__
        what = "the class " if isinstance(message, type) else ""
        raise InvalidParameterError(
            f"operation {index}: type name {type_name!r} is registered for "
            f"{cls.__qualname__}, not {what}{got}"
        )


def check_classes(catalog: TypeCatalog, batch: Sequence[Operation]) -> None:
    """:func:`check_class` for each operation of a batch.

    Raises:
        InvalidParameterError: An item is not an Operation, or its message is of another class.
        UnknownTypeError: A type name is not in the catalog.
    """
    for index, op in enumerate(batch):
        if not (isinstance(op, tuple) and len(op) == 6):
            raise InvalidParameterError(
                f"operation {index}: expected an oplog.Operation, not {type(op).__name__}"
            )
        check_class(catalog, op[0], op[1], index)


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

    _pending: _core.QueueWriter

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
        self._pending = _core.QueueWriter(version)

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
        if self._catalog is not None:
            check_class(self._catalog, message, type_name, 0)
        if self._version == "v1" and field_mask:
            field_mask = go_mask(message, field_mask, 0)
        self._pending.add(message, type_name, op_type, field_mask, null_paths, options)

    def extend(self, operations: Iterable[Operation]) -> None:
        """Appends operations in order, encoding all of them in one call into the Rust core.

        Raises:
            InvalidParameterError: An operation is invalid: its message is not a protobuf
                message (or, with a catalog, not of its type name's class); the type name is
                empty; the op type is UNSPECIFIED or unknown; an UPDATE has neither field-mask
                nor null paths (in v2), or a path is in both (case-insensitively); null paths or
                options in a v1 queue, or a v1 mask path that names no field of the message (a
                v1 queue writes each path in the Go field spelling, ``PhoneNumber``, the one
                be9f25cce1 resolves). Nothing of the batch is added.
            UnknownTypeError: The queue has a catalog and a type name is not in it.
        """
        batch = operations if isinstance(operations, (list, tuple)) else list(operations)
        if self._catalog is not None:
            check_classes(self._catalog, batch)
        if self._version == "v1":
            batch = for_go_readers(batch)
        self._pending.extend(batch)

    def _consolidate(self) -> bytes:
        if len(self._pending):
            new = self._pending.take()
            self._data = self._data[self._pos :] + new if self._data else new
            self._pos = 0
        return self._data

    def __bytes__(self) -> bytes:
        """The encoded operations not yet removed."""
        data = self._consolidate()
        return data[self._pos :] if self._pos else data

    @property
    def nbytes(self) -> int:
        """How many encoded bytes are not yet removed."""
        return len(self._data) - self._pos + len(self._pending)

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
        operations, end = _core.decode_queue(data, self._pos, 1, catalog._parsers)
        if not operations:
            return None
        self._pos = end
        return operations[0]

    def __iter__(self) -> Iterator[Operation]:
        """Removes and yields every operation, in order.

        The whole queue is decoded (unframed, its type names checked, its messages parsed by
        the Rust core with the catalog's parsers) before the first operation is yielded, so a
        malformed queue raises before anything is consumed.

        Raises:
            InvalidParameterError: The queue has no catalog.
            DecodeError: The queue is malformed, or a message does not parse as its type.
            UnknownTypeError: A type name is not in the catalog.
        """
        catalog = self._decoder()
        data = self._consolidate()
        operations, end = _core.decode_queue(data, self._pos, None, catalog._parsers)
        self._pos = end
        return iter(operations)

    def __repr__(self) -> str:
        return f"Queue(version={self._version!r}, nbytes={self.nbytes})"


def decode(data: bytes, catalog: TypeCatalog) -> list[Operation]:
    """Every operation of encoded queue `data`, in order (what iterating a
    ``Queue(data, catalog=catalog)`` yields, without building the queue: a reader decodes
    one queue per entry).

    Raises:
        DecodeError: The queue is malformed, or a message does not parse as its type.
        UnknownTypeError: A type name is not in the catalog.
    """
    operations, _ = _core.decode_queue(
        data if type(data) is bytes else bytes(data), 0, None, catalog._parsers
    )
    return operations


def decode_all(datas: list[bytes], catalog: TypeCatalog) -> tuple[list[Operation], int]:
    """The operations of encoded queues `datas` (a page of entries), in order, decoded in one
    call: ``(operations, decoded)``, the operations of the first `decoded` queues. Fewer than
    all means queue number `decoded` does not decode: :func:`decode` it for its error."""
    return _core.decode_queues(datas, catalog._parsers)


def go_mask(message: object, field_mask: Sequence[str], index: int) -> tuple[str, ...]:
    """`field_mask` in the Go field spelling (``phone_number`` -> ``PhoneNumber``): the paths
    be9f25cce1 matches to struct fields, case-insensitively. Each path must name a field of
    `message` (as oplog resolves paths: underscores and case aside).

    Raises:
        InvalidParameterError: A path names no field (be9f25cce1 would ignore it).
    """
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None or isinstance(field_mask, str):
        return tuple(field_mask)  # not a message or not a sequence: the encoder says why
    fields = {normalize_path(f.name): f.name for f in descriptor.fields}
    out = []
    for path in field_mask:
        name = fields.get(normalize_path(path)) if isinstance(path, str) else None
        if name is None:
            raise InvalidParameterError(
                f"operation {index}: field-mask path {path!r} names no field of {descriptor.name}"
            )
        out.append(go_field_name(name))
    return tuple(out)


def for_go_readers(operations: Sequence[Operation]) -> list[Operation]:
    """`operations` with every field mask in the Go field spelling (see :func:`go_mask`)."""
    return [
        op._replace(field_mask=go_mask(op.message, op.field_mask, i)) if op.field_mask else op
        for i, op in enumerate(operations)
    ]
