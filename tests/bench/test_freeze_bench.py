"""Benchmark 1's pure parts (issue #16): guest_frozen_ms per size, its flatness ratio, the table's new columns."""

from __future__ import annotations

from typing import Any

from bench import freeze, report
from bench.common import summary


def size(label: str, frozen: list[float], stalls: list[float]) -> dict[str, Any]:
    """One size's measurement as measure_size returns it (the parts the table reads)."""
    return {
        "size": label, "freeze_window_ms": summary([90.0, 95.0]), "guest_frozen_ms": summary(frozen),
        "writer_max_stall_ms": summary(stalls),
        "stall_over_guest_frozen_ms": summary([s - f for s, f in zip(stalls, frozen, strict=True)]),
        "backup_wall_s": summary([8.0]), "phase_ms": {"snapshot": summary([40.0])},
    }


def test_result_reports_how_flat_guest_frozen_is_across_sizes() -> None:
    """The largest over the smallest median guest_frozen_ms, beside the window's ratio."""
    vm: Any = type("V", (), {"name": "vm", "register_seconds": 1.0})()
    r = freeze.result([size("1 GiB", [40.0, 50.0, 60.0], [60.0] * 3), size("4 GiB", [70.0, 80.0, 90.0], [99.0] * 3)],
                      vm)
    assert r["guest_frozen_largest_over_smallest_median"] == 1.6
    assert r["largest_over_smallest_median"] == 1.0


def test_table_shows_guest_frozen_and_the_writers_stall() -> None:
    """Each size's row carries guest frozen p50/p95, the writer's longest stall p50 and stall - frozen max."""
    rows = report._freeze({"sizes": [size("1 GiB", [40.0, 50.0, 60.0], [61.0, 72.0, 95.0])]})
    assert "guest frozen p50 ms" in rows[0] and "writer's longest stall p50 ms" in rows[0]
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[:6] == ["1 GiB", "2", "50.0", "60.0", "72.0", "35.0"]


def test_stall_phase_is_the_phase_the_gap_overlaps_most() -> None:
    """A writer gap is attributed to the job phase it overlaps most; a gap outside every phase is 'none'."""
    from bench.freeze import stall_phase

    windows = {"freeze": [10.0, 10.05], "snapshot": [10.05, 10.1], "thaw": [10.1, 10.12], "copy": [10.13, 14.0]}
    assert stall_phase(10.02, 10.11, windows) == "snapshot"
    assert stall_phase(11.0, 11.2, windows) == "copy"
    assert stall_phase(20.0, 20.1, windows) == "none"
