"""Measure the data path of an incremental backup (issue #15), host-only, no VM.

A filled qcow2 base gets a persistent dirty bitmap (``cp1``, what a libvirt checkpoint leaves in a disk), its copy
becomes the parent point, then ~`dirty` MiB are rewritten in scattered 64 KiB..4 MiB runs (one of them zeroes); a
second bitmap ``cp2`` added afterwards stays clean (an idle VM). Then, for each bitmap:
- every dirty-map reader (python3-libnbd, nbdinfo, qemu-img map) reads the map from a read-only qemu-nbd export;
  the map must equal the written runs rounded out to the bitmap's granularity (empty for ``cp2``);
- every byte mover copies the dirty extents into an empty qcow2 backed by the parent (relative path); the result
  must ``qemu-img compare`` identical to the base;
- one ``qemu-img convert`` of the whole base is the full-copy reference.

    python -m bench.cbt_paths [--size-gib 16] [--dirty-mib 160] [--reps 5] [--out bench/results]

Writes OUT/cbt-paths.json and OUT/cbt-paths.md and prints the table. Needs qemu-img, qemu-io, qemu-nbd,
qemu-storage-daemon, nbdinfo (libnbd-bin) and python3-libnbd."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cbt_movers import MOVERS, bitmap_counts
from bench.cbt_nbd import READERS, import_nbd, qemu_nbd
from bench.cbt_scenario import BITMAP, CLEAN_BITMAP, GRANULARITY, Scenario, build, expected_dirty, new_incremental
from bench.common import GiB, MiB, allocated, drop_caches, mb_per_s, ratio, run, summary

RESULTS = Path(__file__).resolve().parent / "results"


def identical(a: Path, b: Path) -> bool:
    """`qemu-img compare` says the two images' guest-visible contents are identical."""
    p = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(a), str(b)], check=False)
    return p.returncode == 0


def _cold() -> None:
    if os.geteuid() == 0:
        drop_caches()


def measure_readers(sc: Scenario, reps: int) -> dict[str, Any]:
    """Time every reader on both bitmaps; check each map against the expected one."""
    want = {BITMAP: expected_dirty(sc.writes, GRANULARITY, sc.size), CLEAN_BITMAP: []}
    out: dict[str, Any] = {name: {} for name in READERS}
    for bitmap, expected in want.items():
        sock = sc.work / f"map-{bitmap}.sock"
        with qemu_nbd(sc.base, sock, bitmap):
            for name, reader in READERS.items():
                times: list[float] = []
                got: list[tuple[int, int]] = []
                for _ in range(reps):
                    t0 = time.monotonic()
                    got = reader(sock, bitmap)
                    times.append(time.monotonic() - t0)
                out[name][bitmap] = {
                    "seconds": summary(times),
                    "extents": len(got),
                    "dirty_bytes": sum(n for _, n in got),
                    "exact": got == expected,
                }
    return out


def measure_counts(sc: Scenario, reps: int) -> dict[str, Any]:
    """Time reading every bitmap's dirty-byte count through qemu-storage-daemon (start, query, quit)."""
    want = {BITMAP: sum(n for _, n in expected_dirty(sc.writes, GRANULARITY, sc.size)), CLEAN_BITMAP: 0}
    times: list[float] = []
    got: dict[str, Any] = {}
    for _ in range(reps):
        t0 = time.monotonic()
        got = bitmap_counts(sc.base, sc.work)
        times.append(time.monotonic() - t0)
    return {
        "seconds": summary(times),
        "counts": {name: got.get(name, {}).get("count") for name in want},
        "exact": all(got.get(name, {}).get("count") == n for name, n in want.items()),
    }


def measure_movers(sc: Scenario, reps: int) -> dict[str, Any]:
    """Time every mover on both bitmaps (cold cache each time); check the last result against the base."""
    out: dict[str, Any] = {name: {} for name in MOVERS}
    for k, (name, mover) in enumerate(MOVERS.items()):
        for bitmap, backing in ((BITMAP, sc.parent), (CLEAN_BITMAP, sc.base)):
            times: list[float] = []
            moved = stored = 0
            for r in range(reps):
                inc = new_incremental(sc, f"inc-{k}-{bitmap}.qcow2", backing)
                _cold()
                t0 = time.monotonic()
                moved = mover(sc.base, inc, bitmap, sc.work)
                times.append(time.monotonic() - t0)
                stored = allocated(inc)
                if r < reps - 1:
                    inc.unlink()  # the same run again: the last one is checked (a compare reads the whole disk)
            same = identical(sc.base, inc)
            run(["qemu-img", "check", "-q", str(inc)])
            med = summary(times)["median"]
            out[name][bitmap] = {
                "seconds": summary(times),
                "moved_bytes": moved,
                "stored_bytes": stored,
                "mb_per_s": mb_per_s(moved, med) if med else None,
                "identical": same,
            }
    return out


