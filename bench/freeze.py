"""Benchmark 1: the freeze window (agent FIFREEZE -> atomic snapshot -> thaw) for data disks holding 1, 4, 16 GiB.

One registered lab VM; for each size its /data1 is replaced (VM off) by a disk filled with real random data on
the host, the VM is booted again, and ``freeze_reps`` full vmbackup backups run (each point deleted afterwards).
"""

from __future__ import annotations

from typing import Any

from bench.common import GiB, drop_caches, summary
from bench.guest import BenchVm, swap_data_disk
from bench.vmbackup_backup import backup_once
from controller.settings import Settings

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
    phases: dict[str, list[float]] = {"freeze": [], "snapshot": [], "thaw": []}
    for _ in range(reps):
        drop_caches()
        r = backup_once(settings, vm.name, keep=False)
        if r["freeze_window_ms"] is not None:
            windows.append(r["freeze_window_ms"])
        durations.append(r["wall_s"])
        for k, v in r["phase_ms"].items():
            phases[k].append(v)
        copied.append(r["bytes_written"])
        consistency.append(r["consistency"])  # a backup without a freeze window is visible here, not dropped
    res: dict[str, Any] = {
        "size": label(vm.data_bytes),
        "data_bytes": vm.data_bytes,
        "boot_s": round(vm.boot_seconds, 2),
        "freeze_window_ms": summary(windows),
        "backup_wall_s": summary(durations),
        "phase_ms": {k: summary(v) for k, v in phases.items()},
        "bytes_written": copied,
        "consistency": consistency,
    }
    print(f"  freeze {res['size']}: p50 {res['freeze_window_ms']['median']} ms, "
          f"p95 {res['freeze_window_ms']['p95']} ms over {reps} backups", flush=True)
    return res


def result(sizes: list[dict[str, Any]], vm: BenchVm) -> dict[str, Any]:
    """The benchmark's result from the per-size measurements."""
    medians = [s["freeze_window_ms"]["median"] for s in sizes if s["freeze_window_ms"]["median"] is not None]
    return {
        "sizes": sizes,
        "largest_over_smallest_median": round(max(medians) / min(medians), 3) if len(medians) >= 2 else None,
        "vm": vm.name,
        "register_s": round(vm.register_seconds or 0, 1),
        "method": "one registered lab VM, /data1 swapped per size (filled on the host while the VM is off); "
                  "vmbackup backups; freeze_window_ms from the agent's frozen reply to its thaw reply, phase_ms "
                  "from the job's phases (freeze = the Freeze RPC before the window opens; snapshot, thaw inside)",
    }
