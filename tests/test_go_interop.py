"""A database shared with the Go original (HashiCorp Boundary's internal/oplog at be9f25cce1):
its tables adopted in place, its writer's statements accepted, every entry it writes read,
tailed, replayed and verified, and entries written for it in a form it replays correctly.

No Go at test time: the Go side is the facts of ../shared/GO-ORIGINAL.md (its schema, written
here in this project's own SQL, and the statements its writer sends) and the vectors' bytes
(a blob the Go code encrypted, queues the Go code encoded). tests/vectors/README.md says where
they came from.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import oplog
from oplog import schema
from oplog.proto.oplog_test_pb2 import TestUser
from oplog.wrapping import blob_key_id
from tests.db import CATALOG, TEST_TABLES, rows
from tests.golden import load, queue_cases
from tests.pg import Server

# The Go original's tables, from the facts (its migration 01_db.up.sql, all "if not exists").
BOUNDARY_SCHEMA = """
create table if not exists oplog_entry (
  id bigint generated always as identity primary key,
  create_time timestamptz not null default current_timestamp,
  update_time timestamptz not null default current_timestamp,
  version text not null,
  aggregate_name text not null,
  data bytea not null
);
create table if not exists oplog_ticket (
  id bigint generated always as identity primary key,
  create_time timestamptz not null default current_timestamp,
  update_time timestamptz not null default current_timestamp,
  name text not null unique,
  version bigint not null
);
create table if not exists oplog_metadata (
  id bigint generated always as identity primary key,
  create_time timestamptz not null default current_timestamp,
  entry_id bigint not null references oplog_entry (id) on delete cascade on update cascade,
  key text not null,
  value text null
);
create index if not exists boundary_oplog_metadata_key on oplog_metadata (key);
create index if not exists boundary_oplog_metadata_value on oplog_metadata (value);
"""

_VECTOR = load("entry_encryption")["be9f25cce1"]
GO_KEY = bytes.fromhex(_VECTOR["key_hex"])
GO_KEY_ID = _VECTOR["key_id"]
GO_WRAPPER = oplog.AeadWrapper(GO_KEY, GO_KEY_ID)
GO_LOG = oplog.Oplog(GO_WRAPPER, CATALOG)


def _go_queue(name: str) -> bytes:
    """The bytes the Go code encoded for queue case `name` (format be9f25cce1)."""
    (case,) = [c for c in queue_cases() if c["format"] == "be9f25cce1" and c["name"] == name]
    return bytes.fromhex(case["queue_hex"])


def _no_mask_update() -> bytes:
    """A be9f25cce1 UPDATE with no field mask, as the Go Queue.Add accepts and stores it."""
    queue = oplog.Queue(version="v1")
    user = TestUser(id=1, name="Alice Saved", email="saved@example.com", phone_number="555-0199")
    queue.add(user, "user", oplog.OpType.UPDATE)
    return bytes(queue)


def go_entries() -> list[tuple[str, bytes, list[tuple[str, str]]]]:
    """What the Go writer stored, in order: (aggregate, data, metadata rows). The first blob is
    the one the Go code encrypted; the others are Go queues encrypted in the same format."""
    (sample,) = [s for s in _VECTOR["samples"] if s["name"] == "single_user_create_a"]
    return [
        ("users", bytes.fromhex(sample["ct_data_hex"]), [("op", "create"), ("flag", "")]),
        ("users", GO_WRAPPER.encrypt(_go_queue("update_field_mask")), [("op", "update")]),
        ("fleet", GO_WRAPPER.encrypt(_go_queue("delete")), []),
        ("users", GO_WRAPPER.encrypt(_no_mask_update()), [("op", "save")]),
    ]


# What the Go writer's data changes left in the live table (its replay semantics: the mask's
# fields of an UPDATE; every field of an UPDATE without a mask).
LIVE_USERS = [(1, "Alice Saved", "555-0199", "saved@example.com", 0)]


def go_write(conn: psycopg.Connection[Any], aggregate: str, data: bytes, meta: list[Any]) -> int:
    """Writes one entry with the statements the Go writer sends (GO-ORIGINAL.md), in one
    transaction, its ticket made first by InitTicket when missing; returns the entry's id."""
    with conn.transaction():
        ticket = conn.execute(
            'SELECT * FROM "oplog_ticket" WHERE ("oplog_ticket"."name" = %s)'
            ' ORDER BY "oplog_ticket"."id" ASC LIMIT 1',
            (aggregate,),
        ).fetchone()
    if ticket is None:
        with conn.transaction():
            conn.execute(
                'INSERT INTO "oplog_ticket" ("name","version") VALUES (%s,%s)', (aggregate, 1)
            )
    with conn.transaction():
        found = conn.execute(
            'SELECT * FROM "oplog_ticket" WHERE ("oplog_ticket"."name" = %s)'
            ' ORDER BY "oplog_ticket"."id" ASC LIMIT 1',
            (aggregate,),
        ).fetchone()
        assert found is not None
        ticket_id, version = found[0], found[-1]
        row = conn.execute(
            'INSERT INTO "oplog_entry" ("version","aggregate_name","data") VALUES (%s,%s,%s)'
            ' RETURNING "oplog_entry"."id"',
            ("v1", aggregate, data),
        ).fetchone()
        assert row is not None
        entry_id = int(row[0])
        conn.execute(
            'SELECT "create_time", "update_time" FROM "oplog_entry" WHERE (id = %s)', (entry_id,)
        )
        for key, value in meta:
            (meta_id,) = conn.execute(
                'INSERT INTO "oplog_metadata" ("entry_id","key","value") VALUES (%s,%s,%s)'
                ' RETURNING "oplog_metadata"."id"',
                (entry_id, key, value),
            ).fetchone() or (None,)
            conn.execute('SELECT "create_time" FROM "oplog_metadata" WHERE (id = %s)', (meta_id,))
        redeemed = conn.execute(
            'UPDATE "oplog_ticket" SET "version" = %s WHERE "oplog_ticket"."id" = %s'
            " AND ((version = %s))",
            (version + 1, ticket_id, version),
        )
        assert redeemed.rowcount == 1
    return entry_id


