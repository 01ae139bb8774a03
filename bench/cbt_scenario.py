"""The host-only scenario behind ``bench.cbt_paths``: a filled qcow2 "base" with a persistent dirty bitmap
(what a libvirt checkpoint leaves in a disk), its copy as the parent point, then scattered writes that the bitmap
records. No VM: ``qemu-io`` opens the image writable, loads the enabled persistent bitmap, marks every write in it
and stores it back on close (measured: ``qemu-img info`` lists it, ``nbdinfo --map`` reads it)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from bench.common import MiB, run

BITMAP = "cp1"
CLEAN_BITMAP = "cp2"  # added after the writes: an idle VM's checkpoint, nothing dirty
GRANULARITY = 64 * 1024  # qemu's default for `qemu-img bitmap --add` and libvirt checkpoints on small disks
FILL_CHUNK = 256 * MiB
Extent = tuple[int, int]  # (offset, length)


@dataclass(frozen=True)
class Scenario:
    """The images and the writes made since the checkpoint."""

    work: Path
    base: Path  # the frozen base: holds bitmap BITMAP, exported read-only
    parent: Path  # the parent point's disk (the base as it was when BITMAP was created)
    size: int
    writes: list[Extent]  # every range written since the checkpoint (one of them with zeroes)

    @property
    def written_bytes(self) -> int:
        return sum(n for _, n in self.writes)


def merge(extents: list[Extent]) -> list[Extent]:
    """Sorted extents with touching or overlapping ones joined."""
    out: list[Extent] = []
    for off, n in sorted(e for e in extents if e[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_n = out[-1]
            out[-1] = (last_off, max(last_off + last_n, off + n) - last_off)
        else:
            out.append((off, n))
    return out


def expected_dirty(writes: list[Extent], granularity: int, size: int) -> list[Extent]:
    """The dirty map a bitmap of `granularity` must show for `writes`: each write rounded out to whole clusters."""
    rounded = []
    for off, n in writes:
        start = off - off % granularity
        end = min(size, -(-(off + n) // granularity) * granularity)
        rounded.append((start, end - start))
    return merge(rounded)


def plan_writes(size: int, dirty: int, seed: int) -> list[Extent]:
    """Non-overlapping 4 KiB-aligned runs of 64 KiB..4 MiB at random offsets, `dirty` bytes in all, at least one
    cluster apart so the expected map is exact."""
    rng = random.Random(seed)
    writes: list[Extent] = []
    taken: list[Extent] = []
    total = 0
    lo, hi = 64 * 1024 // 4096, 4 * MiB // 4096
    attempts = 0
    while total < dirty and attempts < 100_000:
        attempts += 1
        n = min(rng.randint(lo, hi) * 4096, max(4096, (dirty - total + 4095) // 4096 * 4096))
        off = rng.randrange(0, (size - n) // 4096) * 4096
        guard = (off - 2 * GRANULARITY, n + 4 * GRANULARITY)
        if any(not (guard[0] + guard[1] <= t[0] or t[0] + t[1] <= guard[0]) for t in taken):
            continue
        taken.append((off, n))
        writes.append((off, n))
        total += n
    return sorted(writes)


def fill(image: Path, nbytes: int) -> None:
    """Write `nbytes` from offset 0 with a pattern that changes every FILL_CHUNK (allocated, not zero)."""
    cmds: list[str] = []
    for k, off in enumerate(range(0, nbytes, FILL_CHUNK)):
        n = min(FILL_CHUNK, nbytes - off)
        cmds += ["-c", f"write -q -P {1 + k % 250} {off} {n}"]
    if cmds:
        run(["qemu-io", "-f", "qcow2", *cmds, str(image)])


def dirty_writes(image: Path, writes: list[Extent]) -> None:
    """Write every extent through qemu-io (the first one as zeroes, like a guest's discard), in one process."""
    cmds: list[str] = []
    for k, (off, n) in enumerate(writes):
        cmd = f"write -q -z {off} {n}" if k == 0 else f"write -q -P {0x80 + k % 120} {off} {n}"
        cmds += ["-c", cmd]
    for i in range(0, len(cmds), 400):  # keep argv short
        run(["qemu-io", "-f", "qcow2", *cmds[i : i + 400], str(image)])


def build(work: Path, size: int, dirty: int, fill_bytes: int, seed: int = 15) -> Scenario:
    """Create base (filled), parent (a copy), add the bitmap to base, then dirty `dirty` bytes of base."""
    work.mkdir(parents=True, exist_ok=True)
    base, parent = work / "base.qcow2", work / "parent.qcow2"
    for p in (base, parent):
        p.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(size)])
    fill(base, min(fill_bytes, size))
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(base), str(parent)])
    run(["qemu-img", "bitmap", "--add", "-g", str(GRANULARITY), str(base), BITMAP])
    writes = plan_writes(size, dirty, seed)
    dirty_writes(base, writes)
    run(["qemu-img", "bitmap", "--add", "-g", str(GRANULARITY), str(base), CLEAN_BITMAP])
    return Scenario(work=work, base=base, parent=parent, size=size, writes=writes)


def new_incremental(sc: Scenario, name: str, backing: Path | None = None) -> Path:
    """An empty qcow2 in the scenario's directory whose backing file is `backing` (default: the parent), by
    relative path."""
    inc = sc.work / name
    inc.unlink(missing_ok=True)
    back = (backing or sc.parent).name
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", back, str(inc)])
    return inc
