"""The Rust codec of the oplog queue. Private: use ``oplog.Queue``."""

from collections.abc import Callable, Iterable
from typing import Any, final

from typing_extensions import Self

from oplog.operation import Operation

__all__ = [
    "QueueWriter",
    "chain_tags",
    "decode_operations",
    "decode_queue",
    "decode_queues",
    "encode_operations",
    "entry_tags",
    "open_own_blobs",
    "pack_array",
    "pack_int8_array",
    "pack_text_columns",
]

_RawOperation = tuple[
    str, bytes | memoryview, int, tuple[str, ...], tuple[str, ...], bytes | None, int
]
"""(type_name, value, op_type, field_mask, null_paths, options, frame_offset) as decoded."""

def encode_operations(operations: Iterable[tuple[Any, ...]], version: str) -> bytes:
    """Encodes a batch of ``oplog.Operation`` into queue bytes in the given format.

    Each operation's message and options are serialized with ``SerializeToString()``. The whole
    batch is validated before anything is encoded.

    Raises:
        oplog.InvalidParameterError: An operation is invalid (including a str that is not valid
            UTF-8, and options that are not an ``oplog.OperationOptions``), or the version is
            unknown.
    """

@final
class QueueWriter:
    """The encoding side of a queue: operations appended to a buffer, taken out as bytes. Each
    call validates what it is given and appends all of it or nothing."""

    def __new__(cls, version: str) -> Self:
        """A writer of the ``"v1"`` or ``"v2"`` format.

        Raises:
            oplog.InvalidParameterError: The version is unknown.
        """

    def add(
        self,
        message: Any,
        type_name: Any,
        op_type: Any,
        field_mask: Any,
        null_paths: Any,
        options: Any,
    ) -> None:
        """Appends one operation given by its parts (what ``Queue.add`` takes).

        Raises:
            oplog.InvalidParameterError: As :func:`encode_operations`.
        """

    def extend(self, operations: Iterable[tuple[Any, ...]]) -> None:
        """Appends a batch of ``oplog.Operation``.

        Raises:
            oplog.InvalidParameterError: As :func:`encode_operations`.
        """

    def take(self) -> bytes:
        """The bytes appended so far; the buffer is emptied."""

    def __len__(self) -> int:
        """How many bytes are buffered."""

def decode_operations(
    data: bytes, start: int, limit: int | None
) -> tuple[list[_RawOperation], int]:
    """Decodes up to ``limit`` frames of ``data`` from offset ``start``, without parsing the
    messages.

    Values of 64 KiB or more are memoryview slices of ``data``; smaller ones are copies.

    Returns:
        The raw operations and the offset after the last frame decoded.

    Raises:
        oplog.DecodeError: The queue is malformed; ``offset`` says where.
    """

def decode_queue(
    data: bytes,
    start: int,
    limit: int | None,
    parsers: dict[str, Callable[[Any], Any]],
) -> tuple[list[Operation], int]:
    """Decodes up to ``limit`` frames of ``data`` from offset ``start`` into ``oplog.Operation``
    objects, parsing each message with ``parsers[type_name]``.

    Every frame is unframed and every type name checked before the first message is parsed;
    nothing is returned unless every operation decodes. Values of 64 KiB or more reach the
    parser as memoryview slices of ``data``.

    Returns:
        The operations and the offset after the last frame decoded.

    Raises:
        oplog.DecodeError: The queue is malformed, or a message does not parse as its type
            (``offset`` is its frame's).
        oplog.UnknownTypeError: A type name is not in ``parsers``.
    """

def decode_queues(
    datas: list[bytes], parsers: dict[str, Callable[[Any], Any]]
) -> tuple[list[Operation], int]:
    """Decodes whole queues (one per entry of a page), each as :func:`decode_queue` from its
    start, into one list of operations; parsers are looked up once per type name.

    Returns:
        The operations of the first ``decoded`` queues, and ``decoded``. When that is fewer
        than all, queue number ``decoded`` does not decode (or is not bytes): decode it alone
        for its error.
    """

def pack_array(items: Iterable[str | bytes | None], bytea: bool) -> bytes:
    """A PostgreSQL binary ``text[]`` (or, with ``bytea``, ``bytea[]``) of ``items``.

    Raises:
        oplog.InvalidParameterError: An element is not str, bytes or None, or is a str that is
            not valid UTF-8; the array or an element is too large for PostgreSQL.
    """

def pack_int8_array(items: list[int]) -> bytes:
    """A PostgreSQL binary ``int8[]`` of ``items``."""

def pack_text_columns(
    messages: list[Any], columns: list[tuple[str, int, Callable[[Any], str | None]]]
) -> list[bytes]:
    """One PostgreSQL binary ``text[]`` per column of ``messages``: column j holds each
    message's value of ``columns[j]`` in text input form.

    A column is ``(attribute, kind, converter)``. Kinds 1 to 4 (str, integer, bool, bytes:
    ``oplog.mapping.text_kind``) read the attribute and format it here; kind 0, and any value
    its kind does not expect (a str holding a NUL, another type), gives the value as
    ``converter(message)`` (a str, or None for NULL), which may raise instead.

    Raises:
        oplog.InvalidParameterError: A converter returned neither str nor None, or a str that
            is not valid UTF-8; an array or element is too large for PostgreSQL.
        Exception: Whatever a converter or attribute access raises.
    """

def chain_tags(
    key: bytes,
    key_id: str,
    aggregates: list[str],
    datas: list[bytes],
    metadata_digests: list[bytes],
    heads: dict[str, tuple[int, bytes]],
) -> tuple[list[int], list[bytes]]:
    """Chains new entries onto their aggregates' heads (see ``oplog.chain``): for each entry in
    order, its sequence (its head's plus one) and its tag (over its head's tag).

    ``heads`` (aggregate name -> (sequence, tag)) must hold every aggregate; it is advanced in
    place.

    Raises:
        oplog.InvalidParameterError: The lists differ in length, an element has the wrong
            type, or an aggregate has no head.
    """

def entry_tags(
    key: bytes,
    key_id: str,
    aggregates: list[str],
    datas: list[bytes],
    metadata_digests: list[bytes],
    seqs: list[int],
    prevs: list[bytes],
) -> list[bytes]:
    """The tag of each stored entry, from its own sequence and previous tag (for verifying).

    Raises:
        oplog.InvalidParameterError: The lists differ in length, or an element has the wrong
            type.
    """

def open_own_blobs(key: bytes, key_info_field: bytes, blobs: list[bytes]) -> list[bytes | None]:
    """The plaintext of each blob laid out exactly as an ``AeadWrapper`` with `key` writes its
    blobs (the sealed part in field 1, then `key_info_field`, nothing else) that authenticates
    under AES-256-GCM; None for every other blob (another layout, a changed bit) and for an
    item that is not exactly bytes.

    Raises:
        oplog.InvalidParameterError: `key` is not 32 bytes.
    """
