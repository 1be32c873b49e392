"""Benchmark configuration: fixed corpora are built once, outside the timed loops."""

from __future__ import annotations

import pytest

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from tests.golden import CATALOG

CORPUS_SIZE = 10_000


def _corpus(n: int) -> list[oplog.Operation]:
    ops: list[oplog.Operation] = []
    for i in range(n // 2):
        ops.append(
            oplog.Operation(
                TestUser(id=i, name=f"user {i}", email=f"u{i}@example.com", phone_number="555"),
                "user",
                oplog.OpType.CREATE,
            )
        )
        ops.append(
            oplog.Operation(
                TestCar(id=i, model="Model T"), "car", oplog.OpType.UPDATE, ("model",), ("mpg",)
            )
        )
    return ops


@pytest.fixture(scope="session")
def corpus() -> list[oplog.Operation]:
    """10,000 small operations: alternating user CREATEs and car UPDATEs with masks."""
    return _corpus(CORPUS_SIZE)


@pytest.fixture(scope="session")
def corpus_bytes(corpus: list[oplog.Operation]) -> bytes:
    """The corpus as a v2 queue."""
    q = oplog.Queue()
    q.extend(corpus)
    return bytes(q)


@pytest.fixture(scope="session")
def catalog() -> oplog.TypeCatalog:
    """The vectors' catalog."""
    return CATALOG
