"""Entries and the Oplog front door: write, read back, decrypt, decode, replay."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

import oplog
from oplog.entry import entries_from_rows
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from tests.db import CATALOG, WRAPPER, count, rows


@pytest.fixture
def log() -> oplog.Oplog:
    """The front door over the test tables."""
    return oplog.Oplog(WRAPPER, CATALOG)


def _create_user(conn: psycopg.Connection[Any], log: oplog.Oplog, name: str) -> TestUser:
    user = TestUser(name=name)
    oplog.Writer(conn, CATALOG).create(user)
    log.write(conn, "users", [oplog.Operation(user, "user", oplog.OpType.CREATE)])
    return user


def test_write_entry_with_stores_an_encrypted_entry(conn: psycopg.Connection[Any]) -> None:
    """write_entry_with encodes, encrypts, redeems and inserts; the row holds ciphertext."""
    ticketer = oplog.Ticketer(conn)
    ticketer.init_ticket("users")
    ticket = ticketer.get_ticket("users")
    entry = oplog.Entry("users", wrapper=WRAPPER, ticketer=ticketer)
    user = TestUser(id=1, name="Alice")
    entry.write_entry_with(
        oplog.Writer(conn, CATALOG), ticket, oplog.Operation(user, "user", oplog.OpType.CREATE)
    )
    assert entry.id == 1
    assert entry.encrypted
    row = conn.execute("select version, aggregate_name, data, key_id from oplog_entry").fetchone()
    assert row is not None
    assert row[:2] == ("v2", "users")
    assert row[3] == "test-key-1"
    assert b"Alice" not in bytes(row[2])
    assert ticketer.get_ticket("users").version == 2
    entry.decrypt_data()
    assert entry.unmarshal_data(CATALOG) == [oplog.Operation(user, "user", oplog.OpType.CREATE)]


def test_writing_twice_replaces_the_data_instead_of_appending(
    conn: psycopg.Connection[Any],
) -> None:
    """Unlike the Go original, a second write_entry_with does not append to earlier data."""
    ticketer = oplog.Ticketer(conn)
    ticketer.init_ticket("users")
    entry = oplog.Entry("users", wrapper=WRAPPER, ticketer=ticketer)
    op = oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)
    writer = oplog.Writer(conn, CATALOG)
    entry.write_entry_with(writer, ticketer.get_ticket("users"), op)
    entry.write_entry_with(writer, ticketer.get_ticket("users"), op)
    entry.decrypt_data()
    assert entry.unmarshal_data(CATALOG) == [op]


def test_a_stale_ticket_inserts_no_entry(conn: psycopg.Connection[Any]) -> None:
    """Writing with an already-redeemed ticket raises TicketConflictError and inserts nothing,
    burning no entry id."""
    ticketer = oplog.Ticketer(conn)
    ticketer.init_ticket("users")
    ticket = ticketer.get_ticket("users")
    ticketer.redeem(ticket)
    entry = oplog.Entry("users", wrapper=WRAPPER, ticketer=ticketer)
    op = oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)
    with pytest.raises(oplog.TicketConflictError):
        entry.write_entry_with(oplog.Writer(conn, CATALOG), ticket, op)
    assert count(conn, "oplog_entry") == 0
    fresh = oplog.Entry("users", wrapper=WRAPPER, ticketer=ticketer)
    fresh.write_entry_with(oplog.Writer(conn, CATALOG), ticketer.get_ticket("users"), op)
    assert fresh.id == 1, "the failed write consumed no identity value"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aggregate_name": ""}, "aggregate name"),
        ({"aggregate_name": "users", "metadata": {"": ["x"]}}, "metadata keys"),
        ({"aggregate_name": "users", "metadata": {"k": [1]}}, "non-str value"),
        ({"aggregate_name": "users", "format_version": "v3"}, "v3"),
        ({"aggregate_name": "users", "metadata": {"k": "a\x00b"}}, "NUL"),
        ({"aggregate_name": "users\x00"}, "NUL"),
    ],
)
def test_invalid_entries_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    """Entry() validates its aggregate name, metadata and format version."""
    with pytest.raises(oplog.InvalidParameterError, match=match):
        oplog.Entry(**kwargs)


def test_write_needs_operations_a_matching_ticket_and_a_wrapper(
    conn: psycopg.Connection[Any],
) -> None:
    """No operations, the wrong aggregate's ticket, or no wrapper: nothing is written."""
    ticketer = oplog.Ticketer(conn)
    ticketer.init_ticket("users")
    ticketer.init_ticket("cars")
    writer = oplog.Writer(conn, CATALOG)
    op = oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)
    entry = oplog.Entry("users", wrapper=WRAPPER, ticketer=ticketer)
    with pytest.raises(oplog.InvalidParameterError, match="at least one"):
        entry.write_entry_with(writer, ticketer.get_ticket("users"))
    with pytest.raises(oplog.InvalidParameterError, match="'users'"):
        entry.write_entry_with(writer, ticketer.get_ticket("cars"), op)
    bare = oplog.Entry("users", ticketer=ticketer)
    with pytest.raises(oplog.InvalidParameterError, match="wrapper"):
        bare.write_entry_with(writer, ticketer.get_ticket("users"), op)
    assert count(conn, "oplog_entry") == 0


