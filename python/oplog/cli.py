"""The ``oplog`` command.

Only ``demo`` exists so far: it shows the queue codec working end to end (the database commands
arrive with the database layer).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import oplog
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from oplog.queue import Version


def _catalog() -> oplog.TypeCatalog:
    catalog = oplog.TypeCatalog()
    catalog.register("user", TestUser, table="users")
    catalog.register("car", TestCar, table="cars")
    catalog.register("rental", TestRental, table="rentals", primary_key=("user_id", "car_id"))
    return catalog


def _demo_operations(count: int) -> list[oplog.Operation]:
    ops: list[oplog.Operation] = []
    for i in range(count):
        user = TestUser(id=i + 1, name=f"user {i}", email=f"user{i}@example.com")
        car = TestCar(id=i + 1, model="Model T", mpg=25)
        ops += [
            oplog.Operation(user, "user", oplog.OpType.CREATE),
            oplog.Operation(car, "car", oplog.OpType.CREATE),
            oplog.Operation(TestRental(user_id=i + 1, car_id=i + 1), "rental", oplog.OpType.CREATE),
            oplog.Operation(
                TestUser(id=i + 1, phone_number="555-0100"),
                "user",
                oplog.OpType.UPDATE,
                ("PhoneNumber",),
                ("email",),
            ),
        ]
    return ops


def demo(args: argparse.Namespace) -> int:
    """Encodes a small domain's operations in both formats, decodes them, and checks the result."""
    catalog = _catalog()
    out = sys.stdout
    small = _demo_operations(1)
    versions: tuple[Version, ...] = ("v2", "v1")
    for version in versions:
        q = oplog.Queue(version=version)
        q.extend(op if version == "v2" else op._replace(null_paths=()) for op in small)
        data = bytes(q)
        out.write(f"{version} queue of {len(small)} operations: {len(data)} bytes\n")
        for op in oplog.Queue(data, catalog=catalog):
            masks = f" mask={list(op.field_mask)}" if op.field_mask else ""
            nulls = f" null={list(op.null_paths)}" if op.null_paths else ""
            fields = ", ".join(f"{f.name}={v!r}" for f, v in op.message.ListFields())
            out.write(f"  {op.op_type.name:<6} {op.type_name:<6} {{{fields}}}{masks}{nulls}\n")

    ops = _demo_operations(args.count // 4)
    start = time.perf_counter()
    q = oplog.Queue()
    q.extend(ops)
    data = bytes(q)
    encoded = time.perf_counter()
    decoded = list(oplog.Queue(data, catalog=catalog))
    done = time.perf_counter()
    if decoded != ops:
        out.write("round trip FAILED: decoded operations differ\n")
        return 1
    n = len(ops)
    out.write(
        f"{n} operations ({len(data) / 1e6:.1f} MB): encoded in {(encoded - start) * 1e3:.0f} ms "
        f"({(encoded - start) / n * 1e9:.0f} ns/op), decoded in {(done - encoded) * 1e3:.0f} ms "
        f"({(done - encoded) / n * 1e9:.0f} ns/op); round trip exact\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oplog`` command."""
    parser = argparse.ArgumentParser(prog="oplog", description=__doc__)
    parser.add_argument("--version", action="version", version=f"oplog {oplog.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="show the queue codec working end to end")
    p.add_argument("--count", type=int, default=100_000, help="operations in the timed round trip")
    p.set_defaults(run=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``oplog`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
