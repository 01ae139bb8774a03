"""Benchmark 7's pure parts (issue #19): the per-quiescer summaries, the qga / agent ratios and the table."""

from __future__ import annotations

from typing import Any

from bench import qga_freeze, report


def samples(window: list[float], guest: list[float], stall: list[float]) -> dict[str, list[Any]]:
    """One quiescer's raw samples as one_backup collects them."""
    n = len(window)
    return {"window": window, "guest": guest, "stall": stall, "consistency": ["FILE_SYSTEM"] * n,
            "freeze": [5.0] * n, "snapshot": [30.0] * n, "thaw": [4.0] * n}


def result() -> dict[str, Any]:
    """A result shaped like run_bench's, from made-up samples."""
    rows = {"agent": qga_freeze._row(samples([100.0, 120.0, 140.0], [50.0, 60.0, 70.0], [80.0, 90.0, 99.0])),
            "qga": qga_freeze._row(samples([150.0, 180.0, 300.0], [], [120.0, 135.0, 200.0]))}
    return {"size": "1 GiB", "reps": 3, "quiescers": rows,
            "qga_over_agent_window_p50": qga_freeze._ratio(rows, "freeze_window_ms"),
            "qga_over_agent_stall_p50": qga_freeze._ratio(rows, "writer_max_stall_ms"), "load_avg_at_end": [1.0]}


def test_ratios_are_qga_p50_over_agent_p50() -> None:
    """180 / 120 for the window, 135 / 90 for the stall."""
    r = result()
    assert r["qga_over_agent_window_p50"] == 1.5 and r["qga_over_agent_stall_p50"] == 1.5


def test_table_row_per_quiescer_and_no_guest_frozen_for_qga() -> None:
    """One row each; qga's guest frozen cells are '-' (qemu-ga reports no freeze time); the report renders it."""
    rows = qga_freeze.render(result())
    agent = [c.strip() for c in next(r for r in rows if r.startswith("| agent")).split("|")[1:-1]]
    qga = [c.strip() for c in next(r for r in rows if r.startswith("| qga")).split("|")[1:-1]]
    assert agent[:8] == ["agent", "3", "120.0", "140.0", "60.0", "70.0", "90.0", "99.0"]
    assert qga[:8] == ["qga", "3", "180.0", "300.0", "-", "-", "135.0", "200.0"]
    assert "## 7. Freeze window: qemu-guest-agent" in report.markdown(_full_result(result()))


def _full_result(qga: dict[str, Any]) -> dict[str, Any]:
    """The whole run's result around benchmark 7 (for report.markdown)."""
    machine = {"cpu_model": "x", "cores": 2, "memory_gib": 1, "os": "d", "kernel": "k", "load_avg_at_start": [0]}
    versions = {"vmbackup": "0", "libvirt": "9", "qemu": "7", "virtnbdbackup": None, "virt_backup": None}
    return {"smoke": False, "started": "now", "machine": machine, "versions": versions, "virt_type": "qemu",
            "cache_state": "-", "benchmarks": {"qga": qga}}
