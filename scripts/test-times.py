"""Merge the per-module time tables of test sessions that ran side by side (see tests/timing_plugin.py).

Usage: python scripts/test-times.py DIR   -> prints one table and a closing `tests: N passed, N failed` line.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.timing_plugin import format_table


def main(directory: str) -> int:
    """Print the merged table and totals; exit 1 when any test failed or errored."""
    modules: dict[str, float] = {}
    outcomes: Counter[str] = Counter()
    for f in sorted(Path(directory).glob("*.json")):
        data = json.loads(f.read_text())
        for m, s in data["modules"].items():
            modules[m] = modules.get(m, 0.0) + s
        outcomes.update(data["outcomes"])
    print("=" * 30 + " time per test module (s), all sessions " + "=" * 30)
    for line in format_table(modules):
        print(line)
    failed = outcomes["failed"] + outcomes["error"]
    tail = f", {outcomes['skipped']} skipped" if outcomes["skipped"] else ""
    print(f"tests: {outcomes['passed']} passed, {failed} failed{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
