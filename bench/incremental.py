"""Benchmark 6: incremental backups (issue #15): a full, then incrementals after 1 % of the data disk is rewritten.

Two lab VMs with identical setups (the lab image, /data1 filled with random data on the host before boot), run one
after the other so they never share the 2 cores: the first is registered and backed up by vmbackup (a full with
``full=True``, then rewrite + incremental per repetition, then idle incrementals); its twin gets the same rewrites
between ``virtnbdbackup -l full`` and ``-l inc`` runs into one output directory (how virtnbdbackup chains). Every
rewrite is the same list of runs of 1-4 MiB at random offsets inside the fill files (dd conv=notrunc,fsync from
/dev/urandom), so the changed amount is known. Page cache dropped before every measured backup.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import GiB, MiB, allocated, drop_caches, ratio, run, summary
from bench.contenders import qga_ok
from bench.exceptions import BenchError
from bench.guest import CHUNK, BenchVm, boot_vm, destroy_vm, register, wait_agent
from controller.backup.engine import BackupEngine, BackupRequest
from controller.jobs.store import JobStore
from controller.settings import Settings
from controller.state import open_state

NAME = "incremental"
SMOKE_BYTES = 256 * MiB
FULL_SIZES = (16 * GiB, 8 * GiB, 4 * GiB, 2 * GiB, 1 * GiB)
SLOT = 4 * MiB  # a run starts on a 4 MiB slot of a fill file and is 1-4 MiB long, so runs never overlap
SEED = 15  # the same rewrites on both VMs and in every run of the benchmark
# the windows the idle overhead excludes (the issue: "<= 2 s beyond freeze + commit")
IDLE_EXCLUDED = ("freeze", "snapshot", "thaw", "commit")
TARGETS = {"inc_over_full_wall": 0.1, "stored_over_changed": 1.2, "vmbackup_over_virtnbdbackup_inc_wall": 1.0,
           "vmbackup_over_virtnbdbackup_inc_stored": 1.0, "idle_overhead_s": 2.0}


@dataclass(frozen=True, order=True)
class Run:
    """One rewrite: length bytes at offset inside the fill file name (all whole MiB)."""

    name: str
    offset: int
    length: int

    def dd(self) -> str:
        """The guest command that rewrites it with fresh random data and fsyncs it."""
        return (f"dd if=/dev/urandom of=/data1/{self.name} bs=1M seek={self.offset // MiB} "
                f"count={self.length // MiB} iflag=fullblock conv=notrunc,fsync status=none")


def pick_size(smoke: bool, free_bytes: int) -> tuple[int, list[str]]:
    """The data disk size: 256 MiB in smoke mode, else the largest of 16..1 GiB with 3 x size + 10 GiB free."""
    if smoke:
        return SMOKE_BYTES, []
    for size in FULL_SIZES:
        if 3 * size + 10 * GiB <= free_bytes:
            notes = [] if size == FULL_SIZES[0] else [
                f"data disk {size // GiB} GiB instead of 16 GiB: only {free_bytes / GiB:.0f} GiB free"]
            return size, notes
    raise BenchError(f"not even {FULL_SIZES[-1] // GiB} GiB fits: {free_bytes / GiB:.1f} GiB free")


def rewrite_bytes(data_bytes: int) -> int:
    """1 % of the data, in whole MiB (at least 1 MiB)."""
    return max(MiB, data_bytes // 100 // MiB * MiB)


def fill_files(data_bytes: int) -> list[tuple[str, int]]:
    """The files bench.guest.filled_data_disk writes on /data1: (name, size)."""
    out, left, k = [], data_bytes, 0
    while left > 0:
        n = min(CHUNK, left)
        out.append((f"fill-{k:05d}.bin", n))
        left, k = left - n, k + 1
    return out


def rewrite_runs(data_bytes: int, total: int, rng: random.Random) -> list[Run]:
    """Non-overlapping runs of 1-4 MiB at random slots of the fill files, summing to exactly total bytes."""
    files = dict(fill_files(data_bytes))
    slots = [(name, off) for name, size in files.items() for off in range(0, size - MiB + 1, SLOT)]
    rng.shuffle(slots)
    runs, left = [], total
    for name, off in slots:
        if left <= 0:
            break
        room = min(SLOT, (files[name] - off) // MiB * MiB)
        n = min(rng.randint(1, SLOT // MiB) * MiB, room, left)
        runs.append(Run(name, off, n))
        left -= n
    if left > 0:
        raise BenchError(f"{total} bytes of rewrites do not fit in {data_bytes} bytes of data")
    return sorted(runs)


def rewrite(vm: BenchVm, runs: list[Run]) -> int:
    """Apply the runs in the guest (one SSH command); return the bytes written."""
    vm.ssh(" && ".join([r.dd() for r in runs] + ["sync"]), timeout=1800)
    return sum(r.length for r in runs)


def vmbackup_once(settings: Settings, vm: BenchVm, full: bool) -> dict[str, Any]:
    """One vmbackup backup, cold cache: wall, what the engine reports, the job's phases, the point's stored bytes."""
    drop_caches()
    with open_state(settings) as st:
        t0 = time.monotonic()
        with BackupEngine(st) as engine:
            res = engine.run(BackupRequest(vm=vm.name, full=full))
        wall = time.monotonic() - t0
        phases = {p.name: round(p.duration_s or 0.0, 4) for p in JobStore(st.db).get(res.job_id).phases}
        pdir = st.vault.point_path(st.vault.get_point(res.point_id))
    return {"wall_s": wall, "point_type": res.point_type, "full_reason": res.full_reason, "parent": res.parent,
            "changed_bytes": res.changed_bytes, "bytes_copied": res.bytes_copied, "stored_bytes": allocated(pdir),
            "engine_duration_s": res.duration_s, "freeze_window_ms": res.freeze_window_ms, "phase_s": phases,
            "consistency": res.consistency}


def expect(sample: dict[str, Any], point_type: str) -> None:
    """Refuse a point of the wrong type: a full where an incremental was expected is no incremental number."""
    if sample["point_type"] != point_type:
        raise BenchError(f"expected a {point_type} point, got a {sample['point_type']} "
                         f"(full_reason: {sample['full_reason']})")


def idle_overhead(sample: dict[str, Any]) -> float:
    """Wall time beyond the freeze, snapshot, thaw and commit phases."""
    return float(sample["wall_s"]) - sum(float(sample["phase_s"].get(k, 0.0)) for k in IDLE_EXCLUDED)


def measure_vmbackup(settings: Settings, vm: BenchVm, rewrites: list[list[Run]], idle_reps: int) -> dict[str, Any]:
    """Full, then per rewrite an incremental, then idle incrementals, on the registered VM."""
    full = vmbackup_once(settings, vm, full=True)
    expect(full, "full")
    print(f"  vmbackup full: {full['wall_s']:.1f} s, {full['stored_bytes'] / MiB:.0f} MiB stored", flush=True)
    incs, idles = [], []
    for runs in rewrites:
        written = rewrite(vm, runs)
        s = vmbackup_once(settings, vm, full=False)
        expect(s, "incremental")
        incs.append({**s, "written_bytes": written})
        print(f"  vmbackup inc: {s['wall_s']:.1f} s, changed {(s['changed_bytes'] or 0) / MiB:.1f} MiB, "
              f"stored {s['stored_bytes'] / MiB:.1f} MiB (wrote {written / MiB:.0f} MiB)", flush=True)
    for _ in range(idle_reps):
        s = vmbackup_once(settings, vm, full=False)
        expect(s, "incremental")
        idles.append({**s, "overhead_s": idle_overhead(s)})
        print(f"  vmbackup idle inc: {s['wall_s']:.1f} s, beyond freeze+snapshot+thaw+commit "
              f"{idles[-1]['overhead_s']:.2f} s, changed {(s['changed_bytes'] or 0) / MiB:.1f} MiB", flush=True)
    return {"vm": vm.name, "full": full, "incrementals": incs, "idle": idles,
            "inc_wall_s": summary([s["wall_s"] for s in incs]),
            "inc_changed_bytes": summary([s["changed_bytes"] or 0 for s in incs]),
            "inc_stored_bytes": summary([s["stored_bytes"] for s in incs]),
            "idle_wall_s": summary([s["wall_s"] for s in idles]),
            "idle_overhead_s": summary([s["overhead_s"] for s in idles])}


def virtnbdbackup_once(settings: Settings, vm: BenchVm, level: str, target: Path) -> dict[str, Any]:
    """One `virtnbdbackup -l level` into target, cold cache: wall and the bytes it added to target."""
    before = allocated(target) if target.exists() else 0
    drop_caches()
    t0 = time.monotonic()
    run(["virtnbdbackup", "-U", settings.uri, "-d", vm.name, "-l", level, "-o", str(target)], timeout=7200)
    wall = time.monotonic() - t0
    return {"wall_s": wall, "stored_bytes": allocated(target) - before}


def measure_virtnbdbackup(settings: Settings, vm: BenchVm, rewrites: list[list[Run]], target: Path) -> dict[str, Any]:
    """`-l full`, then per rewrite `-l inc`, into one output directory."""
    full = virtnbdbackup_once(settings, vm, "full", target)
    print(f"  virtnbdbackup full: {full['wall_s']:.1f} s, {full['stored_bytes'] / MiB:.0f} MiB stored", flush=True)
    incs = []
    for runs in rewrites:
        written = rewrite(vm, runs)
        s = {**virtnbdbackup_once(settings, vm, "inc", target), "written_bytes": written}
        incs.append(s)
        print(f"  virtnbdbackup inc: {s['wall_s']:.1f} s, stored {s['stored_bytes'] / MiB:.1f} MiB", flush=True)
    return {"status": "ok", "vm": vm.name, "full": full, "incrementals": incs,
            "inc_wall_s": summary([s["wall_s"] for s in incs]),
            "inc_stored_bytes": summary([s["stored_bytes"] for s in incs])}


def ratios(vmb: dict[str, Any], vnbd: dict[str, Any]) -> dict[str, float | None]:
    """The issue's ratios from the medians (None where a side is missing)."""
    inc_wall, inc_stored = vmb["inc_wall_s"]["median"], vmb["inc_stored_bytes"]["median"]
    other = vnbd if vnbd.get("status") == "ok" else {}
    return {
        "inc_over_full_wall": ratio(inc_wall, vmb["full"]["wall_s"]),
        "stored_over_changed": ratio(inc_stored, vmb["inc_changed_bytes"]["median"]),
        "stored_over_written": ratio(inc_stored, vmb["incrementals"][0]["written_bytes"] if vmb["incrementals"]
                                     else None),
        "vmbackup_over_virtnbdbackup_inc_wall": ratio(inc_wall, (other.get("inc_wall_s") or {}).get("median")),
        "vmbackup_over_virtnbdbackup_inc_stored": ratio(inc_stored,
                                                        (other.get("inc_stored_bytes") or {}).get("median")),
        "idle_overhead_s": vmb["idle_overhead_s"]["median"],
    }


