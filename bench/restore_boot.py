"""Benchmark 4: restore + boot-check of a recovery point vs a cold boot of the same VM from its own disks."""

from __future__ import annotations

from typing import Any

from bench.common import drop_caches, ratio, summary
from bench.guest import BenchVm, cold_boot_seconds
from bench.vmbackup_backup import backup_once
from controller.restore.bootcheck import BootChecker
from controller.settings import Settings

NAME = "restore"


def run_bench(settings: Settings, vm: BenchVm, reps: int) -> dict[str, Any]:
    """One backup, then reps boot-checks of it and reps cold boots of the VM (cache dropped before each)."""
    point = backup_once(settings, vm.name, keep=True)["point_id"]
    checks, boots_in_check, passed = [], [], []
    for _ in range(reps):
        drop_caches()
        with BootChecker(settings) as checker:
            r = checker.run(point)
        checks.append(r.duration_s)
        passed.append(r.passed)
        if r.boot_seconds is not None:
            boots_in_check.append(r.boot_seconds)
        print(f"  boot-check: {r.duration_s:.1f} s (boot {r.boot_seconds} s, passed={r.passed})")
    cold = []
    for _ in range(reps):
        drop_caches()
        cold.append(cold_boot_seconds(settings, vm))
        print(f"  cold boot to SSH: {cold[-1]:.1f} s")
    c, b = summary(checks), summary(cold)
    return {
        "vm": vm.name,
        "point_id": point,
        "restore_bootcheck_s": c,
        "bootcheck_boot_phase_s": summary(boots_in_check),
        "bootcheck_passed": passed,
        "cold_boot_to_ssh_s": b,
        "ratio_restore_bootcheck_to_cold_boot": ratio(c["median"], b["median"]),
        "note": "boot-check = verify + copy out + define + boot (console login) + agent/SSH probes + shutdown + "
                "fsck + cleanup; cold boot = start of the original VM until SSH answers",
    }
