"""TypeCatalog: names <-> message classes, and table mappings."""

from __future__ import annotations

import pytest
from google.protobuf.wrappers_pb2 import StringValue

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser


def test_names_and_classes_map_both_ways() -> None:
    """get() finds the class of a name; name_of() the name of a class or an instance."""
    catalog = oplog.TypeCatalog({"user": TestUser, "car": TestCar})
    assert catalog.get("user") is TestUser
    assert catalog.name_of(TestCar) == "car"
    assert catalog.name_of(TestCar(id=1)) == "car"
    assert "user" in catalog
    assert sorted(catalog) == ["car", "user"]
    assert len(catalog) == 2


def test_unknown_names_and_classes_raise_unknown_type_error() -> None:
    """Lookups of what is not registered raise UnknownTypeError, which is also a KeyError."""
    catalog = oplog.TypeCatalog({"user": TestUser})
    with pytest.raises(oplog.UnknownTypeError, match="'car' is not in the catalog"):
        catalog.get("car")
    with pytest.raises(KeyError):
        catalog.name_of(TestCar())
    with pytest.raises(oplog.UnknownTypeError):
        catalog.table_of(TestCar)


def test_table_mapping_defaults_and_overrides() -> None:
    """The table defaults to the type name with primary key id; register() overrides both."""
    catalog = oplog.TypeCatalog({"user": TestUser})
    catalog.register("car", TestCar, table="cars", primary_key=("id",), exclude=("table",))
    catalog.register("rental", TestRental, primary_key=["user_id", "car_id"])
    assert catalog.table_of(TestUser) == oplog.Table("user", ("id",), ())
    assert catalog.table_of(TestCar()) == oplog.Table("cars", ("id",), ("table",))
    assert catalog.table_of(TestRental).primary_key == ("user_id", "car_id")


def test_a_message_without_an_id_has_no_default_primary_key() -> None:
    """Without an id field and without primary_key=, the table has an empty primary key."""
    catalog = oplog.TypeCatalog({"rental": TestRental})
    assert catalog.table_of(TestRental).primary_key == ()


def test_registering_again_is_idempotent_but_conflicts_are_errors() -> None:
    """Same name and class again is fine; a name or class already taken by another is not."""
    catalog = oplog.TypeCatalog({"user": TestUser})
    catalog.register("user", TestUser, table="users")
    assert catalog.table_of(TestUser).name == "users"
    with pytest.raises(oplog.InvalidParameterError, match="already registered for TestUser"):
        catalog.register("user", TestCar)
    with pytest.raises(oplog.InvalidParameterError, match="already registered as 'user'"):
        catalog.register("person", TestUser)


@pytest.mark.parametrize(
    ("name", "cls", "kwargs", "match"),
    [
        ("", TestUser, {}, "non-empty str"),
        ("user", int, {}, "not a protobuf message class"),
        ("user", TestUser(), {}, "not a protobuf message class"),
        ("user", TestUser, {"primary_key": ("uid",)}, "no field 'uid'"),
        ("user", TestUser, {"exclude": ("tables",)}, "no field 'tables'"),
        ("user", TestUser, {"table": ""}, "non-empty str"),
        ("user", TestUser, {"table": "x\x00y"}, "NUL"),
        ("user", TestUser, {"table": "é" * 32}, "63 bytes"),
    ],
)
def test_invalid_registrations_raise_invalid_parameter(
    name: str, cls: object, kwargs: dict[str, object], match: str
) -> None:
    """Each invalid registration raises InvalidParameterError and registers nothing."""
    catalog = oplog.TypeCatalog()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        catalog.register(name, cls, **kwargs)  # type: ignore[arg-type]
    assert len(catalog) == 0


def test_a_63_byte_table_name_is_accepted() -> None:
    """PostgreSQL's identifier limit is 63 bytes, inclusive."""
    catalog = oplog.TypeCatalog()
    catalog.register("v", StringValue, table="t" * 63)
    assert catalog.table_of(StringValue).name == "t" * 63


def test_repr_lists_the_registrations() -> None:
    """repr() shows each name and class."""
    assert repr(oplog.TypeCatalog({"user": TestUser})) == "TypeCatalog({'user': TestUser})"
