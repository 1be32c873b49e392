"""The ``oplog`` command, through its real entry point, against real databases."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import oplog
from oplog import keyfile, schema
from oplog.cli import Progress, _replay_pages
from oplog.demo import CATALOG, SCHEMA, TABLES
from oplog.demo import TABLES_SQL as DDL
from oplog.proto.oplog_test_pb2 import TestCar, TestUser
from tests.db import CATALOG as TEST_CATALOG
from tests.db import WRAPPER
from tests.pg import Server

DEMO_TYPES = ["--types", "oplog.demo:CATALOG", "--search-path", "oplog_demo,public"]


class Cli:
    """Runs ``python -m oplog`` with a fixed environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "oplog", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str) -> list[dict[str, Any]]:
        out = self(*args, "--json").stdout
        return [json.loads(line) for line in out.splitlines()]

    def one_line_error(self, *args: str, code: int) -> str:
        err = self(*args, code=code).stderr
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("oplog: ")
        return lines[0]


def _on_terminal(cli: Cli, *args: str) -> tuple[str, str]:
    """What ``oplog *args`` writes to standard error when that is a terminal (a pty), and to
    standard output."""
    leader, follower = pty.openpty()
    # No translation of \n to \r\n by the terminal, so the test sees what the CLI wrote.
    attrs = termios.tcgetattr(follower)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(follower, termios.TCSANOW, attrs)
    with subprocess.Popen(
        [sys.executable, "-m", "oplog", *args],
        env=cli.env, stdout=subprocess.PIPE, stderr=follower, text=True,
    ) as process:  # fmt: skip
        os.close(follower)
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        os.close(leader)
        assert process.stdout is not None
        out = process.stdout.read()
        assert process.wait(timeout=120) == 0
    return terminal.decode(), out


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPLOG_")}
    env.update(XDG_DATA_HOME=str(tmp / "xdg"), **extra)
    return env


