"""The exception hierarchy of DESIGN.md §3."""

from __future__ import annotations

import pytest

import oplog
from oplog import _core


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (oplog.InvalidParameterError, (oplog.OplogError, ValueError)),
        (oplog.DecodeError, (oplog.OplogError, ValueError)),
        (oplog.UnknownTypeError, (oplog.OplogError, KeyError)),
        (oplog.DecryptError, (oplog.OplogError,)),
        (oplog.TicketNotFoundError, (oplog.OplogError,)),
        (oplog.TicketConflictError, (oplog.OplogError,)),
        (oplog.SchemaError, (oplog.InvalidParameterError,)),
        (oplog.KeyFileError, (oplog.OplogError,)),
        (oplog.EmbeddedServerError, (oplog.OplogError,)),
    ],
)
def test_each_error_has_its_documented_bases(cls: type, bases: tuple[type, ...]) -> None:
    """Every error derives from OplogError and the builtin its meaning matches."""
    for base in bases:
        assert issubclass(cls, base)
    assert issubclass(oplog.OplogError, Exception)


def test_ticket_already_redeemed_is_an_alias() -> None:
    """TicketAlreadyRedeemedError (the Go name) is TicketConflictError."""
    assert oplog.TicketAlreadyRedeemedError is oplog.TicketConflictError


def test_rust_errors_arrive_as_the_python_classes() -> None:
    """The Rust core raises oplog.errors classes themselves, with the offset attribute set."""
    with pytest.raises(oplog.DecodeError) as info:
        _core.decode_operations(b"\x01\x00\x00\x00", 0, None)
    assert type(info.value) is oplog.DecodeError
    assert info.value.offset == 0
    assert str(info.value) == "frame at offset 0 claims 1 bytes but only 0 remain"
    with pytest.raises(oplog.InvalidParameterError, match="unknown queue format"):
        _core.encode_operations([], "v9")


def test_a_serializer_exception_propagates_unchanged() -> None:
    """An exception raised by a message's own serializer propagates unchanged."""

    class Exploding:
        def SerializeToString(self) -> bytes:
            raise RuntimeError("boom")

    op = oplog.Operation(Exploding(), "user", oplog.OpType.CREATE)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="boom"):
        _core.encode_operations([op], "v2")


def test_every_error_class_lives_in_errors_and_is_exported() -> None:
    """Every OplogError subclass is defined in oplog.errors and importable from oplog; the
    modules that raise KeyFileError and EmbeddedServerError use those very classes."""
    from oplog import embedded, errors, keyfile

    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    for cls in classes:
        assert cls.__module__ == "oplog.errors"
        assert getattr(oplog, cls.__name__) is cls
    assert keyfile.KeyFileError is oplog.KeyFileError
    assert embedded.EmbeddedServerError is oplog.EmbeddedServerError