def _database(pg: Server, name: str) -> str:
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.execute(f"create database {name}")
    return pg.dsn_for(name)


@pytest.fixture
def boundary_dsn(pg: Server) -> Iterator[str]:
    """A database as the Go original left it: its oplog tables holding its four entries, and
    the live table its data changes went to."""
    dsn = _database(pg, "t_boundary")
    with psycopg.connect(dsn) as conn:
        conn.execute(BOUNDARY_SCHEMA.encode())
        conn.execute(TEST_TABLES.encode())
        conn.execute("insert into users values (%s, %s, %s, %s, %s)", LIVE_USERS[0])
        conn.commit()
        for aggregate, data, meta in go_entries():
            go_write(conn, aggregate, data, meta)
    yield dsn
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_boundary with (force)")


def _check_go_entries(conn: psycopg.Connection[Any]) -> None:
    """The Go entries read, tail, replay and verify like any other."""
    entries = list(GO_LOG.read(conn))
    assert [e.aggregate_name for e in entries] == [a for a, _, _ in go_entries()]
    assert {e.key_id for e in entries} == {GO_KEY_ID}
    assert entries[0].metadata == {"op": ["create"], "flag": []}  # Go's '' is a key, no value
    ops = [[(op.op_type, op.field_mask) for op in e.unmarshal_data(CATALOG)] for e in entries]
    assert ops == [
        [(oplog.OpType.CREATE, ())],
        [(oplog.OpType.UPDATE, ("Name", "Email"))],
        [(oplog.OpType.DELETE, ()), (oplog.OpType.DELETE, ())],
        [(oplog.OpType.UPDATE, ())],
    ]
    conn.commit()
    conn.autocommit = True
    assert [e.id for e, _ in GO_LOG.tail(conn, follow=False)] == [e.id for e in entries]
    conn.autocommit = False
    with conn.transaction(force_rollback=True):
        assert GO_LOG.replay(conn, "_replayed") == 4
        assert rows(conn, "users_replayed") == rows(conn, "users") == LIVE_USERS
    # Untagged (the Go original has no chains): counted, not blamed.
    report = GO_LOG.verify(conn)
    conn.rollback()
    assert (report.problems, report.chained, report.unchained) == ([], 0, 4)


