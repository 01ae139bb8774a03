"""Benchmark 3: a full backup of one running VM, end to end: vmbackup vs virtnbdbackup vs virt-backup.

Per repetition, every contender runs in turn on the same VM (round robin, page cache dropped before each):
a writer in the guest appends an fsynced timestamp every ~10 ms to /data1; the longest gap between two
timestamps is the guest-visible disruption. Bytes written = blocks allocated under the contender's target.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import allocated, drop_caches, ratio, run, summary
from bench.exceptions import BenchError
from bench.guest import BenchVm, start_writer, stop_writer
from bench.hostinfo import contender_venv
from bench.vmbackup_backup import backup_once
from controller.settings import Settings
from controller.vault import compress

NAME = "full_backup"
Runner = Callable[[Path], None]


def _virtnbdbackup(settings: Settings, vm: BenchVm) -> Runner:
    """virtnbdbackup -l full (libvirt backup API over NBD; fsfreeze through qemu-guest-agent)."""

    def go(target: Path) -> None:
        # virtnbdbackup refuses a domain with checkpoints it did not make ("Foreign checkpoint found"): drop
        # vmbackup's (its next backup here is a full anyway)
        _delete_checkpoints(settings, vm.name)
        run(["virtnbdbackup", "-U", settings.uri, "-d", vm.name, "-l", "full", "-o", str(target)], timeout=3600)
        _delete_checkpoints(settings, vm.name)

    return go


def _delete_checkpoints(settings: Settings, name: str) -> None:
    """Remove every checkpoint (and its bitmaps): virtnbdbackup's after it ran, vmbackup's before it runs."""
    out = run(["virsh", "-c", settings.uri, "checkpoint-list", name, "--name", "--topological"])
    for cp in reversed([c for c in out.split() if c]):
        run(["virsh", "-c", settings.uri, "checkpoint-delete", name, cp])


def _virt_backup(settings: Settings, vm: BenchVm, workdir: Path) -> Runner:
    """virt-backup (PyPI): external snapshot with QUIESCE (qemu-guest-agent), copy, blockcommit; directory packager."""
    exe = contender_venv() / "bin" / "virt-backup"
    if not exe.exists():
        raise BenchError(f"virt-backup is not installed in {contender_venv()} (see bench/README.md)")

    def go(target: Path) -> None:
        cfg = workdir / "virt-backup.yml"
        conf = {
            "uri": settings.uri,
            "debug": False,
            "threads": 1,
            "groups": {"bench": {"target": str(target), "packager": "directory",
                                 "hosts": [{"host": vm.name, "quiesce": True}]}},
        }
        cfg.write_text(yaml.safe_dump(conf))
        target.mkdir(parents=True, exist_ok=True)
        run([str(exe), "-c", str(cfg), "backup", "bench"], timeout=3600)

    return go


#: The row of vmbackup with compression off.
UNCOMPRESSED = "vmbackup --compression none"


def _vmbackup(settings: Settings, vm: BenchVm, compression: str = compress.DEFAULT) -> Runner:
    """vmbackup's engine (by default compressed with zstd where it pays); the point is moved under target so it is
    measured and removed like the others."""

    def go(target: Path) -> None:
        r = backup_once(settings, vm.name, keep=True, compression=compression)
        pdir = settings.vault / vm.uuid / r["point_id"]
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(pdir), str(target / r["point_id"]))

    return go


def qga_ok(settings: Settings, vm: BenchVm) -> str | None:
    """None if qemu-guest-agent answers guest-ping through libvirt, else the reason."""
    p = subprocess.run(["virsh", "-c", settings.uri, "qemu-agent-command", vm.name, '{"execute":"guest-ping"}'],
                       capture_output=True, text=True, timeout=60, check=False)
    return None if p.returncode == 0 else (p.stderr.strip() or "guest-ping failed")


def one(vm: BenchVm, go: Runner, target: Path) -> dict[str, Any]:
    """One measured backup: cold cache, writer running, wall time, bytes on target, longest writer gap."""
    shutil.rmtree(target, ignore_errors=True)
    drop_caches()
    start_writer(vm)
    t0 = time.monotonic()
    try:
        go(target)
        wall = time.monotonic() - t0
    finally:
        gaps = stop_writer(vm)
    nbytes = allocated(target) if target.exists() else 0
    shutil.rmtree(target, ignore_errors=True)
    if nbytes < vm.data_bytes:  # virt-backup exits 0 when nothing matched: a run that stored less is no backup
        raise BenchError(f"wrote only {nbytes} bytes, less than the {vm.data_bytes} bytes of data on /data1")
    return {"wall_s": wall, "bytes": nbytes, "max_stall_ms": max(gaps) * 1000, "writes": len(gaps) + 1}


def run_bench(settings: Settings, vm: BenchVm, reps: int, workdir: Path) -> dict[str, Any]:
    """All contenders, reps rounds; a contender that fails is recorded as 'not run: reason', never estimated."""
    # the contenders store uncompressed images: vmbackup is measured with its default (zstd where the disk's
    # sample shrinks) and without compression, the same work as theirs
    runners: dict[str, Runner | str] = {"vmbackup": _vmbackup(settings, vm),
                                        UNCOMPRESSED: _vmbackup(settings, vm, "none")}
    why = qga_ok(settings, vm)
    try:
        runners["virt-backup"] = _virt_backup(settings, vm, workdir)
    except BenchError as e:
        runners["virt-backup"] = f"not run: {e}"
    runners["virtnbdbackup"] = (_virtnbdbackup(settings, vm) if shutil.which("virtnbdbackup")
                                else "not run: virtnbdbackup is not installed (apt-get install virtnbdbackup)")
    if why:
        for k in ("virt-backup", "virtnbdbackup"):
            if not isinstance(runners[k], str):
                runners[k] = f"not run: qemu-guest-agent does not answer ({why})"
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in runners}
    errors: dict[str, str] = {}
    for _ in range(reps):
        for name, go in runners.items():
            if isinstance(go, str) or name in errors:
                continue
            try:
                samples[name].append(one(vm, go, workdir / f"target-{name}"))
                s = samples[name][-1]
                print(f"  {name}: {s['wall_s']:.1f} s, {s['bytes'] / 2**20:.0f} MiB, stall {s['max_stall_ms']:.0f} ms")
            except BenchError as e:
                errors[name] = f"not run: {e}"
                print(f"  {name}: {errors[name]}")
    return _results(runners, samples, errors, vm)


def _results(runners: dict[str, Runner | str], samples: dict[str, list[dict[str, Any]]],
             errors: dict[str, str], vm: BenchVm) -> dict[str, Any]:
    """Per contender summaries plus ratios to vmbackup."""
    out: dict[str, Any] = {"vm": vm.name, "data_bytes": vm.data_bytes, "contenders": {}}
    for name, go in runners.items():
        if isinstance(go, str) or (name in errors and not samples[name]):
            out["contenders"][name] = {"status": go if isinstance(go, str) else errors[name]}
            continue
        ss = samples[name]
        out["contenders"][name] = {
            "status": "ok" if name not in errors else f"partial: {errors[name]}",
            "wall_s": summary([s["wall_s"] for s in ss]),
            "bytes_written": summary([s["bytes"] for s in ss]),
            "max_stall_ms": summary([s["max_stall_ms"] for s in ss]),
        }
    base = out["contenders"].get("vmbackup", {})
    for name, c in out["contenders"].items():
        if name == "vmbackup" or "wall_s" not in c or "wall_s" not in base:
            continue
        c["ratio_to_vmbackup"] = {k: ratio(c[k]["median"], base[k]["median"])
                                  for k in ("wall_s", "bytes_written", "max_stall_ms")}
    return out