def measure_full(sc: Scenario) -> dict[str, Any]:
    """The reference: today's full copy of the whole base (qemu-img convert, O_DIRECT both sides)."""
    full = sc.work / "full.qcow2"
    full.unlink(missing_ok=True)
    _cold()
    t0 = time.monotonic()
    run(["qemu-img", "convert", "-T", "none", "-t", "none", "-f", "qcow2", "-O", "qcow2", str(sc.base), str(full)])
    secs = time.monotonic() - t0
    result = {"seconds": round(secs, 3), "stored_bytes": allocated(full), "identical": identical(sc.base, full)}
    full.unlink()
    return result


def versions() -> dict[str, str]:
    """Tool versions this run used."""
    nbd: Any = import_nbd()
    return {
        "qemu": run(["qemu-img", "--version"]).splitlines()[0],
        "libnbd": str(nbd.NBD().get_version()),
        "nbdinfo": run(["nbdinfo", "--version"]).splitlines()[0],
        "python": sys.version.split()[0],
        "cpus": str(os.cpu_count()),
    }


def markdown(res: dict[str, Any]) -> str:
    """The results as two short tables."""
    p = res["params"]
    lines = [
        f"# CBT data path: {p['size'] / GiB:g} GiB image, {p['written_bytes'] / MiB:.1f} MiB rewritten "
        f"in {p['runs']} runs ({res['expected_dirty_bytes'] / MiB:.1f} MiB dirty at {GRANULARITY // 1024} KiB "
        f"granularity), median of {p['reps']}",
        "",
        f"{res['versions']['qemu']}; libnbd {res['versions']['libnbd']}; {res['versions']['cpus']} CPUs",
        "",
        "| dirty-map reader | dirty (s) | nothing dirty (s) | map exact |",
        "|---|---|---|---|",
    ]
    for name, r in res["readers"].items():
        d, c = r[BITMAP], r[CLEAN_BITMAP]
        lines.append(f"| {name} | {d['seconds']['median']} | {c['seconds']['median']} | {d['exact'] and c['exact']} |")
    bc = res["bitmap_counts"]
    lines.append(
        f"| qemu-storage-daemon query-named-block-nodes (dirty-byte count of every bitmap; process start included) "
        f"| {bc['seconds']['median']} | (same query) | {bc['exact']} |"
    )
    lines += [
        "",
        "| byte mover | dirty (s) | MB/s | stored MiB | nothing dirty (s) | identical | vs full |",
        "|---|---|---|---|---|---|---|",
    ]
    full = res["full_copy"]
    for name, r in res["movers"].items():
        d, c = r[BITMAP], r[CLEAN_BITMAP]
        lines.append(
            f"| {name} | {d['seconds']['median']} | {d['mb_per_s']} | {d['stored_bytes'] / MiB:.1f} | "
            f"{c['seconds']['median']} | {d['identical'] and c['identical']} | "
            f"{ratio(d['seconds']['median'], full['seconds'])} |"
        )
    lines.append(
        f"| full copy (qemu-img convert -T none -t none), reference | {full['seconds']} | "
        f"{mb_per_s(p['fill_bytes'], full['seconds'])} | {full['stored_bytes'] / MiB:.1f} | - | "
        f"{full['identical']} | 1.0 |"
    )
    return "\n".join(lines) + "\n"


def measure(size: int, dirty: int, fill: int, reps: int, work: Path, seed: int = 15) -> dict[str, Any]:
    """Build the scenario in `work`, run every reader and mover, return the results."""
    t0 = time.monotonic()
    sc = build(work, size, dirty, fill, seed)
    setup = time.monotonic() - t0
    return {
        "params": {
            "size": size, "dirty_requested": dirty, "written_bytes": sc.written_bytes, "runs": len(sc.writes),
            "fill_bytes": min(fill, size), "granularity": GRANULARITY, "reps": reps, "seed": seed,
            "setup_seconds": round(setup, 2),
        },
        "versions": versions(),
        "expected_dirty_bytes": sum(n for _, n in expected_dirty(sc.writes, GRANULARITY, sc.size)),
        "readers": measure_readers(sc, reps),
        "bitmap_counts": measure_counts(sc, reps),
        "movers": measure_movers(sc, reps),
        "full_copy": measure_full(sc),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cbt_paths", description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=16.0, help="virtual size of the base (default 16)")
    ap.add_argument("--dirty-mib", type=float, default=160.0, help="bytes rewritten since the checkpoint")
    ap.add_argument("--fill-gib", type=float, default=None, help="bytes filled before (default: the whole image)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS, help="where cbt-paths.json/.md go")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir in /var/tmp)")
    a = ap.parse_args(argv)
    size = int(a.size_gib * GiB) // MiB * MiB
    fill = size if a.fill_gib is None else int(a.fill_gib * GiB)
    work = a.work or Path(tempfile.mkdtemp(prefix="cbt-paths-", dir="/var/tmp"))
    try:
        res = measure(size, int(a.dirty_mib * MiB), fill, a.reps, work)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cbt-paths.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (a.out / "cbt-paths.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
