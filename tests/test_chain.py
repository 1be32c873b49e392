"""Tamper evidence (oplog.chain): every kind of tampering the issue lists is found and named,
by the API and the CLI; an untampered log verifies clean; entries without tags are counted,
not blamed, unless a chain is required; saved heads catch a truncation the database hides."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import oplog
from oplog import _core, aio
from oplog.chain import EMPTY_METADATA, SavedHeads, metadata_digest, tag_key
from oplog.proto.oplog_test_pb2 import TestUser
from tests import workers
from tests.db import CATALOG, KEY, TEST_TABLES, UNCHAINED, WRAPPER, batch_items, user_create
from tests.pg import Server

LOG = oplog.Oplog(WRAPPER, CATALOG)


def _write_log(conn: psycopg.Connection[Any]) -> None:
    """Entries of three aggregates by every path that tags: write (with and without metadata),
    write_many (small and chunked), apply."""
    for i in range(3):
        LOG.write(conn, "a", [user_create(f"a{i}")], {"k": ["v", str(i)]} if i % 2 else None)
        LOG.write(conn, "b", [user_create(f"b{i}")])
        conn.commit()
    LOG.write_many(conn, batch_items(6, ["a", "b", "c"]))
    conn.commit()
    LOG.write_many(conn, batch_items(300, ["c", "d"]))
    conn.commit()
    user = TestUser(id=10_000, name="applied")
    LOG.apply(conn, "c", [oplog.Operation(user, "user", oplog.OpType.CREATE)], {"m": "1"})
    conn.commit()


def _ids(conn: psycopg.Connection[Any], aggregate: str) -> list[int]:
    """The ids of `aggregate`'s entries in chain order."""
    found = conn.execute(
        "select id from oplog_entry where aggregate_name = %s order by chain_seq", (aggregate,)
    ).fetchall()
    return [row[0] for row in found]


def _tamper(conn: psycopg.Connection[Any], *statements: str) -> None:
    """Runs `statements` as a table owner would: with the immutability triggers off."""
    with conn.transaction():
        conn.execute("alter table oplog_entry disable trigger oplog_entry_immutable")
        conn.execute("alter table oplog_metadata disable trigger oplog_metadata_immutable")
        for statement in statements:
            conn.execute(statement)
        conn.execute("alter table oplog_entry enable trigger oplog_entry_immutable")
        conn.execute("alter table oplog_metadata enable trigger oplog_metadata_immutable")
    conn.commit()


def _found(report: oplog.VerifyReport) -> set[tuple[str, int | None, str | None]]:
    return {(p.kind, p.entry, p.aggregate) for p in report.problems}


