"""Replay reproduces the live tables: a Hypothesis state machine of writes, logged as it goes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from google.protobuf.wrappers_pb2 import UInt32Value
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

import oplog
from oplog.proto.any_operation_pb2 import WithOnConflict
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from oplog.proto.replay_test_pb2 import TestDocument
from tests.db import CATALOG, TEST_TABLES, WRAPPER, reset, rows
from tests.drivers import MakeDriver
from tests.pg import Server
from tests.strategies import documents, storable_text

FIELDS = ["title", "body", "updated", "count", "note", "flag", "score"]
GO_SPELLINGS = {"phone_number": "PhoneNumber", "name": "Name", "email": "Email"}


class ReplayMachine(RuleBasedStateMachine):
    """Writes through the writer and logs each write; replay must match at every check."""

    docs = Bundle("docs")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.conn = conn
        reset(conn)
        self.writer = oplog.Writer(conn, CATALOG)
        self.log = oplog.Oplog(WRAPPER, CATALOG)
        self.user = TestUser(name="u", phone_number="1", email="e")
        self.writer.create(self.user)
        self._log("users", [oplog.Operation(self.user, "user", oplog.OpType.CREATE)])

    def _log(self, aggregate: str, ops: list[oplog.Operation]) -> None:
        self.log.write(self.conn, aggregate, ops, metadata={"machine": ["replay"]})

    @rule(target=docs, doc=documents())
    def create(self, doc: TestDocument) -> int:
        self.writer.create(doc)
        self._log("documents", [oplog.Operation(doc, "document", oplog.OpType.CREATE)])
        return doc.id

    @rule(target=docs, batch=st.lists(documents(), min_size=1, max_size=4))
    def create_items(self, batch: list[TestDocument]) -> Any:
        self.writer.create_items(batch)
        self._log(
            "documents", [oplog.Operation(d, "document", oplog.OpType.CREATE_ITEMS) for d in batch]
        )
        return multiple(*(d.id for d in batch))

    @rule(
        doc_id=docs,
        values=documents(),
        paths=st.lists(st.sampled_from(FIELDS), unique=True, min_size=1, max_size=4),
        split=st.integers(0, 4),
    )
    def update(self, doc_id: int, values: TestDocument, paths: list[str], split: int) -> None:
        mask, nulls = paths[split % len(paths) :], paths[: split % len(paths)]
        values.id = doc_id
        self.writer.update(values, mask, nulls)
        op = oplog.Operation(values, "document", oplog.OpType.UPDATE, tuple(mask), tuple(nulls))
        self._log("documents", [op])

    @rule(
        name=storable_text,
        paths=st.lists(st.sampled_from(sorted(GO_SPELLINGS)), unique=True, min_size=1),
        go=st.booleans(),
    )
    def update_user_in_go_spelling(self, name: str, paths: list[str], go: bool) -> None:
        change = TestUser(id=self.user.id, name=name, phone_number=name[::-1], email=name + "@")
        mask = tuple(GO_SPELLINGS[p] if go else p.upper() for p in paths)
        self.writer.update(change, mask)
        self._log("users", [oplog.Operation(change, "user", oplog.OpType.UPDATE, mask)])

    deleted = Bundle("deleted")

    @rule(target=deleted, doc_id=consumes(docs))
    def delete(self, doc_id: int) -> int:
        doc = TestDocument(id=doc_id)
        assert self.writer.delete(doc) == 1
        self._log("documents", [oplog.Operation(doc, "document", oplog.OpType.DELETE)])
        return doc_id

    @rule(target=docs, doc_id=consumes(deleted), doc=documents(), then_update=st.booleans())
    def recreate(self, doc_id: int, doc: TestDocument, then_update: bool) -> int:
        """A deleted key created again, and maybe updated in the same entry: a run must end
        wherever it would touch a row it already touched."""
        doc.id = doc_id
        self.writer.create(doc)
        ops = [oplog.Operation(doc, "document", oplog.OpType.CREATE)]
        if then_update:
            change = TestDocument(id=doc_id, title="again")
            self.writer.update(change, ["title"])
            ops.append(oplog.Operation(change, "document", oplog.OpType.UPDATE, ("title",)))
        self._log("documents", ops)
        return doc_id

    @rule(first=consumes(docs), second=consumes(docs))
    def delete_items(self, first: int, second: int) -> None:
        batch = [TestDocument(id=first), TestDocument(id=second)]
        assert self.writer.delete_items(batch) == 2
        self._log(
            "documents", [oplog.Operation(d, "document", oplog.OpType.DELETE_ITEMS) for d in batch]
        )

    @invariant()
    def replay_reproduces_the_tables(self) -> None:
        for table in ("documents", "users"):
            for suffix in ("_replay", "_one", "_pages"):
                # Fresh suffix tables, present even when no entry touched the table.
                self.writer.drop_table_if_exists(table + suffix)
                self.writer.create_table_like(table, table + suffix)
        entries = self.log.replay(self.conn)
        assert entries == sum(1 for _ in self.log.read(self.conn))
        # The reference: one operation, one statement.
        one = oplog.Replayer(self.writer, "_one")
        for entry in self.log.read(self.conn):
            one.apply_entry(entry, CATALOG)
        # Set-based, in pages of 3 entries (runs end at page boundaries too).
        pages = oplog.Replayer(self.writer, "_pages")
        read = list(self.log.read(self.conn))
        for start in range(0, len(read), 3):
            pages.apply_entries(read[start : start + 3], CATALOG)
        for table in ("documents", "users"):
            live = rows(self.conn, table)
            assert rows(self.conn, table + "_one") == live
            assert rows(self.conn, table + "_replay") == live
            assert rows(self.conn, table + "_pages") == live


def test_replay_reproduces_live_tables(conn: psycopg.Connection[Any]) -> None:
    """Any sequence of creates, masked and nulling updates, deletes and item batches, replayed
    in order into suffix tables, gives tables equal to the live ones, row for row: one
    operation per statement (the reference), set-based over the whole log (Oplog.replay) and
    set-based in pages of three entries."""

    class Machine(ReplayMachine):
        def __init__(self) -> None:
            conn.rollback()
            super().__init__(conn)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def _refusal(conn: psycopg.Connection[Any], how: str, ops: list[oplog.Operation]) -> str | None:
    """The SQLSTATE a replay (``apply`` or ``apply_many``) of `ops` into the ``_short`` tables
    fails with (rolled back to a savepoint), or None."""
    replayer = oplog.Replayer(oplog.Writer(conn, CATALOG), "_short")
    try:
        with conn.transaction():
            getattr(replayer, how)(ops)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def test_set_based_replay_refuses_what_one_by_one_refuses(conn: psycopg.Connection[Any]) -> None:
    """A value too long for a varchar(n) column (or out of range for an integer one) fails the
    set-based replay as it fails the one-by-one replay, in runs of one row and of many, where a
    cast to the column's declared type would silently truncate it."""
    reset(conn)
    conn.execute(
        "create table users_short (id bigint primary key, name varchar(3), phone_number text,"
        " email text, version integer)"
    )
    long_name = [oplog.Operation(TestUser(id=1, name="abcdef"), "user", oplog.OpType.CREATE)]
    too_big = [oplog.Operation(TestUser(id=2, version=2**32 - 1), "user", oplog.OpType.CREATE)]
    fits = [oplog.Operation(TestUser(id=3, name="abc"), "user", oplog.OpType.CREATE)]
    for ops in (long_name, too_big, fits + long_name, too_big + fits):
        one = _refusal(conn, "apply", ops)
        many = _refusal(conn, "apply_many", ops)
        assert one is not None
        assert many == one
    rename = [
        oplog.Operation(TestUser(id=3, name="abcdef"), "user", oplog.OpType.UPDATE, ("name",))
    ]
    oplog.Replayer(oplog.Writer(conn, CATALOG), "_short").apply(fits)
    for ops in (rename, rename + rename):
        one = _refusal(conn, "apply", ops)
        many = _refusal(conn, "apply_many", ops)
        assert one == "22001"
        assert many == one
    assert rows(conn, "users_short") == [(3, "abc", "", "", 0)]