@pytest.fixture
def cli_db(pg: Server, tmp_path: Path) -> Iterator[tuple[Cli, str]]:
    """A CLI bound by OPLOG_DSN to an empty database, with its own key file."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_cli with (force)")
        admin.execute("create database t_cli")
    dsn = pg.dsn_for("t_cli")
    yield Cli(_env(tmp_path, OPLOG_DSN=dsn, OPLOG_KEY_FILE=str(tmp_path / "keys.json"))), dsn
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_cli with (force)")


def test_demo_twice_on_the_embedded_server(tmp_path: Path) -> None:
    """With no DSN the demo starts the embedded server, runs, and runs again on the same data
    directory; server status/stop manage it."""
    cli = Cli(_env(tmp_path))
    data_dir = str(tmp_path / "pgdata")
    try:
        first = cli("demo", "--data-dir", data_dir).stdout
        assert "B lost" in first
        assert "3 of 3 tables equal the live ones" in first
        assert "verified 7 entries: 6 chained in 3 aggregates, 1 unchained" in first
        second = cli("demo", "--data-dir", data_dir, "--json").stdout
        summary = json.loads(second)
        assert summary["entries_in_log"] == 14
        assert summary["tables_differing"] == []
        assert summary["verified_ok"] is True
        (status,) = cli.json("server", "status", "--data-dir", data_dir)
        assert status["running"] is True
        entries = cli.json("ls", "--data-dir", data_dir)
        assert len(entries) == 14
    finally:
        cli("server", "stop", "--data-dir", data_dir)
    (status,) = cli.json("server", "status", "--data-dir", data_dir)
    assert status["running"] is False
    assert cli("server", "stop", "--data-dir", data_dir).stdout.startswith("the server was not")


def test_keygen_writes_a_private_key_file_and_never_prints_keys(
    cli_db: tuple[Cli, str], tmp_path: Path
) -> None:
    """keygen creates a 0600 file, --add rotates in a new primary, keys stay off the output."""
    cli, _ = cli_db
    path = tmp_path / "keys.json"
    first = cli("keygen", "--key-id", "k1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cli.one_line_error("keygen", code=4)
    (rotated,) = cli.json("keygen", "--add", "--key-id", "k2")
    assert rotated["key_ids"] == ["k2", "k1"]
    secrets = [k["key"] for k in json.loads(path.read_text())["keys"]]
    for output in (first.stdout, first.stderr, json.dumps(rotated)):
        assert not any(secret in output for secret in secrets)


def test_every_command_against_a_dsn(cli_db: tuple[Cli, str]) -> None:
    """migrate, demo, ls (with filters), show, verify, replay and stats on a DSN database."""
    cli, dsn = cli_db
    cli("keygen")
    (migrated,) = cli.json("migrate")
    assert migrated == {"applied": [1, 2, 3, 4, 5], "current": [1, 2, 3, 4, 5]}
    assert cli.json("migrate") == [{"applied": [], "current": [1, 2, 3, 4, 5]}]
    cli("demo")
    entries = cli.json("ls")
    assert [e["id"] for e in entries] == list(range(1, 8))
    assert {e["aggregate"] for e in entries} == {"demo.users", "demo.cars", "demo.rentals"}
    assert [e["id"] for e in cli.json("ls", "--aggregate", "demo.cars")] == [2, 6, 7]
    assert [e["id"] for e in cli.json("ls", "--after", "5", "--limit", "1")] == [6]
    married = cli.json("ls", "--metadata", "reason=married")
    assert [e["id"] for e in married] == [4]
    assert married[0]["metadata"] == {"demo": ["true"], "reason": ["married"]}
    table = cli("ls", "--limit", "2").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "CREATED", "AGGREGATE"]
    assert len(table) == 3
    (shown,) = cli.json("show", "4", *DEMO_TYPES)
    (op,) = shown["operations"]
    assert op["op"] == "UPDATE"
    assert op["field_mask"] == ["Name"]
    assert op["message"]["name"] == "Alice Smith"
    (envelope_only,) = cli.json("show", "4")
    assert envelope_only["operations"][0]["value_bytes"] > 0
    assert cli.json("verify") == [
        {"entries": 7, "chained": 6, "unchained": 1, "aggregates": 3, "problems": 0, "ok": True}
    ]
    assert cli.json("verify", "--replay", *DEMO_TYPES)[-1]["ok"] is True
    (replayed,) = cli.json("replay", "--suffix", "_copy", *DEMO_TYPES)
    assert replayed == {"replayed": 7, "suffix": "_copy"}
    with psycopg.connect(dsn) as conn:
        live = conn.execute("select * from oplog_demo.users order by id").fetchall()
        copy = conn.execute("select * from oplog_demo.users_copy order by id").fetchall()
    assert live == copy
    stats = cli.json("stats")
    aggregates = {s["name"]: s["entries"] for s in stats if s["kind"] == "aggregate"}
    assert aggregates == {"demo.cars": 3, "demo.rentals": 2, "demo.users": 2}
    tickets = {s["name"]: s["version"] for s in stats if s["kind"] == "ticket"}
    assert sum(v - 1 for v in tickets.values()) == 7
    (down,) = cli.json("migrate", "--down")
    assert down["reverted"] == [5, 4, 3, 2, 1]
    cli.one_line_error("ls", code=5)


def test_verify_names_a_tampered_entry(cli_db: tuple[Cli, str]) -> None:
    """A flipped byte in a stored entry makes verify exit 1 and name the entry."""
    cli, dsn = cli_db
    cli("keygen")
    cli("demo")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table oplog_entry disable trigger oplog_entry_immutable")
        conn.execute(
            "update oplog_entry set data = overlay(data placing"
            " set_byte(substring(data from 20 for 1), 0, get_byte(data, 19) # 1) from 20 for 1),"
            # The xact_id check holds every row written to the current transaction's id.
            " xact_id = pg_current_xact_id()"
            " where id = 3"
        )
        conn.execute("alter table oplog_entry enable trigger oplog_entry_immutable")
    result = cli("verify", code=1)
    assert "undecryptable: entry 3 does not decrypt" in result.stderr
    assert "tag: entry 3 (sequence 1 of 'demo.rentals') does not match its tag" in result.stderr
    assert "2 problem(s)" in result.stdout
    cli.one_line_error("show", "3", code=4)


def test_verify_replay_names_a_table_that_does_not_match(cli_db: tuple[Cli, str]) -> None:
    """A live row changed behind the log's back makes verify --replay exit 1 naming the table."""
    cli, dsn = cli_db
    cli("keygen")
    cli("demo")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update oplog_demo.cars set mpg = mpg + 1 where id = 1")
    result = cli("verify", "--replay", *DEMO_TYPES, code=1)
    assert "table cars: replay does not reproduce it" in result.stderr
    with psycopg.connect(dsn) as conn:
        leftover = conn.execute("select to_regclass('oplog_demo.cars_oplog_verify')").fetchone()
    assert leftover == (None,), "verify --replay leaves no tables behind"