def test_metadata_round_trips_multi_valued_and_key_only(
    conn: psycopg.Connection[Any], log: oplog.Oplog
) -> None:
    """Metadata with several values per key and keys without values reads back the same."""
    metadata = {"deployment": ["amex", "visa"], "key-only": [], "single": "one"}
    op = oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)
    log.write(conn, "users", [op], metadata=metadata)
    (entry,) = log.read(conn)
    assert entry.metadata == {"deployment": ["amex", "visa"], "key-only": [], "single": ["one"]}
    assert rows(conn, "oplog_metadata", "id")[1][3:] == ("deployment", "visa")


def test_read_returns_decrypted_entries_in_order_with_filters(
    conn: psycopg.Connection[Any], log: oplog.Oplog
) -> None:
    """read() yields entries by id, decrypted, filtered by aggregate, after_id and limit."""
    for i in range(7):
        name = "users" if i % 2 == 0 else "cars"
        msg = TestUser(id=i) if name == "users" else TestCar(id=i)
        log.write(conn, name, [oplog.Operation(msg, "user" if name == "users" else "car", 1)])  # type: ignore[arg-type]
    every = list(log.read(conn))
    assert [e.id for e in every] == list(range(1, 8))
    assert all(not e.encrypted for e in every)
    assert [e.id for e in log.read(conn, aggregate_name="cars")] == [2, 4, 6]
    assert [e.id for e in log.read(conn, after_id=5)] == [6, 7]
    assert [e.id for e in log.read(conn, limit=2)] == [1, 2]
    assert [e.id for e in log.read(conn, aggregate_name="users", after_id=1, limit=2)] == [3, 5]
    ops = every[1].unmarshal_data(CATALOG)
    assert ops == [oplog.Operation(TestCar(id=1), "car", oplog.OpType.CREATE)]


def test_read_pages_through_long_logs(conn: psycopg.Connection[Any], log: oplog.Oplog) -> None:
    """More entries than a page are all read, in order."""
    for i in range(1203):
        log.write(conn, "users", [oplog.Operation(TestUser(id=i), "user", oplog.OpType.DELETE)])
    assert [e.id for e in log.read(conn)] == list(range(1, 1204))


def test_entries_from_another_key_need_that_key(
    conn: psycopg.Connection[Any], log: oplog.Oplog
) -> None:
    """Reading entries written with a rotated-out key fails without it and works with it."""
    op = oplog.Operation(TestUser(id=1), "user", oplog.OpType.CREATE)
    log.write(conn, "users", [op])
    new = oplog.AeadWrapper.generate("test-key-2")
    with pytest.raises(oplog.DecryptError, match="test-key-1"):
        list(oplog.Oplog(new, CATALOG).read(conn))
    rotated = oplog.Oplog(oplog.MultiWrapper(new, WRAPPER), CATALOG)
    rotated.write(conn, "users", [op])
    assert [e.key_id for e in rotated.read(conn)] == ["test-key-1", "test-key-2"]


class _Kms:
    """A wrapper of one's own (not an AeadWrapper): it decrypts every blob itself."""

    key_id = "kms"

    def encrypt(self, plaintext: bytes) -> bytes:
        return b"kms:" + plaintext[::-1]

    def decrypt(self, blob: bytes) -> bytes:
        if not blob.startswith(b"kms:"):
            raise oplog.DecryptError("not a kms blob")
        return blob[4:][::-1]


@pytest.mark.parametrize("tamper", [False, True])
def test_a_page_of_stored_entries_decrypts_each_by_its_key(tamper: bool) -> None:
    """A page's blobs are decrypted in one loop where the primary AES key wrote them; a blob
    of an older key, or of a wrapper of one's own, by its wrapper; a blob that does not
    decrypt is an error naming its entry. Each entry keeps its blob and its metadata."""
    old, new = oplog.AeadWrapper(bytes(32), "old"), oplog.AeadWrapper.generate("new")
    wrappers = {"new": new, "old": old}
    stamp = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    keys = ["new", "old", "new", "new"]
    blobs = [wrappers[k].encrypt(f"entry {i}".encode()) for i, k in enumerate(keys, 1)]
    if tamper:
        blobs[2] = blobs[2][:-40] + bytes([blobs[2][-40] ^ 1]) + blobs[2][-39:]
    page = [(i, stamp, "v2", f"a{i}", blob, k) for i, (blob, k) in enumerate(zip(blobs, keys), 1)]
    metadata = [(2, "k", "v"), (4, "k", "w")]
    for wrapper in (oplog.MultiWrapper(new, old), oplog.MultiWrapper(_Kms(), new, old)):
        if tamper:
            with pytest.raises(oplog.DecryptError, match=r"^entry 3 does not decrypt"):
                entries_from_rows(page, metadata, wrapper)
            continue
        entries = entries_from_rows(page, metadata, wrapper)
        assert [(e.id, e.data, e.encrypted, e.blob) for e in entries] == [
            (i, f"entry {i}".encode(), False, blob) for i, blob in enumerate(blobs, 1)
        ]
        assert [e.metadata for e in entries] == [{}, {"k": ["v"]}, {}, {"k": ["w"]}]
        assert [(e.key_id, e.create_time, e.aggregate_name) for e in entries] == [
            (k, stamp, f"a{i}") for i, k in enumerate(keys, 1)
        ]