def test_a_database_of_the_go_original_is_adopted_in_place(boundary_dsn: str) -> None:
    """Before adoption reading says the Boundary tables must be adopted; migrate adopts them in
    one transaction (key_id filled from each blob, no entry rewritten or lost), then applies
    every later migration; the Go entries then read, tail, replay and verify."""
    with psycopg.connect(boundary_dsn) as conn:
        before = conn.execute(
            "select id, create_time, data from oplog_entry order by id"
        ).fetchall()
        with pytest.raises(oplog.SchemaError, match="Boundary"):
            list(GO_LOG.read(conn))
        conn.rollback()
        assert schema.boundary_tables(conn) == 4
        assert oplog.migrate(conn) == [m.version for m in schema.migrations()]
        assert schema.boundary_tables(conn) is None
        assert oplog.migrate(conn) == []
        after = conn.execute("select id, create_time, data from oplog_entry order by id").fetchall()
        assert after == before
        _check_go_entries(conn)
        # And the Go writer goes on writing into the adopted tables.
        go_write(conn, "fleet", GO_WRAPPER.encrypt(_go_queue("delete")), [])
        assert len(list(GO_LOG.read(conn))) == 5


def test_the_go_writer_writes_into_an_oplog_database(pg: Server) -> None:
    """An oplog-migrated database takes the Go writer's statements (no key_id sent: it comes
    from the blob; the create and update times read back), and its entries read, tail, replay
    and verify like oplog's own."""
    dsn = _database(pg, "t_go_writer")
    try:
        with psycopg.connect(dsn) as conn:
            oplog.migrate(conn)
            conn.execute(TEST_TABLES.encode())
            conn.execute("insert into users values (%s, %s, %s, %s, %s)", LIVE_USERS[0])
            conn.commit()
            for aggregate, data, meta in go_entries():
                go_write(conn, aggregate, data, meta)
            _check_go_entries(conn)
            # oplog's own entries chain on after the Go writer's, in the same aggregate.
            aggregate = go_entries()[0][0]
            update = oplog.Operation(
                TestUser(id=1, name="n"), "user", oplog.OpType.UPDATE, ("name",)
            )
            GO_LOG.write(conn, aggregate, [update])
            conn.commit()
            go_write(conn, aggregate, GO_WRAPPER.encrypt(_go_queue("delete")), [])
            GO_LOG.write(conn, aggregate, [update])
            conn.commit()
            report = GO_LOG.verify(conn, require_chain=False)
            assert (report.problems, report.chained, report.unchained) == ([], 2, 5)
            assert report.heads[aggregate][0] == 2
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("drop database if exists t_go_writer with (force)")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oplog", *args], env=env, capture_output=True, text=True,
        timeout=120, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip


def test_the_command_says_how_to_adopt_and_adopts(boundary_dsn: str, tmp_path: Path) -> None:
    """Before adoption every command that needs oplog's schema exits 9 naming the Boundary
    tables and `oplog migrate`; `oplog migrate` adopts them and says so; verify then passes."""
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps({"keys": [{"id": GO_KEY_ID, "key": base64.b64encode(GO_KEY).decode()}]})
    )
    keys.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPLOG_")}
    env.update(OPLOG_DSN=boundary_dsn, OPLOG_KEY_FILE=str(keys))
    for command in (["ls"], ["verify"], ["tail"], ["stats"]):
        result = _cli(env, *command)
        assert result.returncode == 9, (command, result.stderr)
        assert "Boundary" in result.stderr
        assert "oplog migrate" in result.stderr
    adopted = _cli(env, "migrate")
    assert adopted.returncode == 0, adopted.stderr
    assert "adopted the Boundary oplog tables: 4 entries" in adopted.stdout
    verified = _cli(env, "verify", "--replay", "--types", "tests.db:CATALOG")
    assert verified.returncode == 0, verified.stderr + verified.stdout


def test_an_update_without_a_mask_replays_as_the_go_original_replays_it(
    conn: psycopg.Connection[Any],
) -> None:
    """A be9f25cce1 UPDATE with no field mask decodes, and replays (one by one and set-based)
    as Go replays it: every non-key column set from the message. Writing one is refused in v2."""
    conn.execute("insert into users values (1, 'Alice', '555-0100', 'alice@example.com', 7)")
    queue = oplog.Queue(_no_mask_update(), catalog=CATALOG)
    (op,) = list(queue)
    assert (op.op_type, op.field_mask, op.null_paths) == (oplog.OpType.UPDATE, (), ())
    writer = oplog.Writer(conn, CATALOG)
    for suffix, how in (("_one", "apply"), ("_many", "apply_many")):
        writer.create_table_like("users", "users" + suffix)
        conn.execute(f"insert into users{suffix} select * from users")
        getattr(oplog.Replayer(writer, suffix), how)([op, op])
        assert rows(conn, "users" + suffix) == LIVE_USERS, how
    with pytest.raises(oplog.InvalidParameterError, match="field-mask paths"):
        oplog.Queue().add(TestUser(id=1), "user", oplog.OpType.UPDATE)
    conn.rollback()