# Each case: the tampering (given the ids of aggregates a, b, c) and what verify must find
# (kind, entry or None, aggregate or None); every finding listed must be there.
CASES: dict[str, tuple[Callable[[dict[str, list[int]]], list[str]], Callable[..., set[Any]]]] = {
    "a changed data byte": (
        lambda ids: [
            "update oplog_entry set data = overlay(data placing"
            " set_byte(substring(data from 20 for 1), 0, get_byte(data, 19) # 1) from 20 for 1),"
            f" xact_id = pg_current_xact_id() where id = {ids['a'][1]}"
        ],
        lambda ids: {("undecryptable", ids["a"][1], "a"), ("tag", ids["a"][1], "a")},
    ),
    "a changed key_id": (
        lambda ids: [
            "update oplog_entry set key_id = 'other', xact_id = pg_current_xact_id()"
            f" where id = {ids['a'][2]}"
        ],
        lambda ids: {("tag", ids["a"][2], "a")},
    ),
    "an entry moved to another aggregate": (
        lambda ids: [
            "update oplog_entry set aggregate_name = 'b', xact_id = pg_current_xact_id()"
            f" where id = {ids['a'][1]}"
        ],
        lambda ids: {("missing", ids["a"][2], "a"), ("tag", ids["a"][1], "b")},
    ),
    "a blob copied over another": (
        lambda ids: [
            "update oplog_entry set data = (select data from oplog_entry where id ="
            f" {ids['a'][0]}), xact_id = pg_current_xact_id() where id = {ids['a'][3]}"
        ],
        lambda ids: {("copy", ids["a"][3], None), ("tag", ids["a"][3], "a")},
    ),
    "a forged entry re-inserted from a stored one": (
        lambda ids: [
            "insert into oplog_entry (id, version, aggregate_name, data, key_id, chain_seq,"
            " chain_tag) overriding system value select 100000, version, 'b', data, key_id,"
            f" chain_seq, chain_tag from oplog_entry where id = {ids['a'][0]}"
        ],
        lambda ids: {("copy", 100000, None), ("sequence", 100000, "b")},
    ),
    "an inserted entry without a tag": (
        lambda ids: [
            "insert into oplog_entry (id, version, aggregate_name, data, key_id)"
            " overriding system value select 100000, version, 'a', data, key_id"
            f" from oplog_entry where id = {ids['b'][0]}"
        ],
        lambda ids: {("copy", 100000, None)},
    ),
    "changed metadata": (
        lambda ids: [f"update oplog_metadata set value = 'x' where entry_id = {ids['a'][1]}"],
        lambda ids: {("tag", ids["a"][1], "a")},
    ),
    "added metadata": (
        lambda ids: [
            f"insert into oplog_metadata (entry_id, key, value) values ({ids['b'][1]}, 'k', 'v')"
        ],
        lambda ids: {("tag", ids["b"][1], "b")},
    ),
    "removed metadata": (
        lambda ids: [f"delete from oplog_metadata where entry_id = {ids['c'][-1]}"],
        lambda ids: {("tag", ids["c"][-1], "c")},
    ),
    "an entry deleted in the middle": (
        lambda ids: [f"delete from oplog_entry where id = {ids['b'][1]}"],
        lambda ids: {("missing", ids["b"][2], "b")},
    ),
    "two entries swapped": (
        # Their contents (and metadata) trade ids: each is whole, but their order is not.
        lambda ids: [
            "update oplog_entry e set data = o.data, key_id = o.key_id, chain_seq = o.chain_seq,"
            " chain_tag = o.chain_tag, xact_id = pg_current_xact_id() from oplog_entry o"
            f" where (e.id, o.id) in (({ids['a'][1]}, {ids['a'][2]}),"
            f" ({ids['a'][2]}, {ids['a'][1]}))",
            f"update oplog_metadata set entry_id = {ids['a'][1]} + {ids['a'][2]} - entry_id"
            f" where entry_id in ({ids['a'][1]}, {ids['a'][2]})",
        ],
        lambda ids: {("order", ids["a"][1], "a")},
    ),
    "the newest entries deleted": (
        lambda ids: [f"delete from oplog_entry where id in ({ids['d'][-1]}, {ids['d'][-2]})"],
        lambda ids: {("truncated", None, "d")},
    ),
    "a head changed": (
        lambda ids: ["update oplog_chain_head set tag = '\\x00' where aggregate_name = 'a'"],
        lambda ids: {("head", None, "a")},
    ),
}


@pytest.fixture
def written(conn: psycopg.Connection[Any]) -> dict[str, list[int]]:
    """The test log, and its entry ids per aggregate in chain order."""
    _write_log(conn)
    return {name: _ids(conn, name) for name in "abcd"}


def test_an_untampered_log_verifies_clean(
    conn: psycopg.Connection[Any], written: dict[str, list[int]]
) -> None:
    """Every entry written by write, write_many and apply is chained, and the chains are
    whole: no problem, every head matches."""
    report = LOG.verify(conn)
    assert report.problems == []
    assert report.ok
    total = sum(len(ids) for ids in written.values())
    assert (report.entries, report.chained, report.unchained) == (total, total, 0)
    assert report.aggregates == 4
    assert {name: seq for name, (seq, _) in report.heads.items()} == {
        name: len(ids) for name, ids in written.items()
    }


