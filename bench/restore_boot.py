"""Benchmark 4: restore + boot-check of a recovery point vs a cold boot of the same VM from its own disks.

Issue #18 item 2: the instant path (the throwaway VM boots through overlays over the vault point, its filesystems
are checked while it boots) against a cold boot of the original, same run (goal: <= 1.1 x), and the instant
boot-check of a point whose data disk holds 16 GiB against one holding 2 GiB (goal: no more than + 10 %). Also: an
instant restore's time until the new VM is defined and started, and until SSH answers.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from bench.common import drop_caches, ratio, summary
from bench.exceptions import BenchSetupFailed
from bench.guest import BenchVm, cold_boot_seconds, swap_data_disk, wait_agent
from bench.vmbackup_backup import backup_once
from controller.jobs.store import JobStore
from controller.lab.sshexec import wait_for_ssh
from controller.restore import instant
from controller.restore.bootcheck import BootChecker
from controller.restore.restore import Restorer
from controller.restore.undo import remove_domain
from controller.settings import Settings
from controller.state import open_state
from controller.vault import pins
from controller.virt import metadata as labmeta
from controller.virt.connection import connection

NAME = "restore"
GiB = 1 << 30
BIG = 16 * GiB


def boot_checks(
    settings: Settings, point: str, reps: int, instant_path: bool = True, between: Callable[[], None] | None = None
) -> dict[str, Any]:
    """reps boot-checks of a point (cache dropped before each; ``between()`` after each): durations, boot phases,
    each job's phases, how the boot was proven, verdicts."""
    total, boots, passed, phases, proofs = [], [], [], [], []
    for _ in range(reps):
        drop_caches()
        with BootChecker(settings) as checker:
            r = checker.run(point, instant=instant_path)
        with open_state(settings) as st:
            phases.append({p.name: round(p.duration_s or 0.0, 2) for p in JobStore(st.db).get(r.job_id).phases})
        proofs.append(next((c.detail for c in r.checks if c.name == "boot"), ""))
        total.append(r.duration_s)
        passed.append(r.passed)
        if r.boot_seconds is not None:
            boots.append(r.boot_seconds)
        kind = "instant" if instant_path else "copy"
        print(f"  boot-check ({kind}): {r.duration_s:.1f} s (boot {r.boot_seconds} s, {proofs[-1]}, "
              f"passed={r.passed}; phases {phases[-1]})", flush=True)
        if between is not None:
            between()
    return {"total_s": summary(total), "boot_phase_s": summary(boots), "passed": passed, "phases_s": phases,
            "boot_proof": proofs}


def instant_restore_seconds(settings: Settings, point: str, name: str) -> dict[str, float]:
    """restore --instant --start of a point: seconds until started, and until SSH answers; then removed again."""
    drop_caches()
    t0 = time.monotonic()
    with Restorer(settings) as r:
        res = r.restore_as_new(point, name, start=True, instant=True)
        started = time.monotonic() - t0
        try:
            with connection(settings.uri) as lv:
                meta = labmeta.read(lv.lookupByName(name))
            assert meta is not None
            wait_for_ssh(meta, 300.0)
            ssh = time.monotonic() - t0
        finally:
            with connection(settings.uri) as lv:
                remove_domain(lv, name)
            pins.release(r.vault.root, instant.find_pin(r.vault, name))
            shutil.rmtree(r.default_pool_dir(name), ignore_errors=True)
    print(f"  instant restore of {point}: started in {started:.1f} s, SSH after {ssh:.1f} s", flush=True)
    return {"started_s": round(started, 2), "ssh_s": round(ssh, 2), "bytes_copied": res.bytes_copied}


def run_bench(settings: Settings, vm: BenchVm, reps: int) -> dict[str, Any]:
    """Points of the VM as booted (plan.freeze_sizes[0] on /data1, 1 GiB; with its 2 GiB system disk), then with
    16 GiB on /data1; instant boot-checks of both, cold boots of the original
    (cache dropped before each measurement). The copy path (`BootChecker.run(instant=False)`) is not re-measured:
    it costs ~1.6 x a cold boot (results before issue #18) and would add minutes to every run."""
    small_bytes = vm.data_bytes  # the VM as the run booted it (plan.freeze_sizes[0] of data on /data1)
    small = backup_once(settings, vm.name, keep=True)["point_id"]
    cold: list[float] = []
    cold_agent: list[float] = []

    def cold_boot() -> None:
        """One cold boot of the original (after each boot-check: on a shared host both see the same load), until
        SSH answers and until the agent answers as well (the proofs a boot-check waits for)."""
        drop_caches()
        ssh_s, agent_s = cold_boot_seconds(settings, vm, agent=True)
        cold.append(ssh_s)
        cold_agent.append(agent_s or ssh_s)
        print(f"  cold boot: SSH after {ssh_s:.1f} s, agent after {cold_agent[-1]:.1f} s", flush=True)

    checks = boot_checks(settings, small, reps, between=cold_boot)
    ready_small = instant_restore_seconds(settings, small, f"{vm.name}-i2")
    # the fill needs raw + qcow2 at once (the raw is gone before the backup copies the qcow2 into the vault)
    big_bytes = BIG if shutil.disk_usage(settings.home).free > 2 * BIG + 12 * GiB else BIG // 2
    try:
        swap_data_disk(settings, vm, big_bytes)
    except BenchSetupFailed:  # a loaded 2-core host: give the agent more time after that boot
        wait_agent(vm, settings, timeout=420.0)
    big = backup_once(settings, vm.name, keep=True)["point_id"]
    checks_big = boot_checks(settings, big, max(2, reps - 1))
    ready_big = instant_restore_seconds(settings, big, f"{vm.name}-i16")
    c, b, ba, cb = checks["total_s"], summary(cold), summary(cold_agent), checks_big["total_s"]
    return {
        "vm": vm.name,
        "point_id": small,
        "point_id_16g": big,
        "restore_bootcheck_s": c,
        "bootcheck_boot_phase_s": checks["boot_phase_s"],
        "bootcheck_phases_s": checks["phases_s"],
        "bootcheck_boot_proof": checks["boot_proof"],
        "order": "boot-check and cold boot alternate (one each per repetition), so both see the same host load",
        "bootcheck_passed": checks["passed"] + checks_big["passed"],
        "cold_boot_to_ssh_s": b,
        "cold_boot_to_agent_s": ba,
        # the goal's ratio: a cold boot until the same proofs the boot-check gives (SSH and the agent answering)
        "ratio_restore_bootcheck_to_cold_boot": ratio(c["median"], ba["median"]),
        "ratio_restore_bootcheck_to_cold_boot_ssh_only": ratio(c["median"], b["median"]),
        "goal_ratio_to_cold_boot": 1.1,
        "bootcheck_16g_s": cb,
        "small_point_data_bytes": small_bytes,
        "big_point_data_bytes": big_bytes,
        "ratio_16g_to_2g_bootcheck": ratio(cb["median"], c["median"]),  # see *_point_data_bytes for the sizes
        "goal_ratio_16g_to_2g": 1.1,
        "instant_restore_2g": ready_small,
        "instant_restore_16g": ready_big,
        "note": "boot-check (instant) = verify + overlays + define + boot (the first proof: console login prompt / "
                "multi-user target or the guest sshd's banner) with fsck of the point "
                "through throwaway overlays meanwhile + agent probe + power-off + cleanup; cold boot = start of the "
                "original VM until SSH answers, and until the agent answers too (the ratio uses the latter: the same "
                "proofs); /data1 holds 1 GiB (16 GiB for the _16g rows, 8 GiB when space is short) of random data",
    }