def test_replay_reproduces_the_tables(conn: psycopg.Connection[Any], log: oplog.Oplog) -> None:
    """Replaying the log into suffix tables gives tables equal to the live ones."""
    writer = oplog.Writer(conn, CATALOG)
    alice = _create_user(conn, log, "Alice")
    _create_user(conn, log, "Bob")
    change = TestUser(id=alice.id, name="Alicia")
    writer.update(change, ["name"], ["email"])
    log.write(
        conn, "users", [oplog.Operation(change, "user", oplog.OpType.UPDATE, ("name",), ("email",))]
    )
    cars = [TestCar(model="T"), TestCar(model="S")]
    writer.create_items(cars)
    log.write(conn, "cars", [oplog.Operation(c, "car", oplog.OpType.CREATE_ITEMS) for c in cars])
    writer.delete(cars[0])
    log.write(conn, "cars", [oplog.Operation(cars[0], "car", oplog.OpType.DELETE)])
    assert log.replay(conn) == 5
    assert rows(conn, "users_replay") == rows(conn, "users")
    assert rows(conn, "cars_replay") == rows(conn, "cars")


def test_entry_replay_decrypts_first(conn: psycopg.Connection[Any], log: oplog.Oplog) -> None:
    """Entry.replay on a stored (encrypted) entry decrypts and applies it."""
    user = _create_user(conn, log, "Carol")
    entry = log.write(conn, "users", [oplog.Operation(user, "user", oplog.OpType.DELETE)])
    assert entry.encrypted
    first = next(log.read(conn))
    first.replay(oplog.Writer(conn, CATALOG), CATALOG, table_suffix="_r")
    entry.replay(oplog.Writer(conn, CATALOG), CATALOG, table_suffix="_r")
    assert not entry.encrypted
    assert rows(conn, "users_r") == []


@pytest.mark.parametrize("suffix", ['"; drop table users; --', " x", "_é", "_ü" * 20])
def test_hostile_suffixes_are_quoted_or_rejected(
    conn: psycopg.Connection[Any], log: oplog.Oplog, suffix: str
) -> None:
    """A suffix is part of a quoted identifier, or rejected when the name would be too long."""
    _create_user(conn, log, "Dan")
    if len(("users" + suffix).encode()) > 63:
        with pytest.raises(oplog.InvalidParameterError, match="63 bytes"):
            log.replay(conn, table_suffix=suffix)
    else:
        assert log.replay(conn, table_suffix=suffix) == 1
        assert rows(conn, f'"users{suffix.replace(chr(34), chr(34) * 2)}"') == rows(conn, "users")
    assert count(conn, "users") == 1


def test_run_in_transaction_commits_and_retries_conflicts(connect: Any, log: oplog.Oplog) -> None:
    """run_in_transaction commits fn's work; on a conflict it rolls back and runs fn again."""
    # REPEATABLE READ: the snapshot taken by fn's first statement still shows the old ticket
    # after another writer commits, so the redeem detects the conflict.
    a = connect()
    a.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    b = connect(autocommit=True)
    oplog.Ticketer(b).init_ticket("users")
    attempts: list[int] = []

    def work(c: psycopg.Connection[Any]) -> int:
        attempts.append(1)
        user = TestUser(name="r")
        oplog.Writer(c, CATALOG).create(user)
        if len(attempts) == 1:
            log.write(b, "users", [oplog.Operation(TestUser(id=99), "user", oplog.OpType.CREATE)])
        entry = log.write(c, "users", [oplog.Operation(user, "user", oplog.OpType.CREATE)])
        assert entry.id is not None
        return entry.id

    retries: list[int] = []
    entry_id = oplog.run_in_transaction(a, work, on_retry=lambda n, e: retries.append(n))
    assert len(attempts) == 2
    assert retries == [1]
    assert count(a, "users") == 1
    (entry,) = log.read(a, after_id=entry_id - 1)
    assert len(entry.unmarshal_data(CATALOG)) == 1


def test_run_in_transaction_propagates_other_errors_and_needs_an_idle_connection(
    conn: psycopg.Connection[Any],
) -> None:
    """Only conflicts are retried; a connection inside a transaction is refused."""
    calls: list[int] = []

    def boom(c: psycopg.Connection[Any]) -> None:
        calls.append(1)
        raise KeyError("boom")

    conn.commit()
    with pytest.raises(KeyError):
        oplog.run_in_transaction(conn, boom)
    assert calls == [1]
    conn.execute("select 1")
    with pytest.raises(oplog.InvalidParameterError, match="no transaction open"):
        oplog.run_in_transaction(conn, boom)
