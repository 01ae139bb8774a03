"""Which devices of a domain a backup copies, where a disk's overlay goes, and how big a disk source is.

A disk is a file, a block device (LVM, a raw device) or a storage-pool volume (resolved to its path). Network disks,
LUN passthrough, ``<filesystem>`` shares and ``<hostdev>``/``<redirdev>``/``<smartcard>`` cannot be backed up and are
refused with UNSUPPORTED_DISK unless excluded by target; cdrom/floppy/read-only disks and excluded devices are
skipped and listed in the manifest::

    p = backup_plan(dom, exclude=("vdc",))      # raises UnsupportedDisk naming every device it cannot copy
    p.disks, [o.to_dict() for o in p.skipped]

Overlays of file disks go beside the file; a block device has no directory beside it, so its overlay goes to
``$VMBACKUP_HOME/overlays/<vm-uuid>/`` (``overlay_dir``), still named ``<name>.vmb-<job-id>.qcow2``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

import libvirt

from controller.backup.exceptions import UnsupportedDisk
from controller.virt.domain import Disk, DiskPlan, OtherDevice, classify, plan

OVERLAYS_DIR = "overlays"


def overlay_dir(home: Path, vm_uuid: str) -> Path:
    """The vmbackup-owned directory for the overlays of a VM's block-device disks."""
    return home / OVERLAYS_DIR / vm_uuid


def is_block_device(path: str) -> bool:
    """True when path is a block device (follows symlinks such as /dev/vg/lv)."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def source_size(path: str) -> int:
    """Bytes of a disk source: st_size of a file, the device size of a block device (st_size is 0 there)."""
    with open(path, "rb", buffering=0) as f:
        return f.seek(0, os.SEEK_END)


def allocated(d: Disk) -> int:
    """Bytes a disk and its backing chain occupy: an upper bound of what the vault needs."""
    total = 0
    for p in (d.path, *d.backing):
        try:
            total += source_size(p) if is_block_device(p) else os.stat(p).st_blocks * 512
        except OSError:
            continue
    return total


def refuse_unsupported(p: DiskPlan, vm: str) -> None:
    """Raise UnsupportedDisk naming every device of the plan that cannot be backed up."""
    if p.unsupported:
        raise UnsupportedDisk(
            f"VM {vm!r} has devices that cannot be backed up: {describe(p.unsupported)}",
            details={"devices": [o.to_dict() for o in p.unsupported]},
        )


def describe(devs: Iterable[OtherDevice]) -> str:
    """e.g. "vdc (network disk rbd:pool/img), share (filesystem /srv/share)"."""
    out = []
    for o in devs:
        what = f"{o.kind} {o.device}" if o.device == "disk" else o.device
        out.append(f"{o.target} ({what}{' ' + o.source if o.source else ''})")
    return ", ".join(out)


def backup_plan(dom: libvirt.virDomain, exclude: Iterable[str] = ()) -> DiskPlan:
    """The live domain's disk plan; raises UnsupportedDisk when something cannot be copied and is not excluded."""
    p = plan(dom, exclude)
    refuse_unsupported(p, dom.name())
    return p


def check_xml(xml: str, vm: str, exclude: Iterable[str] = ()) -> DiskPlan:
    """``backup_plan`` for a domain XML string (pool volumes are not resolved: the register pre-check)."""
    p = classify(xml, exclude)
    refuse_unsupported(p, vm)
    return p
