"""Benchmark 1: the freeze window (agent FIFREEZE -> atomic snapshot -> thaw) for data disks holding 1, 4, 16 GiB.

One lab VM per size, its /data1 filled with real random data on the host before boot, registered for real;
then ``freeze_reps`` full vmbackup backups (each point deleted afterwards to keep the disk free).
"""

from __future__ import annotations

from typing import Any

from bench.common import GiB, drop_caches, summary
from bench.env import Plan
from bench.guest import BenchVm, boot_vm, destroy_vm, register
from bench.vmbackup_backup import backup_once
from controller.settings import Settings

NAME = "freeze"


def label(nbytes: int) -> str:
    """'1 GiB' / '64 MiB'."""
    return f"{nbytes / GiB:g} GiB" if nbytes >= GiB else f"{nbytes >> 20} MiB"


def measure_vm(settings: Settings, vm: BenchVm, reps: int) -> dict[str, Any]:
    """reps backups of a registered VM: freeze windows, durations, bytes."""
    windows, durations, copied = [], [], []
    for _ in range(reps):
        drop_caches()
        r = backup_once(settings, vm.name, keep=False)
        if r["freeze_window_ms"] is not None:
            windows.append(r["freeze_window_ms"])
        durations.append(r["wall_s"])
        copied.append(r["bytes_written"])
    return {
        "vm": vm.name,
        "data_bytes": vm.data_bytes,
        "boot_s": round(vm.boot_seconds, 2),
        "register_s": round(vm.register_seconds or 0, 2),
        "freeze_window_ms": summary(windows),
        "backup_wall_s": summary(durations),
        "bytes_written": copied,
    }


def run(settings: Settings, plan: Plan, prefix: str, keep_first: bool = False) -> tuple[dict[str, Any], BenchVm | None]:
    """Measure every size; with keep_first, the first (smallest) VM is left running and returned for reuse."""
    sizes: list[dict[str, Any]] = []
    kept: BenchVm | None = None
    for i, size in enumerate(plan.freeze_sizes):
        reps = plan.freeze_reps if size < 16 * GiB else min(plan.freeze_reps, 3)
        name = f"{prefix}freeze-{size >> 20}m"
        vm = boot_vm(settings, name, size)
        try:
            register(settings, vm)
            res = measure_vm(settings, vm, reps)
        except BaseException:
            destroy_vm(settings, name)
            raise
        res["size"] = label(size)
        sizes.append(res)
        print(f"  freeze {label(size)}: p50 {res['freeze_window_ms']['median']} ms, "
              f"p95 {res['freeze_window_ms']['p95']} ms over {reps} backups")
        if keep_first and i == 0:
            kept = vm
        else:
            destroy_vm(settings, name)
    medians = [s["freeze_window_ms"]["median"] for s in sizes if s["freeze_window_ms"]["median"] is not None]
    flat = None
    if len(medians) >= 2:
        flat = round(max(medians) / min(medians), 3)
    return {"sizes": sizes, "largest_over_smallest_median": flat,
            "method": "vmbackup backup of a registered lab VM; freeze_window_ms as the agent reports it"}, kept
