"""Benchmark 2: vault copy throughput of the same image: vmbackup's copy vs ``cp --sparse=always`` vs
``qemu-img convert -O qcow2``; for a filled qcow2 data disk and for a sparse raw disk (large virtual size,
little data). Page cache dropped before every copy; every copy is timed until its output is fsynced."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import allocated, drop_caches, mb_per_s, ratio, run, summary
from bench.env import Plan
from bench.guest import filled_data_disk, random_stream
from controller.vault import Vault

NAME = "copy"
VM_UUID = "00000000-0000-4000-8000-00000000b0c1"
Copier = Callable[[Path, Path], None]


def sparse_raw(dest: Path, virtual: int, data: int) -> None:
    """A raw file of `virtual` bytes with `data` bytes of random data in 16 extents spread over it."""
    with open(dest, "wb") as f:
        f.truncate(virtual)
        piece = data // 16
        for k in range(16):
            f.seek(k * (virtual // 16))
            f.write(random_stream(piece))
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """fsync a file (the copy is done when its data is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copiers(vault_dir: Path, fmt: str) -> dict[str, Copier]:
    """name -> copy(src, dst) for every method."""

    def vmbackup(src: Path, dst: Path) -> None:
        w = Vault(vault_dir).new_point(VM_UUID)
        try:
            w.copy_disk("vdb", src, fmt=fmt)
            # dst is where the stored file was (measured before the unpublished point is dropped)
            stored = next((w.tmp / "disks").iterdir())
            _fsync(stored)
            dst.write_text(str(allocated(stored)))
        finally:
            w.abort()

    def cp(src: Path, dst: Path) -> None:
        run(["cp", "--sparse=always", str(src), str(dst)])
        _fsync(dst)

    def convert(src: Path, dst: Path) -> None:
        run(["qemu-img", "convert", "-f", fmt, "-O", "qcow2", str(src), str(dst)])
        _fsync(dst)

    return {"vmbackup": vmbackup, "cp --sparse=always": cp, "qemu-img convert -O qcow2": convert}


def measure(src: Path, fmt: str, reps: int, work: Path) -> dict[str, Any]:
    """reps rounds over every method on src; MB/s is counted on the source's allocated bytes."""
    data = allocated(src)
    methods = copiers(work / "vault", fmt)
    times: dict[str, list[float]] = {m: [] for m in methods}
    stored: dict[str, int] = {}
    for _ in range(reps):
        for name, copy in methods.items():
            dst = work / "dst.img"
            dst.unlink(missing_ok=True)
            drop_caches()
            t0 = time.monotonic()
            copy(src, dst)
            times[name].append(time.monotonic() - t0)
            stored[name] = int(dst.read_text()) if name == "vmbackup" else allocated(dst)
            dst.unlink(missing_ok=True)
    shutil.rmtree(work / "vault", ignore_errors=True)
    out: dict[str, Any] = {"source_format": fmt, "virtual_bytes": _virtual(src, fmt), "source_allocated": data,
                           "methods": {}}
    base = summary(times["vmbackup"])["median"]
    for name, ts in times.items():
        s = summary(ts)
        out["methods"][name] = {"seconds": s, "mb_per_s": mb_per_s(data, s["median"] or 0),
                                "stored_bytes": stored[name], "time_ratio_to_vmbackup": ratio(s["median"], base)}
    return out


def _virtual(src: Path, fmt: str) -> int:
    """Guest-visible size."""
    if fmt == "raw":
        return src.stat().st_size
    import json
    return int(json.loads(run(["qemu-img", "info", "--output=json", str(src)]))["virtual-size"])


def run_bench(plan: Plan, work: Path) -> dict[str, Any]:
    """Build the two sources, measure, clean up."""
    work.mkdir(parents=True, exist_ok=True)
    filled, sparse = work / "filled.qcow2", work / "sparse.raw"
    try:
        filled_data_disk(filled, plan.copy_bytes)
        sparse_raw(sparse, plan.sparse_virtual, plan.sparse_data)
        res = {
            "filled_qcow2": measure(filled, "qcow2", plan.copy_reps, work),
            "sparse_raw": measure(sparse, "raw", plan.copy_reps, work),
            "note": "page cache dropped before each copy; timed until the output file is fsynced; vmbackup's "
                    "copy also computes the SHA-256 of the full logical content",
        }
        for k in ("filled_qcow2", "sparse_raw"):
            m = res[k]["methods"]  # type: ignore[index]
            print(f"  copy {k}: " + ", ".join(f"{n} {v['mb_per_s']} MB/s" for n, v in m.items()))
        return res
    finally:
        filled.unlink(missing_ok=True)
        sparse.unlink(missing_ok=True)

