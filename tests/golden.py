"""The one loader of the Go test vectors in tests/vectors/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from oplog.queue import Version

VECTORS = Path(__file__).parent / "vectors"

MESSAGES: dict[str, type[Message]] = {
    "TestUser": TestUser,
    "TestCar": TestCar,
    "TestRental": TestRental,
}

# The catalog every vector was written with.
CATALOG = oplog.TypeCatalog({"user": TestUser, "car": TestCar, "rental": TestRental})

# Go's queue formats and this library's names for them.
VERSIONS: dict[str, Version] = {"be9f25cce1": "v1", "head": "v2"}


@cache
def load(name: str) -> Any:
    """The parsed JSON of `tests/vectors/<name>.json`."""
    with (VECTORS / f"{name}.json").open() as f:
        return json.load(f)


def queue_cases() -> list[dict[str, Any]]:
    """Every queue case, each with its format and its adds and removes."""
    cases: list[dict[str, Any]] = load("queue")["cases"]
    return cases


def message(type_name: str, fields: dict[str, Any]) -> Message:
    """A message of the vectors' catalog built from a case's field dict."""
    return CATALOG.get(type_name)(**fields)