def test_a_key_without_a_value_reads_the_same_on_both_sides(conn: psycopg.Connection[Any]) -> None:
    """A key with no value is stored as one row with a NULL value (the Go original reads it as
    ''); a row with '' (what the Go original writes) reads back as a key without a value; an
    empty value is refused, since it would read back as no value."""
    entry = GO_LOG.write(
        conn, "m", [oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE)], {"flag": []}
    )
    assert conn.execute(
        "select key, value from oplog_metadata where entry_id = %s", (entry.id,)
    ).fetchall() == [("flag", None)]
    conn.execute(
        "insert into oplog_metadata (entry_id, key, value) values (%s, 'go', '')", (entry.id,)
    )
    (read,) = list(GO_LOG.read(conn))
    assert read.metadata == {"flag": [], "go": []}
    with pytest.raises(oplog.InvalidParameterError, match="empty"):
        GO_LOG.write(
            conn, "m", [oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE)], {"k": [""]}
        )
    conn.rollback()


def test_entries_written_for_go_readers_use_the_paths_go_resolves(
    conn: psycopg.Connection[Any],
) -> None:
    """With format_version="v1" a field mask is written in the Go field spelling (be9f25cce1
    matches struct field names, so phone_number would match nothing there); a path naming no
    field, null paths and options are refused, since be9f25cce1 would replay them wrongly."""
    log = oplog.Oplog(GO_WRAPPER, CATALOG, format_version="v1")
    user = TestUser(id=1, phone_number="5", name="n")
    entry = log.write(
        conn, "u", [oplog.Operation(user, "user", oplog.OpType.UPDATE, ("phone_number", "NAME"))]
    )
    (stored,) = list(log.read(conn))
    (op,) = stored.unmarshal_data(CATALOG)
    assert op.field_mask == ("PhoneNumber", "Name")
    assert stored.id == entry.id
    batch = log.write_many(
        conn, [("u", [oplog.Operation(user, "user", oplog.OpType.UPDATE, ("phone_number",))], None)]
    )
    (op,) = next(e for e in log.read(conn) if e.id == batch[0]).unmarshal_data(CATALOG)
    assert op.field_mask == ("PhoneNumber",)
    refused = [
        oplog.Operation(user, "user", oplog.OpType.UPDATE, ("phone",)),
        oplog.Operation(user, "user", oplog.OpType.UPDATE, ("name",), ("email",)),
    ]
    for bad in refused:
        with pytest.raises(oplog.InvalidParameterError):
            log.write(conn, "u", [bad])
    conn.rollback()


def test_the_server_reads_a_blobs_key_id_as_the_client_does(
    conn: psycopg.Connection[Any],
) -> None:
    """oplog_blob_key_id (what fills key_id for the Go writer's inserts) reads the key id the
    Python parser reads, from the Go code's blob and from others; a blob that is not a
    protobuf message is an error, not a guess."""
    blobs = [data for _, data, _ in go_entries()]
    blobs.append(oplog.AeadWrapper.generate("k\u00e9y-2").encrypt(b"x"))
    # Fields before and after key_info, and key_info given twice (the last one counts).
    blobs.append(bytes.fromhex("0a0161" + "2a03" + "1a0161" + "1001" + "2a03" + "1a0162"))
    for blob in blobs:
        row = conn.execute("select oplog_blob_key_id(%s)", (blob,)).fetchone()
        assert row == (blob_key_id(blob),)
    for bad in (b"\x0a\x05ab", b"\x0a", b"\x0f"):
        with pytest.raises(oplog.DecryptError):
            blob_key_id(bad)
        with pytest.raises(psycopg.errors.InvalidBinaryRepresentation):
            conn.execute("select oplog_blob_key_id(%s)", (bad,))
        conn.rollback()