def test_a_value_that_cannot_be_sent_fails_the_set_based_replay_before_anything_is_sent(
    conn: psycopg.Connection[Any],
) -> None:
    """Text with a NUL in a later run of a page fails apply_many with the field named and no
    statement sent: the runs before it (whose arrays are packed first) write nothing."""
    reset(conn)
    creates = [
        oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", oplog.OpType.CREATE)
        for i in (1, 2, 3)
    ]
    bad = TestUser(id=1, name="a\x00b")
    rename = oplog.Operation(bad, "user", oplog.OpType.UPDATE, ("name",))
    replayer = oplog.Replayer(oplog.Writer(conn, CATALOG), "_replay")
    with conn.transaction():
        with pytest.raises(oplog.InvalidParameterError, match=r"TestUser\.name contains a NUL"):
            replayer.apply_many([*creates, rename])
        assert rows(conn, "users_replay") == []


def test_only_tables_whose_row_operations_commute_are_reordered(
    conn: psycopg.Connection[Any],
) -> None:
    """A replayer reads from the catalog whether operations on different rows of a table
    commute: a plain table with a primary key and steady defaults does; uniqueness beyond
    the key, a trigger, a foreign key (either side), row security, inheritance do not; a
    default that depends on insert order (a sequence, an identity column) is noted, so that
    only a mapping that always supplies that column is reordered."""
    reset(conn)
    conn.execute(
        """
        create table t_plain (id bigint primary key, v text, at timestamptz default now(),
          n integer default 0, s text default 'x', g bigint generated always as (id * 2) stored);
        create table t_pair (a integer, b integer, v text, primary key (b, a));
        create table t_serial (id bigint primary key, seq bigserial, v text,
          i bigint generated by default as identity, at timestamptz default clock_timestamp());
        create table t_unique (id bigint primary key, v text unique);
        create table t_index (id bigint primary key, v text);
        create unique index on t_index (lower(v));
        create table t_parent (id bigint primary key);
        create table t_child (id bigint primary key, parent bigint references t_parent);
        create table t_trigger (id bigint primary key);
        create function t_noop() returns trigger language plpgsql as 'begin return new; end';
        create trigger t_noop before insert on t_trigger for each row execute function t_noop();
        create table t_secure (id bigint primary key);
        alter table t_secure enable row level security;
        create table t_base (id bigint primary key);
        create table t_derived () inherits (t_base);
        create table t_nokey (id bigint, v text);
        """
    )
    replayer = oplog.Replayer(oplog.Writer(conn, CATALOG), "")
    keys = {}
    tables = ("t_plain", "t_pair", "t_serial", "t_unique", "t_index", "t_parent", "t_child",
              "t_trigger", "t_secure", "t_base", "t_derived", "t_nokey")  # fmt: skip
    for table in tables:
        traits = replayer._table_traits(table)
        keys[table] = traits.key
        if table == "t_plain":
            assert traits.defaulted == frozenset()
        if table == "t_serial":
            assert traits.defaulted == {"seq", "i", "at"}
    assert keys == {
        "t_plain": ("id",), "t_pair": ("b", "a"), "t_serial": ("id",), "t_unique": None,
        "t_index": None, "t_parent": None, "t_child": None, "t_trigger": None, "t_secure": None,
        "t_base": None, "t_derived": None, "t_nokey": None,
    }  # fmt: skip
    assert replayer._table_traits("users").key == ("id",)