def verdicts(r: dict[str, float | None]) -> dict[str, bool | None]:
    """Each target met (True), missed (False) or not measured (None)."""
    out: dict[str, bool | None] = {}
    for k, limit in TARGETS.items():
        v = r.get(k)
        out[k] = None if v is None else v <= limit
    return out


def run_bench(settings: Settings, smoke: bool, free_bytes: int, workdir: Path) -> dict[str, Any]:
    """Both VMs in turn (created, measured, destroyed); the results with ratios and targets."""
    data_bytes, notes = pick_size(smoke, free_bytes)
    reps = 1 if smoke else 3
    rng = random.Random(SEED)
    rewrites = [rewrite_runs(data_bytes, rewrite_bytes(data_bytes), rng) for _ in range(reps)]
    base = f"b{int(time.time()) % 100000}-inc"
    vm = boot_vm(settings, base, data_bytes)
    try:
        register(settings, vm)
        wait_agent(vm, settings)
        vmb = measure_vmbackup(settings, vm, rewrites, reps)
    finally:
        destroy_vm(settings, vm.name)
        shutil.rmtree(settings.vault / vm.uuid, ignore_errors=True)  # the twin needs the space
    vnbd: dict[str, Any]
    if not shutil.which("virtnbdbackup"):
        vnbd = {"status": "not run: virtnbdbackup is not installed (apt-get install virtnbdbackup)"}
    else:
        twin = boot_vm(settings, f"{base}-twin", data_bytes)
        try:
            why = qga_ok(settings, twin)
            vnbd = ({"status": f"not run: qemu-guest-agent does not answer ({why})"} if why else
                    measure_virtnbdbackup(settings, twin, rewrites, workdir / "virtnbdbackup"))
        finally:
            destroy_vm(settings, twin.name)
            shutil.rmtree(workdir / "virtnbdbackup", ignore_errors=True)
    r = ratios(vmb, vnbd)
    return {"data_bytes": data_bytes, "rewrite_bytes": rewrite_bytes(data_bytes),
            "runs_per_rewrite": [len(x) for x in rewrites], "vmbackup": vmb, "virtnbdbackup": vnbd,
            "ratios": r, "targets": TARGETS, "met": verdicts(r), "notes": [
                *notes,
                "two VMs with identical setups run one after the other (created, measured, destroyed), never at "
                "once; the twin is not registered (virtnbdbackup quiesces through qemu-guest-agent)",
                "rewrites: the same runs of 1-4 MiB at random 4 MiB slots of /data1's fill files on both VMs, "
                "dd from /dev/urandom with conv=notrunc,fsync; changed = the engine's bitmap count over all disks "
                "(the root disk's own writes included)",
                "stored = blocks allocated by the point's files (vmbackup) / added to virtnbdbackup's output "
                "directory by the inc; virtnbdbackup runs as a fresh process each time",
                f"idle overhead = wall minus the job's {', '.join(IDLE_EXCLUDED)} phases"]}
