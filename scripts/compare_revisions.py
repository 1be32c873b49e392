"""Times the front door of an earlier revision against the working tree, alternating run by
run on one server, and prints the medians and their ratio: for restructurings that must not
change speed. The Rust core is taken from the working tree (the revisions must share it).

    .venv/bin/python scripts/compare_revisions.py REV [ROUNDS] [--delay MS]

Each run is a fresh process on one of the two trees (in a shuffled order per round) that
writes 300 single entries and 20 batches of 1000, reads and tails the 20,000, replicates them
into a second database, replays them, and does the asyncio write and tail. With ``--delay``,
every connection goes through ``scripts/delay_proxy.py``, which holds the bytes MS
milliseconds each way: what the round trips cost across a network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One timed run, on the oplog first on sys.path (argv: tree, source DSN, target DSN).
RUN = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
import psycopg, oplog
from oplog import aio
from oplog.proto.oplog_test_pb2 import TestUser
source, target = sys.argv[2], sys.argv[3]
assert oplog.__file__.startswith(sys.argv[1]), oplog.__file__
catalog = oplog.TypeCatalog()
catalog.register("user", TestUser, table="users", exclude=("table",))
wrapper = oplog.AeadWrapper(bytes(range(32)), "key-1")
log, alog = oplog.Oplog(wrapper, catalog), aio.AsyncOplog(wrapper, catalog)
def op(i):
    user = TestUser(id=i, name=f"user {i}", email=f"u{i}@x", phone_number="5")
    return oplog.Operation(user, "user", oplog.OpType.CREATE)
out = {}
def timed(name, fn):
    start = time.perf_counter(); fn(); out[name] = time.perf_counter() - start
with psycopg.connect(source) as conn:
    conn.execute("truncate oplog_entry, oplog_metadata, oplog_ticket, oplog_consumer, users")
    conn.commit()
    def writes():
        for i in range(300):
            log.write(conn, f"a{i % 8}", [op(100001 + i)], {"k": "v"}); conn.commit()
    def batches():
        for b in range(20):
            items = [(f"a{i % 64}", [op(b * 1000 + i + 1)], None) for i in range(1000)]
            log.write_many(conn, items); conn.commit()
    timed("write x300", writes)
    timed("write_many 20x1000", batches)
    timed("read 20k", lambda: (sum(1 for _ in log.read(conn)), conn.commit()))
    conn.autocommit = True
    timed("tail 20k", lambda: sum(1 for _ in log.tail(conn, follow=False)))
with psycopg.connect(target, autocommit=True) as conn:
    conn.execute("truncate users, oplog_consumer")
with psycopg.connect(source, autocommit=True) as s, psycopg.connect(target) as t:
    timed("replicate 20k", lambda: log.replicate(s, t, "r", follow=False))
with psycopg.connect(source) as conn:
    writer = oplog.Writer(conn, catalog)
    writer.drop_table_if_exists("users_v")
    writer.create_table_like("users", "users_v")
    timed("replay 20k", lambda: log.replay(conn, "_v"))
    conn.rollback()
async def in_asyncio():
    async with await psycopg.AsyncConnection.connect(source) as conn:
        start = time.perf_counter()
        for i in range(300):
            await alog.write(conn, f"b{i % 8}", [op(200001 + i)], {"k": "v"}); await conn.commit()
        out["async write x300"] = time.perf_counter() - start
        await conn.set_autocommit(True)
        start = time.perf_counter()
        async for _ in alog.tail(conn, follow=False):
            pass
        out["async tail 20k"] = time.perf_counter() - start
asyncio.run(in_asyncio())
print(json.dumps(out))
"""


def _export(rev: str, into: Path) -> Path:
    """`python/oplog` at `rev`, with the working tree's compiled core, under `into`."""
    archive = subprocess.run(
        ["git", "archive", rev, "python/oplog"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    archive_path = into / "tree.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into, filter="data")
    for core in (ROOT / "python" / "oplog").glob("_core*.so"):
        shutil.copy(core, into / "python" / "oplog")
    return into / "python"


@contextlib.contextmanager
def _proxied(dsn: str, delay: float | None) -> Iterator[Callable[[str], str]]:
    """A function routing a DSN of `dsn`'s server through a delay proxy (or not, without
    `delay`)."""
    if not delay:
        yield lambda dsn: dsn
        return
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    port = conninfo_to_dict(dsn)["port"]
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "delay_proxy.py"), str(port), str(delay)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        via = int(proxy.stdout.readline())
        yield lambda dsn: make_conninfo(dsn, port=via)
    finally:
        proxy.kill()
        proxy.wait()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import psycopg

    import oplog
    from tests.db import TEST_TABLES
    from tests.pg import running_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("rounds", nargs="?", type=int, default=7)
    parser.add_argument("--delay", type=float, metavar="MS", help="each way, through a proxy")
    args = parser.parse_args()
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    rounds = args.rounds
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server() as server,
        _proxied(server.dsn, args.delay) as via,
    ):
        trees = {rev: _export(rev, Path(tmp)), "working tree": ROOT / "python"}
        script = Path(tmp) / "run.py"
        script.write_text(RUN)
        dsns = []
        for name in ("compare_source", "compare_target"):
            with psycopg.connect(server.dsn, autocommit=True) as admin:
                admin.execute(f"drop database if exists {name} with (force)")
                admin.execute(f"create database {name}")
            with psycopg.connect(server.dsn_for(name), autocommit=True) as conn:
                oplog.migrate(conn)
                conn.execute(TEST_TABLES.encode())
            dsns.append(via(server.dsn_for(name)))
        times: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        rng = random.Random(1)
        started = time.monotonic()
        for _ in range(rounds):
            order = list(trees)
            rng.shuffle(order)
            for name in order:
                result = subprocess.run(
                    [sys.executable, str(script), str(trees[name]), *dsns],
                    capture_output=True,
                    text=True,
                )
                if result.returncode:
                    print(result.stderr, file=sys.stderr)
                    return 1
                for path, seconds in json.loads(result.stdout).items():
                    times[name].setdefault(path, []).append(seconds)
    delay = f", {args.delay:g} ms each way" if args.delay else ""
    print(f"{rounds} rounds in {time.monotonic() - started:.0f} s, {server.name}{delay}")
    print(f"| path | {rev} (median s) | working tree (median s) | {rev} / working tree |")
    print("|---|---:|---:|---:|")
    for path, before in times[rev].items():
        b, a = statistics.median(before), statistics.median(times["working tree"][path])
        print(f"| {path} | {b:.3f} | {a:.3f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