def test_a_page_that_reordering_would_break_replays_as_one_by_one(
    conn: psycopg.Connection[Any],
) -> None:
    """Creating a row with the email a later-deleted row holds works one by one; under a
    unique email the set-based replay keeps that order (and succeeds), without it the page
    is grouped into fewer statements and gives the same rows."""
    reset(conn)
    users = [TestUser(id=i, name=f"u{i}", email=f"{i}@e") for i in (1, 2, 3)]
    oplog.Writer(conn, CATALOG).create_items(users)
    ops = [
        oplog.Operation(TestUser(id=4, name="u4", email="4@e"), "user", oplog.OpType.CREATE),
        oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE),
        oplog.Operation(TestUser(id=5, name="u5", email="1@e"), "user", oplog.OpType.CREATE),
        oplog.Operation(TestUser(id=2, name="v2"), "user", oplog.OpType.UPDATE, ("name",)),
    ]
    for unique in (True, False):
        for suffix in ("_one", "_many"):
            conn.execute(f"drop table if exists users{suffix}")
            conn.execute(f"create table users{suffix} (like users including all)")
            if unique:
                conn.execute(f"create unique index on users{suffix} (email)")
            conn.execute(f"insert into users{suffix} select * from users")
        oplog.Replayer(oplog.Writer(conn, CATALOG), "_one").apply(ops)
        replayer = oplog.Replayer(oplog.Writer(conn, CATALOG), "_many")
        replayer.apply_many(ops)
        assert rows(conn, "users_many") == rows(conn, "users_one")
        assert len(rows(conn, "users_one")) == 4
        assert replayer._cache.tables["users_many"].key == (None if unique else ("id",))


