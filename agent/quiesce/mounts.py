"""Parse /proc/self/mountinfo and decide which filesystems may be frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Filesystem types that are never frozen: virtual, in-memory, network, stacked or read-only by nature.
SKIP_TYPES: dict[str, str] = {
    **{t: "virtual filesystem" for t in (
        "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
        "pstore", "bpf", "mqueue", "hugetlbfs", "configfs", "fusectl", "autofs", "binfmt_misc", "efivarfs",
        "rpc_pipefs", "nsfs", "selinuxfs")},
    **{t: "in-memory filesystem" for t in ("tmpfs", "ramfs")},
    **{t: "network filesystem" for t in (
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "virtiofs", "afs", "lustre")},
    **{t: "stacked filesystem (its lower layers are frozen instead)" for t in ("overlay", "aufs")},
    **{t: "read-only filesystem type" for t in ("squashfs", "iso9660", "udf", "erofs")},
}


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    dev: tuple[int, int]
    mount_point: str
    options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """True when the mount or its superblock is read-only."""
        return "ro" in self.options or "ro" in self.super_options


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for space, ...)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text into mounts, in mount order."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        major, minor = f[2].split(":")
        mounts.append(Mount(
            mount_id=int(f[0]), parent_id=int(f[1]), dev=(int(major), int(minor)),
            mount_point=_unescape(f[4]), options=tuple(f[5].split(",")), fs_type=r[0],
            source=_unescape(r[1]) if len(r) > 1 else "",
            super_options=tuple(r[2].split(",")) if len(r) > 2 else (),
        ))
    return mounts


def read_mounts(path: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    """The mounts of this process's mount namespace."""
    return parse_mountinfo(path.read_text(encoding="utf-8", errors="surrogateescape"))


def ineligible_reason(mount: Mount) -> str:
    """Why this mount must not be frozen, or '' when it may be."""
    if mount.fs_type in SKIP_TYPES:
        return f"{SKIP_TYPES[mount.fs_type]} ({mount.fs_type})"
    if mount.fs_type.startswith("fuse"):
        return f"FUSE filesystem ({mount.fs_type}): its daemon could deadlock on a freeze"
    if mount.read_only:
        return "mounted read-only: nothing to flush"
    if not mount.source.startswith("/dev/"):
        return f"not backed by a block device (source {mount.source!r})"
    return ""


def freeze_plan(mounts: list[Mount]) -> tuple[list[Mount], list[tuple[str, str]]]:
    """Eligible mounts in freeze order (reverse mount order, one per superblock) and skipped ones + reasons.

    Reverse mount order freezes a filesystem mounted on top of another before the one below it (as
    qemu-guest-agent does); thaw goes the other way. A superblock mounted twice (bind mount) is frozen once.
    """
    visible = _visible(mounts)
    first: dict[tuple[int, int], str] = {}  # the earliest eligible mount of each superblock represents it
    for m in visible:
        if not ineligible_reason(m):
            first.setdefault(m.dev, m.mount_point)
    plan: list[Mount] = []
    skipped: list[tuple[str, str]] = []
    for m in reversed(visible):
        reason = ineligible_reason(m)
        if not reason and first[m.dev] != m.mount_point:
            reason = f"same filesystem as {first[m.dev]} (bind mount): frozen once"
        if reason:
            skipped.append((m.mount_point, reason))
        else:
            plan.append(m)
    return plan, skipped


def _visible(mounts: list[Mount]) -> list[Mount]:
    """Drop mounts hidden by a later mount on the same mount point (only the top one is reachable)."""
    last: dict[str, int] = {m.mount_point: i for i, m in enumerate(mounts)}
    return [m for i, m in enumerate(mounts) if last[m.mount_point] == i]


def normalize(path: str) -> str:
    """A mount point path in the form mountinfo uses (absolute, no trailing slash, symlinks resolved)."""
    return os.path.realpath(path)


def on_hardware_devices(plan: list[Mount], sys_dev_block: Path = Path("/sys/dev/block")) -> bool:
    """True when every filesystem of ``plan`` lives on a (partition of a) hardware-backed disk, so none of them
    writes through another filesystem and they may all be frozen at the same time.

    A device under /sys/devices/virtual (loop, device-mapper, md, nbd, zram) may sit on a file of another
    filesystem: freezing that one first would leave this one's sync waiting forever. A filesystem without a block
    device (major 0: btrfs subvolumes and the like) is not known to be independent either. Any doubt is False.
    """
    for m in plan:
        node = sys_dev_block / f"{m.dev[0]}:{m.dev[1]}"
        try:
            real = os.path.realpath(node, strict=True)
        except OSError:
            return False
        if m.dev[0] == 0 or "/devices/virtual/" in real:
            return False
    return True