def test_bad_inputs_give_one_line_and_a_documented_code(
    cli_db: tuple[Cli, str], tmp_path: Path
) -> None:
    """Unreachable database, missing or wrong key, no migrations, unknown id, bad --types."""
    cli, _ = cli_db
    cli.one_line_error("ls", "--dsn", "host=127.0.0.1 port=1 user=x connect_timeout=2", code=3)
    assert "oplog migrate" in cli.one_line_error("ls", code=5)
    cli("migrate")
    assert "no key file" in cli.one_line_error("ls", "--key-file", str(tmp_path / "none"), code=4)
    cli("keygen")
    cli("demo")
    assert "no entry with id 999" in cli.one_line_error("show", "999", code=6)
    other = tmp_path / "other.json"
    cli("keygen", "--key-file", str(other))
    assert "does not decrypt" in cli.one_line_error("ls", "--key-file", str(other), code=4)
    assert "cannot load --types" in cli.one_line_error("show", "1", "--types", "no.such:X", code=7)
    msg = cli.one_line_error("show", "1", "--types", "oplog.demo:SCHEMA", code=7)
    assert "not a TypeCatalog" in msg
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    cli.one_line_error("ls", "--key-file", str(garbage), code=4)
    assert cli("ls", "--metadata", "novalue", code=2).stderr.startswith("oplog: ")


