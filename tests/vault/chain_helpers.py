"""Build real incremental chains in a test vault: a full point, then incrementals made with qemu-img and qemu-io.

Each incremental disk is ``qemu-img create -f qcow2 -F qcow2 -b ../../<parent>/disks/<t>.qcow2`` inside the
point's ``.tmp-`` directory plus ``qemu-io`` writes, recorded in the manifest as the backup engine records them
(kind incremental, backing, changed_bytes); the point is then published like any other.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.vault import RecoveryPoint, Vault, layout, sparse
from controller.vault.chain import backing_name
from controller.vault.manifest import DiskRecord
from tests.vault.helpers import MiB, run

VM = "3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
SIZE = 64 * MiB
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
#: what each point of the standard 6-point chain writes on vdb: (pattern, offset MiB, length MiB), "z" = zeroes
WRITES: list[list[tuple[int | str, int, int]]] = [
    [(0x11, 0, 24)],
    [(0x22, 1, 2), ("z", 8, 1)],
    [(0x33, 2, 2), (0x33, 40, 1)],
    [(0x44, 20, 4)],
    [(0x55, 0, 1), ("z", 41, 1)],
    [(0x66, 30, 3)],
]


def _write(path: Path, writes: list[tuple[int | str, int, int]]) -> None:
    """Apply writes to a qcow2 through qemu-io."""
    cmds = [f"write -z {o * MiB} {n * MiB}" if p == "z" else f"write -P {p} {o * MiB} {n * MiB}" for p, o, n in writes]
    run("qemu-io", "-f", "qcow2", *(a for c in cmds for a in ("-c", c)), str(path))


def add_point(
    vault: Vault,
    parent: RecoveryPoint | None,
    writes: list[tuple[int | str, int, int]],
    index: int,
    full_disks: dict[str, Path] | None = None,
    vm: str = VM,
    name: str = "chain",
) -> RecoveryPoint:
    """Publish point number `index` (its id sorts by it): vdb a full (no parent) or an incremental over parent's
    vdb, holding `writes`; full_disks are copied in full beside it (copy_disk)."""
    w = vault.new_point(vm, layout.new_point_id(T0 + timedelta(days=index)))
    rel = layout.disk_file_name("vdb", "qcow2")
    dst = w.tmp / rel
    if parent is None:
        run("qemu-img", "create", "-q", "-f", "qcow2", str(dst), str(SIZE))
        backing = None
    else:
        backing = backing_name(parent.point_id, "vdb")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(dst))
    _write(dst, writes)
    res = sparse.stream(dst)
    changed = sum(n * MiB for _, _, n in writes)
    w.disks.append(DiskRecord(
        "vdb", rel, "qcow2", SIZE, res.logical_size, dst.stat().st_blocks * 512, res.digest, "/src/vdb.qcow2",
        method="test", kind="incremental" if backing else "full", backing=backing,
        changed_bytes=changed if backing else None,
    ))  # fmt: skip
    for target, src in (full_disks or {}).items():
        w.copy_disk(target, src)
    w.write_domain_xml(f"<domain><name>{name}</name><uuid>{vm}</uuid></domain>")
    return w.publish({
        "vm": {"uuid": vm, "name": name, "host": "qemu:///system"}, "consistency": "CRASH",
        "created": (T0 + timedelta(days=index)).isoformat(), "parent": parent.point_id if parent else None,
        "chain_depth": parent.manifest.chain_depth + 1 if parent else 0,
    })  # fmt: skip


def build_chain(vault: Vault, n: int = 6, vm: str = VM, name: str = "chain") -> list[RecoveryPoint]:
    """A full point and n - 1 incrementals on vdb, oldest first, one a day from T0."""
    points: list[RecoveryPoint] = []
    for i in range(n):
        points.append(add_point(vault, points[-1] if points else None, WRITES[i % len(WRITES)], i, vm=vm, name=name))
    return points


def restore(vault: Vault, point_id: str, target: str, out: Path) -> Path:
    """What a user gets with plain `qemu-img convert` of the point's disk (no vmbackup code)."""
    p = vault.get_point(point_id)
    rec = p.manifest.disk(target)
    assert rec is not None
    run("qemu-img", "convert", "-f", rec.format, "-O", "qcow2", str(vault.disk_path(p, rec)), str(out))
    return out


def same_content(a: Path, b: Path) -> bool:
    """qemu-img compare says the two images hold the same guest-visible bytes."""
    import subprocess

    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0