def test_a_replayer_sees_a_unique_index_added_while_it_runs(
    conn: psycopg.Connection[Any],
) -> None:
    """A long-running replayer (a replica's) reads its targets' traits again once they are a
    second old (TRAITS_TTL): a unique index added to the target after a page was applied keeps
    a later page in order (which it needs, here), instead of reordering it as the first page
    was."""
    reset(conn)
    conn.execute("create table users_live (like users including all)")
    replayer = oplog.Replayer(oplog.Writer(conn, CATALOG), "_live")
    first = [
        oplog.Operation(TestUser(id=i, email=f"{i}@e"), "user", oplog.OpType.CREATE) for i in (1, 2)
    ]
    replayer.apply_many(first)
    assert replayer._cache.tables["users_live"].key == ("id",)
    conn.execute("create unique index on users_live (email)")
    time.sleep(oplog.replay.TRAITS_TTL + 0.1)
    second = [
        oplog.Operation(TestUser(id=3, email="3@e"), "user", oplog.OpType.CREATE),
        oplog.Operation(TestUser(id=1), "user", oplog.OpType.DELETE),
        oplog.Operation(TestUser(id=4, email="1@e"), "user", oplog.OpType.CREATE),
    ]
    replayer.apply_many(second)
    assert [r[0] for r in rows(conn, "users_live")] == [2, 3, 4]


