"""Decoding does not copy what it can share: peak memory for large and for many operations."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

import oplog
from oplog import _core
from oplog.proto.oplog_test_pb2 import TestUser

MIB = 1 << 20

# Runs in a fresh interpreter so that peak RSS reflects the decode alone: the queue is read from
# a file, then the peak (VmHWM) is reset through /proc/self/clear_refs before decoding starts.
_MEASURE = textwrap.dedent(
    """
    import gc, sys
    from pathlib import Path
    import oplog
    from oplog.proto.oplog_test_pb2 import TestUser

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    catalog = oplog.TypeCatalog({"user": TestUser})
    gc.collect()
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    data = Path(sys.argv[1]).read_bytes()
    ops = list(oplog.Queue(data, catalog=catalog))
    assert len(ops) == int(sys.argv[2]), len(ops)
    assert all(len(op.message.name) == int(sys.argv[3]) for op in ops)
    print(status("VmHWM:") - base, len(data))
    """
)


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_a_64_mib_queue_of_1_mib_messages_decodes_under_3x_its_size(tmp_path: Path) -> None:
    """Peak RSS while decoding 64 x 1 MiB messages stays under 3x the queue's size."""
    if not _clear_refs_works():
        pytest.fail("/proc/self/clear_refs is not writable; cannot measure peak RSS")
    count, size = 64, MIB - 64
    q = oplog.Queue()
    q.extend(
        oplog.Operation(TestUser(id=i, name="x" * size), "user", oplog.OpType.CREATE)
        for i in range(count)
    )
    path = tmp_path / "queue.bin"
    path.write_bytes(bytes(q))
    del q
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(count), str(size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    peak, length = map(int, out.split())
    print(f"\npeak {peak / MIB:.0f} MiB for a {length / MIB:.0f} MiB queue")
    assert length >= 64 * MIB - count * 64
    assert peak < 3 * length, f"peak {peak / MIB:.0f} MiB for a {length / MIB:.0f} MiB queue"


def test_large_values_are_views_of_the_input_not_copies() -> None:
    """Values of 64 KiB and more come back as memoryviews over the input bytes."""
    q = oplog.Queue()
    q.add(TestUser(name="y" * (256 << 10)), "user", oplog.OpType.CREATE)
    q.add(TestUser(name="small"), "user", oplog.OpType.CREATE)
    data = bytes(q)
    raw, end = _core.decode_operations(data, 0, None)
    big, small = raw[0][1], raw[1][1]
    assert isinstance(big, memoryview)
    assert big.obj is data
    assert isinstance(small, bytes)
    assert end == len(data)


def test_many_small_operations_decode_without_copying_the_input() -> None:
    """Decoding 10^5 small operations allocates the results and no copy of the whole input."""
    q = oplog.Queue()
    q.extend(
        oplog.Operation(
            TestUser(id=i, name="n"), "user", oplog.OpType.UPDATE, ("name", "email"), ("table",)
        )
        for i in range(100_000)
    )
    data = bytes(q)
    tracemalloc.start()
    try:
        raw, _ = _core.decode_operations(data, 0, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    objects: dict[int, object] = {id(raw): raw}
    for op in raw:
        for item in (op, *op, *op[3], *op[4]):
            objects[id(item)] = item
    results = sum(sys.getsizeof(obj) for obj in objects.values())
    # The results themselves, plus less than half a copy of the input for everything else.
    bound = results + len(data) // 2
    assert peak < bound, f"peak {peak} > {bound}; input is {len(data)} bytes"
    assert len(data) > 2 * MIB, "the input is large enough that a copy would show"
