"""Type catalogs for CLI tests that load one with ``--types tests.catalogs:NAME``."""

from __future__ import annotations

import oplog
from oplog.proto.oplog_test_pb2 import TestUser

USERS_ONLY = oplog.TypeCatalog()
"""The demo's users without its cars and rentals: replaying the demo's log meets unknown types."""
USERS_ONLY.register("user", TestUser, table="users", exclude=("table",))
