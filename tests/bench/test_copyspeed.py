"""The copy benchmark's goal table (issue #16): ratios from the medians, met or not against each target."""

from __future__ import annotations

from typing import Any

from bench.copyspeed import DIRECT, RESTORE, goals


def _case(seconds: dict[str, float]) -> dict[str, Any]:
    """A measure() result holding only the medians goals() reads."""
    return {"methods": {k: {"seconds": {"median": v}} for k, v in seconds.items()}}


def test_goals_invert_time_ratios_and_judge_each_target() -> None:
    """Throughput goals are contender time / vmbackup time; the thin goal is vmbackup time / cp time."""
    filled = _case({"vmbackup": 4.0, RESTORE: 5.0, "cp --sparse=always": 4.4, DIRECT: 4.0})
    thin = _case({"vmbackup": 0.9, "cp --sparse=always": 0.75})
    g = goals(filled, thin)
    assert g["filled copy throughput / O_DIRECT qemu-img"] == {"measured": 1.0, "target": ">= 0.95", "met": True}
    assert g["filled copy throughput / cp --sparse=always"]["measured"] == 1.1
    assert g["thin raw copy time / cp time"] == {"measured": 1.2, "target": "<= 1.0", "met": False}
    assert g["filled restore throughput / O_DIRECT qemu-img"] == {"measured": 0.8, "target": ">= 0.95", "met": False}


def test_a_missing_median_is_not_judged() -> None:
    """A method without a median gives no ratio and no verdict, rather than a made-up one."""
    filled = _case({"vmbackup": None, RESTORE: 5.0, "cp --sparse=always": 4.4, DIRECT: 4.0})  # type: ignore[dict-item]
    g = goals(filled, _case({"vmbackup": 1.0, "cp --sparse=always": 1.0}))
    assert g["filled copy throughput / O_DIRECT qemu-img"] == {"measured": None, "target": ">= 0.95", "met": None}
    assert g["thin raw copy time / cp time"]["met"] is True
