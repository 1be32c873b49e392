"""Draws a pytest-benchmark JSON file as a chart (PNG): the write comparison (oplog, bare SQL,
eventsourcing; one entry per transaction and batches of 1000) and the replication rates (the
write rates a replica must keep up with, oplog's replicate and replay, and PostgreSQL's own
logical replication), entries per second, with the machine and date under it.

    python benches/chart.py .benchmarks/latest.json benches/results.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: a file
import matplotlib.pyplot as plt

# (panel title, [(group, benchmark name, label)]) — entries per second of each.
PANELS = [
    (
        "Writing: one entry per transaction",
        "1. one entry per transaction",
        [
            ("test_single_bare", "bare SQL (same statement)"),
            ("test_single_oplog", "oplog write"),
            ("test_single_eventsourcing", "eventsourcing"),
        ],
    ),
    (
        "Writing: batches of 1000 entries",
        "2. batch of 1000 entries",
        [
            ("test_batch_bare", "bare SQL (same statement)"),
            ("test_batch_oplog", "oplog write_many"),
            ("test_batch_eventsourcing[cryptography]", "eventsourcing"),
        ],
    ),
    (
        "Replication, 20,000 creates",
        "6. replication, creates log",
        [
            ("test_logical_replication_rate", "PostgreSQL logical replication"),
            ("test_write_many_rate[creates]", "write_many (entries only)"),
            ("test_write_many_with_rows_rate", "batch writer (rows + entries)"),
            ("test_verify_replay_rate[creates]", "oplog replay (verify --replay)"),
            ("test_replicate_rate[creates]", "oplog replicate"),
        ],
    ),
    (
        "Replication, 20,000 mixed (creates, updates, deletes)",
        "6. replication, mixed log",
        [
            ("test_write_many_rate[mixed]", "write_many (entries only)"),
            ("test_verify_replay_rate[mixed]", "oplog replay (verify --replay)"),
            ("test_replicate_rate[mixed]", "oplog replicate"),
        ],
    ),
]


def _rates(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    rates = {}
    for bench in report["benchmarks"]:
        entries = bench.get("extra_info", {}).get("entries")
        if entries:
            rates[(bench["group"], bench["name"])] = entries / bench["stats"]["median"]
    return rates


def draw(report: dict[str, Any], out: Path) -> None:
    """Writes the chart of `report` to `out`; panels whose benchmarks did not run are left
    out."""
    rates = _rates(report)
    panels = []
    for title, group, bars in PANELS:
        found = [(label, rates[(group, name)]) for name, label in bars if (group, name) in rates]
        if found:
            panels.append((title, found))
    if not panels:
        raise SystemExit("no benchmark of the chart's panels in the report")
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 1.2 + 1.0 * sum(len(p[1]) for p in panels))
    )
    for ax, (title, found) in zip(axes if len(panels) > 1 else [axes], panels):
        labels = [label for label, _ in found][::-1]
        values = [rate for _, rate in found][::-1]
        colors = ["#d95f02" if "oplog" in label else "#7570b3" for label in labels]
        ax.barh(labels, values, color=colors)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.0f}/s", va="center", fontsize=8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlim(0, max(values) * 1.25)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {})
    fig.text(
        0.01, 0.005,
        f"entries per second (median), higher is better. {cpu.get('brand_raw', '?')},"
        f" {cpu.get('count', '?')} cores, Python {machine.get('python_version', '?')};"
        f" {report.get('datetime', '')[:10]}",
        fontsize=7,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(out, dpi=110)


def main() -> int:
    report = json.loads(Path(sys.argv[1]).read_text())
    draw(report, Path(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