@pytest.fixture
def empty_dsn(pg: Server) -> Iterator[str]:
    """A fresh database on the test server, migrated, with empty test tables."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_replica with (force)")
        admin.execute("create database t_replica")
    dsn = pg.dsn_for("t_replica")
    with psycopg.connect(dsn, autocommit=True) as conn:
        oplog.migrate(conn)
        conn.execute(TEST_TABLES.encode())
    yield dsn
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_replica with (force)")


def _write_every_kind(conn: psycopg.Connection[Any]) -> None:
    """Commits entries of every kind the replayers handle, with their data changes: runs of
    creates, updates (mask and null path) and deletes, item batches, and operations with
    options (applied one by one)."""
    writer = oplog.Writer(conn, CATALOG)
    log = oplog.Oplog(WRAPPER, CATALOG)

    def logged(aggregate: str, ops: list[oplog.Operation]) -> None:
        log.write(conn, aggregate, ops)

    with conn.transaction():
        users = [TestUser(name=f"u{i}", email=f"{i}@e", phone_number=str(i)) for i in range(6)]
        for user in users:
            writer.create(user)
        logged("users", [oplog.Operation(u, "user", oplog.OpType.CREATE) for u in users])
        rename = TestUser(id=users[1].id, name="renamed")
        writer.update(rename, ["name"], ["email"])
        logged(
            "users", [oplog.Operation(rename, "user", oplog.OpType.UPDATE, ("name",), ("email",))]
        )
        gone = TestUser(id=users[2].id)
        writer.delete(gone)
        logged("users", [oplog.Operation(gone, "user", oplog.OpType.DELETE)])
        cars = [TestCar(id=100 + i, model=f"m{i}", mpg=i) for i in range(3)]
        writer.create_items(cars)
        logged("cars", [oplog.Operation(c, "car", oplog.OpType.CREATE_ITEMS) for c in cars])
        writer.delete_items(cars[:2])
        logged("cars", [oplog.Operation(c, "car", oplog.OpType.DELETE_ITEMS) for c in cars[:2]])
        # With options: replayed one by one, through the writer.
        again = TestUser(id=users[0].id, name="kept")
        options = oplog.OperationOptions(with_on_conflict=WithOnConflict(do_nothing=True))
        writer.create(again, options=options)
        logged("users", [oplog.Operation(again, "user", oplog.OpType.CREATE, options=options)])
        checked = TestUser(id=users[3].id, name="checked")
        current = oplog.OperationOptions(with_version=UInt32Value(value=0))
        assert writer.update(checked, ["name"], options=current) == 1
        logged(
            "users",
            [oplog.Operation(checked, "user", oplog.OpType.UPDATE, ("name",), options=current)],
        )


def test_both_apis_replay_and_replicate_to_the_live_tables(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], empty_dsn: str
) -> None:
    """Oplog and AsyncOplog replay a committed log of every kind of entry into suffix tables,
    and replicate it into another database, equal to the live tables row for row."""
    reset(conn)
    _write_every_kind(conn)
    driver = make_driver()
    entries = sum(1 for _ in oplog.Oplog(WRAPPER, CATALOG).read(conn))
    assert driver.replay("_again") == entries
    assert driver.replicate(empty_dsn, "copy") == entries
    assert driver.replicate(empty_dsn, "copy") == 0
    with psycopg.connect(empty_dsn) as replica:
        for table in ("users", "cars"):
            live = rows(conn, table)
            assert live, table
            assert rows(conn, table + "_again") == live
            assert rows(replica, table) == live


def test_a_replay_of_many_pages_plans_each_while_the_last_one_runs(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    """Oplog.replay (and AsyncOplog's) reads the next page before sending the current one and
    decrypts, decodes and plans it while the server applies the current one, on the same
    connection. Over three pages — users created, updated and deleted across page bounds,
    cars appearing only in the last page (their table made ready inside the window) — the
    replayed tables equal the live ones row for row."""
    reset(conn)
    writer = oplog.Writer(conn, CATALOG)
    log = oplog.Oplog(WRAPPER, CATALOG)
    ops: list[tuple[str, list[oplog.Operation]]] = []
    for i in range(1, 1101):
        user = TestUser(id=i, name=f"u{i}", email=f"{i}@e")
        ops.append((f"a{i % 16}", [oplog.Operation(user, "user", oplog.OpType.CREATE)]))
        if i % 7 == 0:  # an update of an earlier user, often on the page before
            renamed = TestUser(id=i - 6, name=f"renamed {i}")
            op = oplog.Operation(renamed, "user", oplog.OpType.UPDATE, ("name",), ("email",))
            ops.append((f"a{(i - 6) % 16}", [op]))
        if i % 11 == 0:
            gone = TestUser(id=i - 10)
            ops.append((f"a{(i - 10) % 16}", [oplog.Operation(gone, "user", oplog.OpType.DELETE)]))
    cars = [TestCar(id=i, model=f"m{i}", mpg=i) for i in range(1, 40)]
    ops += [("cars", [oplog.Operation(car, "car", oplog.OpType.CREATE)]) for car in cars]
    live = oplog.Replayer(writer, "")
    with conn.transaction():
        for _, entry in ops:
            live.apply(entry)
        log.write_many(conn, [(aggregate, entry, None) for aggregate, entry in ops])
    assert len(ops) > 2 * 500 + 39
    for suffix in ("_sync_or_async", "_again"):
        assert make_driver().replay(suffix) == len(ops)
        for table in ("users", "cars"):
            assert rows(conn, table + suffix) == rows(conn, table), table


def test_a_replay_raises_for_an_entry_of_the_next_page_after_applying_this_one(
    conn: psycopg.Connection[Any],
) -> None:
    """An entry of the page read ahead that does not decrypt is raised (naming it) after the
    current page is applied, as it was before the replay read ahead: the caller's
    transaction holds the first page's rows."""
    reset(conn)
    log = oplog.Oplog(WRAPPER, CATALOG)
    other = oplog.Oplog(oplog.AeadWrapper(bytes(32), "other-key"), CATALOG)
    items = [
        (
            f"a{i}",
            [oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", oplog.OpType.CREATE)],
            None,
        )
        for i in range(1, 601)
    ]
    with conn.transaction():
        log.write_many(conn, items[:550])
        other.write_many(conn, items[550:551])
        log.write_many(conn, items[551:])
    bad = conn.execute("select id from oplog_entry where key_id = 'other-key'").fetchone()
    assert bad is not None
    with pytest.raises(oplog.DecryptError, match=f"entry {bad[0]} does not decrypt"):
        log.replay(conn, "_partly")
    assert conn.execute("select count(*) from users_partly").fetchone() == (500,)
    conn.rollback()


def test_a_replay_runs_its_statements_on_the_keys_index_and_puts_the_planner_back(
    conn: psycopg.Connection[Any],
) -> None:
    """Oplog.replay runs each page's statements with enable_seqscan off (a replay table is new
    and not analyzed: an update or delete run would scan it whole) and puts the caller's
    setting back after them, in its transaction."""
    log = oplog.Oplog(WRAPPER, CATALOG)
    for i in range(1, 4):
        op = oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", oplog.OpType.CREATE)
        log.write(conn, f"a{i}", [op])
    conn.commit()
    conn.execute("create table users_sc (like users including all)")
    conn.execute(
        "alter table users_sc add column scans text default current_setting('enable_seqscan')"
    )
    conn.execute("set local enable_seqscan = on")
    assert log.replay(conn, "_sc") == 3
    assert conn.execute("select scans, count(*) from users_sc group by 1").fetchall() == [
        ("off", 3)
    ]
    assert conn.execute("show enable_seqscan").fetchone() == ("on",)
    conn.rollback()


def test_set_based_replay_in_the_callers_pipeline_joins_it(conn: psycopg.Connection[Any]) -> None:
    """apply_many on a connection in the caller's pipeline sends its statements into that
    pipeline (no sync of its own): they apply with the caller's, and an error among them is
    raised at the caller's sync, not inside apply_many."""
    reset(conn)
    replayer = oplog.Replayer(oplog.Writer(conn, CATALOG), "")
    users = [TestUser(id=i, name=f"u{i}") for i in range(1, 4)]
    creates = [oplog.Operation(u, "user", oplog.OpType.CREATE) for u in users]
    with conn.pipeline():
        assert replayer.apply_many(creates) == 3
    assert [r[0] for r in rows(conn, "users")] == [1, 2, 3]
    car = oplog.Operation(TestCar(id=1, model="m", mpg=1), "car", oplog.OpType.CREATE)
    inside: list[BaseException] = []

    def replay_in_the_pipeline() -> None:
        with conn.pipeline():
            try:  # two statements (two tables); the first inserts a row already there
                replayer.apply_many([creates[0], car])
            except psycopg.Error as exc:
                inside.append(exc)

    with pytest.raises(psycopg.errors.UniqueViolation):
        replay_in_the_pipeline()
    assert inside == []
    conn.rollback()
