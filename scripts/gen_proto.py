"""Generates the protobuf Python modules under python/oplog/proto from proto/.

`python scripts/gen_proto.py` rewrites them; `--check` exits 1 when the committed copy differs from
what the installed grpcio-tools would generate (lint runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "proto"
TARGET = ROOT / "python" / "oplog" / "proto"


def generate(out: Path) -> list[Path]:
    """Runs protoc over every .proto and flattens the output into `out`; returns the files."""
    protos = sorted(SOURCES.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{SOURCES}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        if protoc.main([*args, *map(str, protos)]) != 0:
            sys.exit("protoc failed")
        written = []
        for path in sorted(Path(tmp).rglob("*_pb2.py*")):
            dest = out / path.name
            shutil.copyfile(path, dest)
            written.append(dest)
        return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        for old in TARGET.glob("*_pb2.py*"):
            old.unlink()
        generate(TARGET)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh}
        committed = {p.name for p in TARGET.glob("*_pb2.py*")}
        stale = sorted(names ^ committed) + sorted(
            p.name
            for p in fresh
            if p.name in committed and not filecmp.cmp(p, TARGET / p.name, False)
        )
        if stale:
            print(
                "generated protobuf modules are stale (run `make proto`):", *stale, file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