def _key_file(tmp_path: Path) -> Path:
    """The test key in a key file for the command line."""
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps({"keys": [{"id": WRAPPER.key_id, "key": base64.b64encode(KEY).decode()}]})
    )
    keys.chmod(0o600)
    return keys


def _cli_verify(dsn: str, keys: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oplog", "verify", "--dsn", dsn, "--key-file", str(keys), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_of_tampering_is_found_and_named(
    conn: psycopg.Connection[Any],
    written: dict[str, list[int]],
    case: str,
    dsn: str,
    tmp_path: Path,
) -> None:
    """Each tampering the issue lists, on a fresh log, is reported with its kind and the entry
    (or the aggregate) it is at, by the API and by `oplog verify --json` (exit 1)."""
    tamper, expected = CASES[case]
    _tamper(conn, *tamper(written))
    report = LOG.verify(conn)
    conn.rollback()
    assert not report.ok
    assert expected(written) <= _found(report), report.problems
    result = _cli_verify(dsn, _key_file(tmp_path), "--json")
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(p["kind"], p["entry"], p["aggregate"]) for p in lines[:-1]} == _found(report)


def test_the_cli_names_the_problem_and_exits_1(
    conn: psycopg.Connection[Any], written: dict[str, list[int]], dsn: str, tmp_path: Path
) -> None:
    """`oplog verify` exits 1 on a deleted entry, naming the aggregate, the missing sequence and
    the kind, in text and JSON; on the clean log it exits 0."""
    keys = _key_file(tmp_path)
    conn.commit()

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli_verify(dsn, keys, *args)

    clean = verify()
    assert clean.returncode == 0, clean.stderr
    assert "chained" in clean.stdout
    _tamper(conn, f"delete from oplog_entry where id = {written['b'][1]}")
    result = verify()
    assert result.returncode == 1, result.stderr
    assert f"missing: sequence 2 of 'b' is missing (before entry {written['b'][2]})" in (
        result.stderr
    )
    assert verify("--chains-only").returncode == 1
    lines = [json.loads(line) for line in verify("--json").stdout.splitlines()]
    assert {"kind": "missing", "entry": written["b"][2], "aggregate": "b"}.items() <= lines[
        0
    ].items()
    assert lines[-1]["ok"] is False


def test_a_chains_only_verify_finds_changes_by_their_tags(
    conn: psycopg.Connection[Any], written: dict[str, list[int]]
) -> None:
    """Without decrypting, a changed byte of a chained entry is still found (its tag), while
    the undecryptable blob itself is not looked at."""
    _tamper(conn, *CASES["a changed data byte"][0](written))
    report = LOG.verify(conn, contents=False)
    assert _found(report) == {("tag", written["a"][1], "a")}
    assert report.entries == sum(len(ids) for ids in written.values())


def test_saved_heads_catch_entries_deleted_with_their_head(
    conn: psycopg.Connection[Any], written: dict[str, list[int]], tmp_path: Path, dsn: str
) -> None:
    """Deleting the newest entries and rolling their head back passes a plain verify; against
    heads saved before (by `oplog verify --save-heads`), the API and `--heads` report it; a
    changed heads file is refused."""
    heads = tmp_path / "heads.json"
    keys = _key_file(tmp_path)
    conn.commit()
    saved = _cli_verify(dsn, keys, "--save-heads", str(heads))
    assert saved.returncode == 0, saved.stderr
    assert SavedHeads.load(heads, WRAPPER) == LOG.verify(conn).heads
    d = written["d"]
    _tamper(
        conn,
        f"delete from oplog_entry where id in ({d[-1]}, {d[-2]})",
        f"update oplog_chain_head set seq = {len(d) - 2}, tag = (select chain_tag from"
        f" oplog_entry where id = {d[-3]}) where aggregate_name = 'd'",
    )
    assert LOG.verify(conn).ok  # the database alone cannot tell
    report = LOG.verify(conn, saved_heads=heads)
    assert _found(report) == {("saved-head", None, "d")}
    result = _cli_verify(dsn, keys, "--heads", str(heads))
    assert result.returncode == 1
    assert "saved-head: 'd' ends at sequence" in result.stderr
    body = json.loads(heads.read_text())
    body["heads"]["d"][0] -= 2
    heads.write_text(json.dumps(body))
    with pytest.raises(oplog.OplogError, match="signature does not match"):
        LOG.verify(conn, saved_heads=heads)


