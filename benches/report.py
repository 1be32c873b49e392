"""Renders a pytest-benchmark JSON file as a markdown table: medians, throughput (when a
benchmark records ``extra_info["entries"]``), speed relative to each group's baseline (the
benchmark whose name contains ``reference``, ``bare`` or ``baseline``; above 1x is faster),
and retries after conflicts (``extra_info["retries"]``, in the last round). A benchmark that
alternates a candidate with its baseline call by call shows their ratio of medians instead
(``extra_info["paired_ratio"]``, "paired").

    python benches/report.py .benchmarks/latest.json > benches/RESULTS.md
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BASELINE_MARKERS = ("reference", "bare", "baseline")


def _is_baseline(name: str) -> bool:
    return any(marker in name for marker in BASELINE_MARKERS)


def render(report: dict[str, Any]) -> str:
    """The markdown of one pytest-benchmark report."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in report["benchmarks"]:
        groups[bench["group"] or "(no group)"].append(bench)
    machine = report.get("machine_info", {})
    lines = [
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor() or '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version')}"
        f"; {report.get('datetime', '')[:19]}",
        "",
        "| group | benchmark | median | IQR | rounds | entries/s | vs baseline | retries |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group, benches in sorted(groups.items()):
        baseline = next((b for b in benches if _is_baseline(b["name"])), None)
        for bench in sorted(benches, key=lambda b: b["stats"]["median"]):
            stats = bench["stats"]
            ratio = ""
            paired = bench.get("extra_info", {}).get("paired_ratio")
            if paired is not None:
                ratio = f"{paired:.2f}x paired"
            elif baseline is not None and bench is not baseline:
                ratio = f"{baseline['stats']['median'] / stats['median']:.2f}x"
            elif bench is baseline:
                ratio = "baseline"
            entries = bench.get("extra_info", {}).get("entries")
            rate = f"{entries / stats['median']:,.0f}" if entries else ""
            retries = bench.get("extra_info", {}).get("retries", "")
            lines.append(
                f"| {group} | {bench['name']} | {stats['median'] * 1e3:.2f} ms | "
                f"{stats['iqr'] * 1e3:.2f} ms | {stats['rounds']} | {rate} | {ratio} | {retries} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    """Prints the table of the report named on the command line."""
    report = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.write(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
