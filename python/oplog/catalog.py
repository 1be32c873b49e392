"""The type catalog: names for protobuf message classes, and the tables they map to."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from google.protobuf.message import Message

from oplog.errors import InvalidParameterError, UnknownTypeError

__all__ = ["Table", "TypeCatalog"]

# PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63


class Table(NamedTuple):
    """Where a message type's rows live.

    Attributes:
        name: The table name (unqualified; resolved through the connection's search_path).
        primary_key: The proto field names that form the primary key (may be empty).
        exclude: Proto field names that are not columns.
    """

    name: str
    primary_key: tuple[str, ...]
    exclude: tuple[str, ...]


def check_identifier(name: object, what: str) -> str:
    """Returns `name` if PostgreSQL can hold it as an identifier unchanged.

    Raises:
        InvalidParameterError: `name` is not a str, is empty, contains NUL, or is longer than
            63 bytes in UTF-8 (PostgreSQL would silently truncate it).
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"{what} must be a non-empty str, not {name!r}")
    if "\x00" in name:
        raise InvalidParameterError(f"{what} {name!r} contains a NUL character")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidParameterError(
            f"{what} {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes, PostgreSQL's limit"
        )
    return name


class TypeCatalog:
    """Maps type names (as written in entries) to protobuf message classes, and back.

    Args:
        types: Initial ``name -> message class`` registrations, with default table mappings.

    Raises:
        InvalidParameterError: A name or class is invalid or registered twice.
    """

    __slots__ = ("_classes", "_names", "_parsers", "_tables")

    def __init__(self, types: Mapping[str, type[Message]] | None = None) -> None:
        self._classes: dict[str, type[Message]] = {}
        self._names: dict[type[Message], str] = {}
        self._tables: dict[str, Table] = {}
        # name -> cls.FromString, looked up once per decoded operation.
        self._parsers: dict[str, Callable[[Any], Message]] = {}
        for name, cls in (types or {}).items():
            self.register(name, cls)

    def register(
        self,
        name: str,
        cls: type[Message],
        *,
        table: str | None = None,
        primary_key: tuple[str, ...] | list[str] | None = None,
        exclude: tuple[str, ...] | list[str] = (),
    ) -> None:
        """Registers a message class under a type name.

        Registering the same name and class again replaces the table mapping.

        Args:
            name: The type name written in entries, e.g. ``"user"``.
            cls: A protobuf message class.
            table: Its table; defaults to `name`.
            primary_key: Proto field names forming the primary key; defaults to ``("id",)``
                when the message has an ``id`` field, else none (such a type can be created
                but not updated or deleted by the writer until a key is given).
            exclude: Proto field names that are not table columns.

        Raises:
            InvalidParameterError: `cls` is not a message class; the name or the class is already
                registered with another partner; a table or field name is invalid.
        """
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(f"type name must be a non-empty str, not {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise InvalidParameterError(f"{cls!r} is not a protobuf message class")
        known = self._classes.get(name)
        if known is not None and known is not cls:
            raise InvalidParameterError(
                f"type name {name!r} is already registered for {known.__qualname__}"
            )
        other = self._names.get(cls)
        if other is not None and other != name:
            raise InvalidParameterError(f"{cls.__qualname__} is already registered as {other!r}")
        fields = set(cls.DESCRIPTOR.fields_by_name)
        if primary_key is None:
            primary_key = ("id",) if "id" in fields else ()
        pk = tuple(primary_key)
        excluded = tuple(exclude)
        for field in (*pk, *excluded):
            if field not in fields:
                raise InvalidParameterError(f"{cls.__qualname__} has no field {field!r}")
        table_name = check_identifier(name if table is None else table, "table name")
        self._classes[name] = cls
        self._names[cls] = name
        self._parsers[name] = cls.FromString
        self._tables[name] = Table(table_name, pk, excluded)

    def get(self, name: str) -> type[Message]:
        """The message class registered under `name`.

        Raises:
            UnknownTypeError: No class is registered under `name`.
        """
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise UnknownTypeError(f"type name {name!r} is not in the catalog") from None

    def name_of(self, message: Message | type[Message]) -> str:
        """The type name of a message or message class.

        Raises:
            UnknownTypeError: The class is not in the catalog.
        """
        cls = message if isinstance(message, type) else type(message)
        try:
            return self._names[cls]
        except (KeyError, TypeError):
            raise UnknownTypeError(
                f"{getattr(cls, '__qualname__', cls)!r} is not in the catalog"
            ) from None

    def table_of(self, message: Message | type[Message]) -> Table:
        """The table a message (or message class) maps to.

        Raises:
            UnknownTypeError: The class is not in the catalog.
        """
        return self._tables[self.name_of(message)]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n!r}: {c.__qualname__}" for n, c in self._classes.items())
        return f"TypeCatalog({{{inner}}})"
