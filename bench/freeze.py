"""Benchmark 1: the freeze window (agent FIFREEZE -> atomic snapshot -> thaw) for data disks holding 1, 4, 16 GiB.

One registered lab VM; for each size its /data1 is replaced (VM off) by a disk filled with real random data on
the host, the VM is booted again, and ``freeze_reps`` full vmbackup backups run (each point deleted afterwards),
each with the guest writer (a timestamp + fsync every 10 ms on /data1) running: the point's ``guest_frozen_ms`` (the
agent's first FIFREEZE to last FITHAW) and the writer's longest stall over the whole backup are recorded beside the
controller's window (issue #16: guest_frozen_ms p50 <= 60, p95 <= 150 ms; longest stall <= guest_frozen_ms + 30 ms).
After each boot one backup runs unmeasured first (not in smoke runs): the agent's first freeze after its start pays
for cold code and its first threads (a thread start measured 46 ms cold vs 3-4 ms warm in the TCG guest), which an
agent that has run for days does not.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.common import GiB, drop_caches, summary
from bench.guest import BenchVm, gaps_of, guest_clock_offset, start_writer, stop_writer_stamps, swap_data_disk
from bench.vmbackup_backup import backup_once
from controller.settings import Settings
from controller.state import open_state

NAME = "freeze"


def label(nbytes: int) -> str:
    """'1 GiB' / '64 MiB'."""
    return f"{nbytes / GiB:g} GiB" if nbytes >= GiB else f"{nbytes >> 20} MiB"


def reps_for(size: int, reps: int) -> int:
    """16 GiB and more: at most 3 repetitions (each backup copies the whole disk)."""
    return reps if size < 16 * GiB else min(reps, 3)


def measure_size(settings: Settings, vm: BenchVm, reps: int, swap_to: int | None = None) -> dict[str, Any]:
    """reps backups of the registered VM (after giving /data1 swap_to bytes of data, if set)."""
    if swap_to is not None:
        swap_data_disk(settings, vm, swap_to)
    reps = reps_for(vm.data_bytes, reps)
    windows, durations, copied, consistency = [], [], [], []
    frozen, stalls, over = [], [], []
    stall_phases: list[str] = []
    phases: dict[str, list[float]] = {"freeze": [], "snapshot": [], "thaw": []}
    if reps > 1:
        backup_with_writer(settings, vm)  # warm-up after the boot, not measured (module docstring)
    for _ in range(reps):
        r, gaps, guest_ms = backup_with_writer(settings, vm)
        stall = max(gaps) * 1000
        stalls.append(stall)
        if guest_ms is not None:
            frozen.append(guest_ms)
            over.append(stall - guest_ms)
        if r["freeze_window_ms"] is not None:
            windows.append(r["freeze_window_ms"])
        durations.append(r["wall_s"])
        for k, v in r["phase_ms"].items():
            phases[k].append(v)
        copied.append(r["bytes_written"])
        stall_phases.append(r["longest_stall_phase"])
        consistency.append(r["consistency"])  # a backup without a freeze window is visible here, not dropped
    res: dict[str, Any] = {
        "size": label(vm.data_bytes),
        "data_bytes": vm.data_bytes,
        "boot_s": round(vm.boot_seconds, 2),
        "freeze_window_ms": summary(windows),
        "guest_frozen_ms": summary(frozen),
        "writer_max_stall_ms": summary(stalls),
        "stall_over_guest_frozen_ms": summary(over),
        "longest_stall_phases": dict(Counter(stall_phases)),  # in which job phase each backup's longest gap fell
        "backup_wall_s": summary(durations),
        "phase_ms": {k: summary(v) for k, v in phases.items()},
        "bytes_written": copied,
        "consistency": consistency,
    }
    print(f"  freeze {res['size']}: window p50 {res['freeze_window_ms']['median']} ms, "
          f"p95 {res['freeze_window_ms']['p95']} ms; guest frozen p50 {res['guest_frozen_ms']['median']} ms, "
          f"p95 {res['guest_frozen_ms']['p95']} ms; writer's longest stall p50 {res['writer_max_stall_ms']['median']} "
          f"ms over {reps} backups, in phases {res['longest_stall_phases']}", flush=True)
    return res


def backup_with_writer(settings: Settings, vm: BenchVm) -> tuple[dict[str, Any], list[float], float | None]:
    """One full backup (page cache dropped first) while the guest's timestamp writer runs: the backup's result
    (with ``longest_stall_phase``, the job phase the writer's longest gap overlapped most), the writer's gaps (s)
    and the point's guest_frozen_ms; the point is deleted."""
    drop_caches()
    offset = guest_clock_offset(vm)
    start_writer(vm)
    try:
        r = backup_once(settings, vm.name, keep=True)
    finally:
        stamps = stop_writer_stamps(vm)
    gaps = gaps_of(stamps)
    i = max(range(len(gaps)), key=gaps.__getitem__)
    r["longest_stall_phase"] = stall_phase(stamps[i] - offset, stamps[i + 1] - offset, r["phase_windows"])
    return r, gaps, _guest_frozen_ms_and_delete(settings, r["point_id"])


def stall_phase(start: float, end: float, windows: dict[str, list[float]]) -> str:
    """The phase whose [start, end] overlaps the gap [start, end] most (host epoch seconds); "none" if none does."""
    best, most = "none", 0.0
    for name, (a, b) in windows.items():
        overlap = min(end, b) - max(start, a)
        if overlap > most:
            best, most = name, overlap
    return best


def _guest_frozen_ms_and_delete(settings: Settings, point_id: str) -> float | None:
    """The point's guest_frozen_ms (None: not measured); the point is deleted."""
    with open_state(settings) as st:
        point = st.vault.get_point(point_id)
        value = point.manifest.guest_frozen_ms
        st.vault.delete_point(point)
    return value


def result(sizes: list[dict[str, Any]], vm: BenchVm) -> dict[str, Any]:
    """The benchmark's result from the per-size measurements."""
    medians = [s["freeze_window_ms"]["median"] for s in sizes if s["freeze_window_ms"]["median"] is not None]
    guest = [s["guest_frozen_ms"]["median"] for s in sizes if s.get("guest_frozen_ms", {}).get("median") is not None]
    return {
        "sizes": sizes,
        "largest_over_smallest_median": round(max(medians) / min(medians), 3) if len(medians) >= 2 else None,
        "guest_frozen_largest_over_smallest_median": round(max(guest) / min(guest), 3) if len(guest) >= 2 else None,
        "vm": vm.name,
        "register_s": round(vm.register_seconds or 0, 1),
        "method": "one registered lab VM, /data1 swapped per size (filled on the host while the VM is off); "
                  "vmbackup backups, each with the guest writer (timestamp + fsync every 10 ms on /data1) running; "
                  "freeze_window_ms from the agent's frozen reply to its thaw reply, guest_frozen_ms the agent's "
                  "first FIFREEZE to last FITHAW, writer_max_stall_ms the writer's longest gap over the whole backup "
                  "(freeze and commit pivot included); phase_ms from the job's phases (freeze = the Freeze RPC "
                  "before the window opens; snapshot, thaw inside)",
    }