def test_demo_runs_as_an_ordinary_user(tmp_path: Path) -> None:
    """As root, the demo also works for an unprivileged account (here `postgres`), whose
    embedded server then runs as that account."""
    if os.geteuid() != 0:
        # Not root: every other test here already ran as an ordinary user.
        test_demo_twice_on_the_embedded_server(tmp_path)
        return
    system_python = Path("/usr/bin/python3")
    probe = subprocess.run(
        [str(system_python), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip("no system Python of this version for an unprivileged account to run")
    # pytest's own temporary directories are private to root; this one is not.
    home = Path(tempfile.mkdtemp(prefix="oplog-user-"))
    home.chmod(0o777)
    site = [p for p in sys.path if p.endswith("site-packages")]
    package = str(Path(__file__).resolve().parent.parent / "python")
    env = {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([package, *site]),
    }
    run = ["runuser", "-u", "postgres", "--", str(system_python), "-m", "oplog"]
    try:
        result = subprocess.run(
            [*run, "demo"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "3 of 3 tables equal the live ones" in result.stdout
    finally:
        subprocess.run([*run, "server", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_root_default_data_dir_stays_out_of_root_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XDG_DATA_HOME, root's embedded server lives in /var/lib (pgserver would make
    /root traversable otherwise); other users' lives under ~/.local/share."""
    from oplog import embedded

    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert embedded.default_data_dir() == Path("/var/lib/oplog/pgdata")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/someone")
    assert embedded.default_data_dir() == Path("/home/someone/.local/share/oplog/pgdata")
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    assert embedded.default_data_dir() == Path("/data/oplog/pgdata")


def test_tail_and_replicate(cli_db: tuple[Cli, str], pg: Server) -> None:
    """tail prints entries with checkpoints and continues from one; replicate --once copies
    the demo's tables to a second database, and again after more writes."""
    cli, dsn = cli_db
    cli("keygen")
    cli("demo")
    rows = cli.json("tail")
    assert [r["id"] for r in rows] == list(range(1, 8))
    rest = cli.json("tail", "--after", rows[2]["checkpoint"])
    assert [r["id"] for r in rest] == list(range(4, 8))
    assert cli.json("tail", "--from-end") == []
    first_line = cli("tail").stdout.splitlines()[0]
    assert "demo.users" in first_line
    assert first_line.endswith("@" + rows[0]["checkpoint"])
    cli.one_line_error("tail", "--after", "1:2", code=2)

    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_cli_replica with (force)")
        admin.execute("create database t_cli_replica")
    replica = pg.dsn_for("t_cli_replica")
    try:
        cli.one_line_error("replicate", "--to", replica, *DEMO_TYPES, code=5)
        cli("migrate", "--dsn", replica)
        # The replica's tables, as `oplog demo --print-schema | psql` makes them.
        with psycopg.connect(replica, autocommit=True) as conn:
            conn.execute(cli("demo", "--print-schema").stdout.encode())
        cli.one_line_error("replicate", "--to", replica, code=2)  # no --types
        (first,) = cli.json("replicate", "--to", replica, "--once", *DEMO_TYPES)
        assert first["applied"] == 7
        cli("demo")
        (second,) = cli.json("replicate", "--to", replica, "--once", *DEMO_TYPES)
        assert second["applied"] == 7
        consumers = [s for s in cli.json("stats", "--dsn", replica) if s["kind"] == "consumer"]
        assert [(c["name"], c["checkpoint"]) for c in consumers] == [
            ("replica", second["checkpoint"])
        ]
        assert cli.json("tail", "--after", second["checkpoint"]) == []
        # Lag against the log the replica follows: none now, the demo's 7 entries after it.
        lagging = cli.json("stats", "--dsn", replica, "--from", dsn)
        assert [(c["name"], c["lag"]) for c in lagging if c["kind"] == "consumer"] == [
            ("replica", 0)
        ]
        cli("demo")
        lagging = cli.json("stats", "--dsn", replica, "--from", dsn)
        (behind,) = [c for c in lagging if c["kind"] == "consumer"]
        assert behind["lag"] == 7
        assert behind["lag_seconds"] >= 0
        progress = cli("replicate", "--to", replica, *DEMO_TYPES, "--once").stdout
        assert "replicated 7 entries" in progress
        assert "lag 0 entries" in progress
        cli("demo")
        terminal, out = _on_terminal(cli, "replicate", "--to", replica, *DEMO_TYPES, "--once")
        assert re.fullmatch(r"\r\x1b\[Kapplied 7 \([\d,]+/s\); lag 0 entries\r?\n", terminal), (
            terminal
        )
        assert out.startswith("replicated 7 entries")
        for table in TABLES:
            query = f"select * from {SCHEMA}.{table} order by 1, 2"
            with psycopg.connect(dsn) as a, psycopg.connect(replica) as b:
                assert a.execute(query).fetchall() == b.execute(query).fetchall()
                assert a.execute(query).fetchall()
        # Pages commit without waiting for the disk unless --synchronous-commit says to.
        with psycopg.connect(replica, autocommit=True) as b:
            b.execute(f"alter table {SCHEMA}.users add column commit_mode text")
            b.execute(
                f"alter table {SCHEMA}.users alter column commit_mode"
                " set default current_setting('synchronous_commit')"
            )
            modes = f"select distinct commit_mode from {SCHEMA}.users where commit_mode is not null"
            for flag, mode in (["--synchronous-commit"], "on"), ([], "off"):
                b.execute(f"update {SCHEMA}.users set commit_mode = null")
                cli("demo")
                cli("replicate", "--to", replica, *DEMO_TYPES, "--once", *flag)
                assert b.execute(modes).fetchall() == [(mode,)]
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("drop database if exists t_cli_replica with (force)")


def test_tail_follow_prints_entries_as_they_commit(cli_db: tuple[Cli, str]) -> None:
    """`oplog tail --follow` keeps running: entries committed later are printed too; Ctrl-C
    ends it with 130 and no traceback."""
    cli, _ = cli_db
    cli("keygen")
    cli("demo")
    with subprocess.Popen(
        [sys.executable, "-m", "oplog", "tail", "--follow", "--poll-interval", "0.05", "--json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follow:
        try:
            assert follow.stdout is not None
            first = [json.loads(follow.stdout.readline())["id"] for _ in range(7)]
            cli("demo")
            later = [json.loads(follow.stdout.readline())["id"] for _ in range(7)]
            assert first + later == list(range(1, 15))
            follow.send_signal(signal.SIGINT)
            assert follow.wait(30) == 130
            assert follow.stderr is not None
            assert "Traceback" not in follow.stderr.read()
        finally:
            follow.kill()


# --- every bad input has its exit code (issue 10) -------------------------------------------------


@pytest.fixture(scope="module")
def demo_dbs(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A database holding the demo's log and tables, an empty migrated one holding the demo's
    tables (a replica), and a key file for them."""
    tmp = tmp_path_factory.mktemp("exit-codes")
    names = {"source": "t_cli_exit", "replica": "t_cli_exit_replica"}
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f"drop database if exists {name} with (force)")
            admin.execute(f"create database {name}")
    dsns = {role: pg.dsn_for(name) for role, name in names.items()}
    keys = tmp / "keys.json"
    cli = Cli(_env(tmp, OPLOG_DSN=dsns["source"], OPLOG_KEY_FILE=str(keys)))
    cli("keygen")
    cli("demo")
    cli("migrate", "--dsn", dsns["replica"])
    with psycopg.connect(dsns["replica"], autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(SCHEMA)))
        conn.execute(DDL.encode())
    yield {"cli": cli, "tmp": tmp, "keys": keys, **dsns}
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f"drop database if exists {name} with (force)")


def _write_keys(tmp: Path, document: object) -> str:
    path = tmp / f"keys-{abs(hash(json.dumps(document)))}.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return str(path)


_NOT_UTF8 = os.fsdecode(b"caf\xe9")  # how Python receives a Latin-1 argument
_B64 = "A" * 43 + "="

# (id, arguments, expected code, what the one line says). "{replica}" and "{tmp}" are filled in.
EXIT_CASES: list[tuple[str, list[str], int, str]] = [
    ("dsn-garbage", ["stats", "--dsn", "garbage"], 2, "--dsn"),
    ("dsn-unknown-option", ["stats", "--dsn", "nosuchoption=1"], 2, "--dsn"),
    ("replicate-to-garbage", ["replicate", "--once", "--to", "garbage", *DEMO_TYPES], 2, "--to"),
    ("limit-negative", ["ls", "--limit", "-1"], 2, "--limit"),
    ("partition-out-of-range", ["replicate", "--to", "x", "--partition", "2/2"], 2, "--partition"),
    ("partition-not-k-of-n", ["replicate", "--to", "x", "--partition", "one"], 2, "--partition"),
    ("after-negative", ["ls", "--after", "-5"], 2, "--after"),
    ("not-utf8-aggregate", ["ls", "--aggregate", _NOT_UTF8], 2, "UTF-8"),
    ("not-utf8-metadata", ["ls", "--metadata", f"k={_NOT_UTF8}"], 2, "UTF-8"),
    ("poll-interval-zero", ["tail", "--poll-interval", "0"], 2, "--poll-interval"),
    ("poll-interval-nan", ["tail", "--poll-interval", "nan"], 2, "--poll-interval"),
    ("channel-empty", ["tail", "--channel", ""], 2, "--channel"),
    (
        "batch-size-zero",
        ["replicate", "--once", "--to", "{replica}", "--batch-size", "0", *DEMO_TYPES],
        2,
        "--batch-size",
    ),
    ("replay-off-search-path", ["replay", "--types", "oplog.demo:CATALOG"], 5, "search-path"),
    ("replay-long-suffix", ["replay", *DEMO_TYPES, "--suffix", "_" + "x" * 70], 2, "--suffix"),
    ("replay-empty-suffix", ["replay", *DEMO_TYPES, "--suffix", ""], 2, "--suffix"),
    (
        "replay-unknown-type",
        [
            "replay",
            "--types",
            "tests.catalogs:USERS_ONLY",
            "--search-path",
            "oplog_demo,public",
            "--suffix",
            "_unknown",
        ],
        7,
        "is not in the catalog",
    ),
    (
        "replicate-unknown-type",
        [
            "replicate",
            "--once",
            "--to",
            "{replica}",
            "--consumer",
            "u",
            "--types",
            "tests.catalogs:USERS_ONLY",
            "--search-path",
            "oplog_demo,public",
        ],
        7,
        "is not in the catalog",
    ),
    ("tail-other-key", ["tail", "--key-file", "{other_keys}"], 4, "entry 1"),
    ("replay-other-key", ["replay", *DEMO_TYPES, "--key-file", "{other_keys}"], 4, "entry 1"),
    (
        "replicate-other-key",
        [
            "replicate",
            "--once",
            "--to",
            "{replica}",
            "--consumer",
            "k",
            "--key-file",
            "{other_keys}",
            *DEMO_TYPES,
        ],
        4,
        "entry 1",
    ),
    ("key-int", ["ls", "--key-file", "{int_key}"], 4, "not a base64 string"),
    ("key-duplicate-ids", ["ls", "--key-file", "{duplicate_ids}"], 4, "two keys have the id"),
    ("key-empty-id", ["ls", "--key-file", "{empty_id}"], 4, "has no id"),
    ("key-loose-strict", ["ls", "--key-file", "{loose}", "--strict-perms"], 4, "mode 0644"),
    (
        "keygen-empty-id",
        ["keygen", "--key-file", "{tmp}/new.json", "--key-id", ""],
        2,
        "--key-id",
    ),
]


@pytest.mark.parametrize(("args", "code", "says"), [c[1:] for c in EXIT_CASES],
                         ids=[c[0] for c in EXIT_CASES])  # fmt: skip
def test_every_bad_input_has_its_exit_code_and_one_line(
    demo_dbs: dict[str, Any], args: list[str], code: int, says: str
) -> None:
    """Each input the probe found ending in exit 70 ("a bug") exits with its documented code
    and one line on stderr that says what is wrong; the log is left as it was."""
    tmp: Path = demo_dbs["tmp"]
    other = tmp / "other-keys.json"
    if not other.exists():
        keyfile.add_key(other, "other")
    loose = tmp / "loose.json"
    if not loose.exists():
        loose.write_text(demo_dbs["keys"].read_text())
        loose.chmod(0o644)
    fill = {
        "replica": demo_dbs["replica"],
        "tmp": str(tmp),
        "other_keys": str(other),
        "loose": str(loose),
        "int_key": _write_keys(tmp, {"keys": [{"id": "k", "key": 7}]}),
        "duplicate_ids": _write_keys(
            tmp, {"keys": [{"id": "k", "key": _B64}, {"id": "k", "key": _B64}]}
        ),
        "empty_id": _write_keys(tmp, {"keys": [{"id": "", "key": _B64}]}),
    }
    line = demo_dbs["cli"].one_line_error(*(a.format(**fill) for a in args), code=code)
    assert says in line, line
    assert "unexpected" not in line


def test_a_loose_key_file_warns_but_works(demo_dbs: dict[str, Any]) -> None:
    """Without --strict-perms a group- or world-readable key file works, with a warning line."""
    tmp: Path = demo_dbs["tmp"]
    loose = tmp / "loose-warn.json"
    loose.write_text(demo_dbs["keys"].read_text())
    loose.chmod(0o640)
    result = demo_dbs["cli"]("ls", "--key-file", str(loose))
    assert result.stderr.startswith("oplog: warning: key file")
    assert "mode 0640" in result.stderr
    assert len(result.stdout.splitlines()) == 8


def test_replaying_twice_into_one_suffix_names_the_entry(demo_dbs: dict[str, Any]) -> None:
    """A second replay into the same suffix tables meets rows it already wrote: exit 1 naming
    the entry and the table (use --after to continue a replay), and nothing is committed."""
    cli = demo_dbs["cli"]
    cli("replay", *DEMO_TYPES, "--suffix", "_twice")
    line = cli.one_line_error("replay", *DEMO_TYPES, "--suffix", "_twice", code=1)
    assert "entry 1" in line
    assert "--after" in line
    assert cli.json("replay", *DEMO_TYPES, "--suffix", "_twice", "--after", "7") == [
        {"replayed": 0, "suffix": "_twice"}
    ]


@contextlib.contextmanager
def _demo_database(
    pg: Server, tmp: Path, name: str
) -> Iterator[tuple[Cli, str, oplog.MultiWrapper]]:
    """A database of the test's own holding the demo (its key file in `tmp`): the CLI on it,
    its DSN and the demo's wrapper; dropped after the block."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = pg.dsn_for(name)
    cli = Cli(_env(tmp, OPLOG_DSN=dsn, OPLOG_KEY_FILE=str(tmp / "keys.json")))
    try:
        cli("keygen")
        cli("demo")
        yield cli, dsn, keyfile.load_wrapper(tmp / "keys.json")
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def test_verify_replay_of_a_duplicated_entry_is_a_named_problem(pg: Server, tmp_path: Path) -> None:
    """An entry copied into the log (same operations twice) makes verify --replay exit 1 with
    a problem naming the entry that does not apply, not a crash."""
    with _demo_database(pg, tmp_path, "t_cli_dup") as (cli, dsn, wrapper):
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select data from oplog_entry where id = 1").fetchone()
            assert row is not None
            # The same operations in a blob of its own: no copy, and without a tag.
            again = wrapper.encrypt(wrapper.decrypt(row[0]))
            conn.execute(
                "insert into oplog_entry (version, aggregate_name, data, key_id)"
                " select version, aggregate_name, %s, key_id from oplog_entry where id = 1",
                (again,),
            )
        result = cli("verify", "--replay", *DEMO_TYPES, code=1)
        assert "entry 8" in result.stderr
        assert "does not replay" in result.stderr
        assert "1 problem" in result.stdout
        # The stored blob copied instead: verify names the copy before any replay.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into oplog_entry (version, aggregate_name, data, key_id)"
                " select version, aggregate_name, data, key_id from oplog_entry where id = 1"
            )
        copied = cli("verify", "--replay", *DEMO_TYPES, code=1)
        assert "copy: entry 9 stores entry 1's blob" in copied.stderr


def test_migrate_over_tables_it_did_not_create_says_so(pg: Server, tmp_path: Path) -> None:
    """A database that already has an ``oplog_entry`` table oplog did not make: migrate exits 5
    naming the table, and changes nothing."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_cli_foreign with (force)")
        admin.execute("create database t_cli_foreign")
    dsn = pg.dsn_for("t_cli_foreign")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table oplog_entry (id int)")
        cli = Cli(_env(tmp_path, OPLOG_DSN=dsn))
        line = cli.one_line_error("migrate", code=5)
        assert "oplog_entry" in line
        assert "already exists" in line
        with psycopg.connect(dsn, autocommit=True) as conn:
            tables = conn.execute(
                "select tablename from pg_tables where tablename like 'oplog%' order by 1"
            ).fetchall()
        assert tables == [("oplog_entry",)]
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("drop database if exists t_cli_foreign with (force)")


def test_the_libpq_environment_names_the_database(pg: Server, tmp_path: Path) -> None:
    """With neither --dsn nor OPLOG_DSN the libpq environment (PGHOST, PGPORT, PGUSER,
    PGDATABASE) names the database when any of it is set, and `--dsn ""` means libpq's
    defaults (that environment too); the embedded server starts only without all of them."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists t_libpq with (force)")
        admin.execute("create database t_libpq")
    params = conninfo_to_dict(pg.dsn_for("t_libpq"))
    env = _env(tmp_path, OPLOG_KEY_FILE=str(tmp_path / "keys.json"))
    env = {k: v for k, v in env.items() if not k.startswith("PG")}
    libpq = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    env.update({var: str(params[key]) for key, var in libpq.items() if params.get(key)})
    env["PGDATABASE"] = "t_libpq"
    try:
        cli = Cli(env)
        assert cli.json("migrate")[0]["applied"] == [m.version for m in schema.migrations()]
        assert cli.json("migrate", "--dsn", "")[0]["applied"] == []
        with psycopg.connect(pg.dsn_for("t_libpq")) as conn:
            assert schema.applied_versions(conn) == [m.version for m in schema.migrations()]
        assert not (tmp_path / "xdg" / "oplog").exists(), "the embedded server was started"
        assert "PGHOST" in cli("--help").stdout
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("drop database if exists t_libpq with (force)")


def test_a_replay_of_many_pages_names_the_entry_of_a_later_page_that_fails(
    pg: Server, tmp_path: Path
) -> None:
    """replay and verify --replay plan each page while the one before is applied: over three
    pages the counts and tables are whole, and a page that fails (rows already there, or an
    entry that does not decode, planned ahead) is replayed one entry at a time so that the
    error names the entry, with nothing committed."""
    with _demo_database(pg, tmp_path, "t_cli_pages") as (cli, dsn, wrapper):  # 7 entries
        log = oplog.Oplog(wrapper, CATALOG)
        cars = [TestCar(id=1000 + i, model=f"m{i}", mpg=i) for i in range(1300)]
        with psycopg.connect(dsn) as conn:
            conn.execute(sql.SQL("set search_path to {}, public").format(sql.Identifier(SCHEMA)))
            for car in cars:
                conn.execute(
                    "insert into cars (id, model, mpg) values (%s, %s, %s)",
                    (car.id, car.model, car.mpg),
                )
            log.write_many(
                conn,
                [
                    ("demo.cars", [oplog.Operation(c, "car", oplog.OpType.CREATE)], None)
                    for c in cars
                ],
            )
        assert cli.json("replay", *DEMO_TYPES, "--suffix", "_pages") == [
            {"replayed": 1307, "suffix": "_pages"}
        ]
        assert "replay to equal tables" in cli("verify", "--replay", *DEMO_TYPES).stdout

        # Entries 901 on already there: the second page fails, while the third is planned.
        cli("replay", *DEMO_TYPES, "--suffix", "_again", "--after", "900")
        line = cli.one_line_error("replay", *DEMO_TYPES, "--suffix", "_again", code=1)
        assert "entry 901 " in line
        with psycopg.connect(dsn) as conn:
            conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(SCHEMA)))
            assert conn.execute("select count(*) from cars_again").fetchone() == (407,)

        # An entry of the third page that does not decode: planned ahead, named.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into oplog_entry (version, aggregate_name, data, key_id)"
                " values ('v2', 'demo.cars', %s, %s)",
                (wrapper.encrypt(b"\x09\x00\x00\x00not a frame"), wrapper.key_id),
            )
        line = cli.one_line_error("replay", *DEMO_TYPES, "--suffix", "_bad", code=1)
        assert "entry 1308" in line
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select to_regclass('oplog_demo.cars_bad')").fetchone() == (None,)


def test_a_cli_replay_runs_its_statements_on_the_keys_index_and_puts_the_planner_back(
    conn: psycopg.Connection[Any],
) -> None:
    """The CLI's page loop runs each page's statements with enable_seqscan off (a fresh replay
    table is not analyzed: its update and delete runs would scan it whole) and puts the
    session's setting back for what its transaction does next (comparing whole tables)."""
    log = oplog.Oplog(WRAPPER, TEST_CATALOG)
    for i in range(1, 4):
        op = oplog.Operation(TestUser(id=i, name=f"u{i}"), "user", oplog.OpType.CREATE)
        log.write(conn, f"a{i}", [op])
    conn.commit()
    writer = oplog.Writer(conn, TEST_CATALOG)
    writer.drop_table_if_exists("users_scans")
    writer.create_table_like("users", "users_scans")
    conn.execute(
        "alter table users_scans add column scans text default current_setting('enable_seqscan')"
    )
    replayer = oplog.Replayer(writer, "_scans")
    assert _replay_pages(conn, log, 0, replayer, Progress("replay", None)) == 3
    assert conn.execute("select scans, count(*) from users_scans group by 1").fetchall() == [
        ("off", 3)
    ]
    assert conn.execute("show enable_seqscan").fetchone() == ("on",)
    conn.rollback()
