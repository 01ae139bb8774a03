"""Benchmark 3's table: each vmbackup row (default and --compression none) gets its issue #16 ratios against
virtnbdbackup, computed from the medians in the results."""

from __future__ import annotations

from typing import Any

from bench.report import _full


def contender(wall: float, stall: float) -> dict[str, Any]:
    """A contender's summary as contenders._results writes it."""
    return {"status": "ok", "wall_s": {"median": wall}, "bytes_written": {"median": 1 << 30},
            "max_stall_ms": {"median": stall}, "ratio_to_vmbackup": {}}


def test_goal_rows_for_both_vmbackup_rows() -> None:
    """wall and stall ratios to virtnbdbackup per vmbackup row; none without a virtnbdbackup result."""
    cs = {"vmbackup": contender(6.0, 120.0), "vmbackup --compression none": contender(4.0, 90.0),
          "virtnbdbackup": contender(8.0, 300.0)}
    text = "\n".join(_full({"contenders": cs}))
    assert "| vmbackup wall / virtnbdbackup wall | 0.750 | <= 0.8 |" in text
    assert "| vmbackup --compression none wall / virtnbdbackup wall | 0.500 | <= 0.8 |" in text
    assert "| vmbackup stall / virtnbdbackup stall | 0.400 | <= 1.0 |" in text
    cs["virtnbdbackup"] = {"status": "not run: not installed"}
    assert "goal (issue #16)" not in "\n".join(_full({"contenders": cs}))