def test_save_heads_writes_nothing_when_the_log_is_not_clean(
    conn: psycopg.Connection[Any], written: dict[str, list[int]], tmp_path: Path
) -> None:
    """A verify with problems saves no heads (they would bless the tampering)."""
    _tamper(conn, f"delete from oplog_entry where id = {written['a'][1]}")
    heads = tmp_path / "heads.json"
    assert not LOG.save_heads(conn, heads).ok
    assert not heads.exists()


def test_unchained_entries_are_counted_and_blamed_only_when_required(
    conn: psycopg.Connection[Any],
) -> None:
    """Entries written without tags (before migration 5, by the Go original, by a wrapper that
    derives no keys) mixed into chained aggregates: counted as unchained, the chains still
    whole; with require_chain each is a problem."""
    for i in range(4):
        (UNCHAINED if i % 2 else LOG).write(conn, "mixed", [user_create(f"m{i}")])
        conn.commit()
    UNCHAINED.write_many(conn, batch_items(3, ["old"]))
    conn.commit()
    report = LOG.verify(conn)
    assert report.ok, report.problems
    assert (report.entries, report.chained, report.unchained) == (7, 2, 5)
    strict = LOG.verify(conn, require_chain=True)
    assert [p.kind for p in strict.problems] == ["unchained"] * 5


def test_tags_are_hmac_sha256_of_the_documented_layout() -> None:
    """The Rust tags equal HMAC-SHA256 of the layout oplog.chain documents, under the key
    derived by HKDF; a chain links each tag to the previous one."""
    key = tag_key(WRAPPER)
    assert key is not None
    assert len(key) == 32
    assert key != tag_key(oplog.AeadWrapper(KEY, "another-id"))

    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    digest = metadata_digest(["b", "a"], ["2", None])
    assert digest == hashlib.sha256(lp(b"a") + lp(b"") + lp(b"b") + lp(b"2")).digest()
    heads: dict[str, tuple[int, bytes]] = {"x": (0, b"")}
    seqs, tags = _core.chain_tags(
        key, "test-key-1", ["x", "x"], [b"one", b"two"], [EMPTY_METADATA, digest], heads
    )
    assert seqs == [1, 2]
    prev = b""
    for seq, data, meta, tag in zip(seqs, [b"one", b"two"], [EMPTY_METADATA, digest], tags):
        text = (
            b"oplog entry tag v1" + lp(b"x") + lp(b"test-key-1") + lp(data) + meta
            + seq.to_bytes(8, "big") + lp(prev)
        )  # fmt: skip
        assert tag == hmac.new(key, text, hashlib.sha256).digest()
        prev = tag
    assert heads == {"x": (2, tags[1])}


def test_the_asyncio_api_verifies_the_same(
    conn: psycopg.Connection[Any], written: dict[str, list[int]], dsn: str
) -> None:
    """AsyncOplog.verify finds what Oplog.verify finds (the generated twin of one source)."""
    _tamper(conn, f"delete from oplog_entry where id = {written['c'][4]}")

    async def run() -> oplog.VerifyReport:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            return await aio.AsyncOplog(WRAPPER, CATALOG).verify(aconn)

    assert _found(asyncio.run(run())) == _found(LOG.verify(conn))


def test_a_heads_file_names_its_key_and_is_signed(tmp_path: Path) -> None:
    """SavedHeads round-trips; a file signed with another key is refused."""
    path = tmp_path / "h.json"
    SavedHeads.save(path, WRAPPER, {"a": (3, b"\x01" * 32)})
    assert SavedHeads.load(path, WRAPPER) == {"a": (3, b"\x01" * 32)}
    other = oplog.AeadWrapper(bytes(32), WRAPPER.key_id)
    with pytest.raises(oplog.OplogError, match="signature"):
        SavedHeads.load(path, other)


@pytest.mark.parametrize("aggregates", [["hot"], [f"agg{i}" for i in range(64)]], ids=["1", "64"])
def test_concurrent_writers_leave_whole_chains(
    dsn: str, conn: psycopg.Connection[Any], aggregates: list[str]
) -> None:
    """8 processes mixing write_many, apply and write over one aggregate and over 64: every
    entry is chained, the chains verify clean and their heads count every entry."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        written = sum(
            pool.starmap(workers.chained_mix, [(dsn, w, 12, aggregates) for w in range(8)])
        )
    report = LOG.verify(conn)
    assert report.problems == []
    assert (report.entries, report.chained, report.unchained) == (written, written, 0)
    assert sum(seq for seq, _ in report.heads.values()) == written


def test_a_replica_with_the_log_verifies_as_the_source(
    conn: psycopg.Connection[Any], pg: Server, dsn: str
) -> None:
    """replicate(copy_log=True) copies blobs, metadata and chains: the replica's log verifies
    clean with the source's heads, and tampering there is found as on the source; `oplog
    replicate --with-log` does the same."""

    def create(i: int) -> oplog.Operation:
        return oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", oplog.OpType.CREATE)

    LOG.write_many(conn, [(f"r{i % 3}", [create(i)], {"m": str(i)} if i % 2 else None)
                          for i in range(1, 301)])  # fmt: skip
    conn.commit()
    for i in range(301, 305):
        (UNCHAINED if i % 2 else LOG).write(conn, "r1", [create(i)], {"k": []})
        conn.commit()
    target_dsn = _fresh_database(pg, "t_chain_replica")
    with psycopg.connect(dsn, autocommit=True) as source, psycopg.connect(target_dsn) as target:
        applied = LOG.replicate(source, target, copy_log=True, follow=False, batch_size=100)
        assert applied == 304
        mine, theirs = LOG.verify(conn), LOG.verify(target)
        assert theirs.problems == []
        assert theirs.heads == mine.heads
        assert (theirs.entries, theirs.chained, theirs.unchained) == (304, 302, 2)
        assert (mine.entries, mine.chained, mine.unchained) == (304, 302, 2)
        middle = target.execute(
            "select id from oplog_entry where aggregate_name = 'r2' and chain_seq = 3"
        ).fetchone()
        assert middle is not None
        target.commit()
        _tamper(target, f"delete from oplog_entry where id = {middle[0]}")
        assert {p.kind for p in LOG.verify(target).problems} == {"missing"}
    other = _fresh_database(pg, "t_chain_replica_cli")
    env = {**os.environ, "OPLOG_KEY_FILE": str(_key_file(Path(tempfile.mkdtemp())))}
    result = subprocess.run(
        [sys.executable, "-m", "oplog", "replicate", "--dsn", dsn, "--to", other, "--once",
         "--with-log", "--types", "tests.db:CATALOG"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with psycopg.connect(other) as replica:
        assert LOG.verify(replica).heads == LOG.verify(conn).heads


def _fresh_database(pg: Server, name: str) -> str:
    """A new database `name` with oplog migrated and the test tables."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.execute(f"create database {name}")
    with psycopg.connect(pg.dsn_for(name), autocommit=True) as new:
        oplog.migrate(new)
        new.execute(TEST_TABLES.encode())
    return pg.dsn_for(name)
