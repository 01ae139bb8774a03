"""Will the next point fit? Predict its stored size before anything is frozen or written, refuse early (VAULT_FULL).

Per disk, the bytes the copy will store:

- a full copy: the data the disk's whole backing chain holds, flattened, as ``qemu-img measure -O qcow2``'s
  ``required`` (qcow2 metadata included; the image is opened read-only with force-share, the running QEMU holds
  it); the disk's allocated bytes (disksource.allocated, an upper bound) when measure fails, or when they are more
  for a running domain (its QEMU may not have written fresh qcow2 metadata back yet: measure would miss those);
- an incremental copy: the dirty bytes of the parent's checkpoint: for a running domain libvirt's
  ``checkpoint.getXMLDesc(VIR_DOMAIN_CHECKPOINT_XML_SIZE)`` per-disk ``size``; for a shut-off one the bitmap's
  ``count`` through qemu-storage-daemon (qsd.bitmaps); the full estimate when neither answers;
- compressed: when the backup asks for compression, scaled by the VM's recent stored/uncompressed ratio
  (:func:`recent_ratio`: its newest points' compressed disks; 1.0 without history, so never optimistic).

The vault must have the sum free plus a margin: 5 % of the vault filesystem or 1 GiB, whichever is smaller
(:func:`margin_for`). Usage::

    pred = predict(vault, dom, disks, chain, running, workdir, compression="zstd")   # Prediction
    check(vault, pred)                                                                 # VAULT_FULL or nothing
    run.detail("space", pred.to_dict())                                                # compared with the point later
"""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from controller.backup import qsd
from controller.backup.cbt import ChainPlan
from controller.backup.disksource import allocated, is_block_device
from controller.errors import VmBackupError
from controller.vault.exceptions import VaultFull
from controller.vault.manifest import RecoveryPoint
from controller.vault.qemuimg import QEMU_IMG
from controller.vault.vault import Vault
from controller.virt.domain import Disk

GiB = 1 << 30
MARGIN_FRACTION = 0.05  #: of the vault filesystem's size ...
MARGIN_CAP = GiB  #: ... but never more than this
RATIO_POINTS = 3  #: how many of the VM's newest points give the compression ratio
MEASURE_TIMEOUT_S = 120


@dataclass
class DiskPrediction:
    """One disk's predicted stored bytes and where the number came from."""

    target: str
    kind: str  # full | incremental
    bytes: int  # before compression scaling
    source: str  # qemu-img-measure | allocated | checkpoint-size | bitmap-count


@dataclass
class Prediction:
    """The next point's predicted size against the vault's free space."""

    bytes: int  # predicted stored bytes of the point (compression applied)
    disks: list[DiskPrediction] = field(default_factory=list)
    ratio: float = 1.0  # stored / uncompressed applied to the disks (1.0: uncompressed or no history)
    free_bytes: int = 0
    margin_bytes: int = 0

    @property
    def fits(self) -> bool:
        """True when the vault has the predicted bytes plus the margin free."""
        return self.free_bytes >= self.bytes + self.margin_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON view (the job's `space` detail)."""
        return {**asdict(self), "fits": self.fits}


def margin_for(fs_bytes: int) -> int:
    """Free space kept back beyond a point: 5 % of the filesystem, at most 1 GiB."""
    return min(int(fs_bytes * MARGIN_FRACTION), MARGIN_CAP)


def measure(d: Disk) -> int:
    """Bytes a flattened qcow2 copy of the disk's chain needs (qemu-img measure, force-share); VmBackupError."""
    opts = f"driver={d.format},read-only=on,force-share=on,file.driver="
    opts += ("host_device" if is_block_device(d.path) else "file") + f",file.filename={d.path.replace(',', ',,')}"
    cmd = [QEMU_IMG, "measure", "--output=json", "-O", "qcow2", "--image-opts", opts]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=MEASURE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VmBackupError(f"qemu-img measure of {d.path}: {e}") from e
    if p.returncode != 0:
        raise VmBackupError(f"qemu-img measure of {d.path}: {p.stderr.strip()}")
    return int(json.loads(p.stdout)["required"])


def full_bytes(d: Disk, running: bool) -> DiskPrediction:
    """A full copy's stored bytes: qemu-img measure, else the allocated bytes of the chain (an upper bound). A
    running QEMU keeps fresh qcow2 metadata (L2 tables) in its cache, so measure can miss recent writes there: the
    larger of the two."""
    try:
        got = measure(d)
    except VmBackupError:
        return DiskPrediction(d.target, "full", allocated(d), "allocated")
    if running and (alloc := allocated(d)) > got:
        return DiskPrediction(d.target, "full", alloc, "allocated")
    return DiskPrediction(d.target, "full", got, "qemu-img-measure")


def checkpoint_sizes(dom: libvirt.virDomain, checkpoint: str) -> dict[str, int]:
    """target -> dirty bytes since the checkpoint, from libvirt (a running domain only; {} otherwise)."""
    try:
        xml = dom.checkpointLookupByName(checkpoint, 0).getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_SIZE)
    except libvirt.libvirtError:
        return {}
    out: dict[str, int] = {}
    for disk in ET.fromstring(xml).findall("./disks/disk"):
        size = disk.get("size")
        if disk.get("checkpoint") == "bitmap" and size is not None and size.isdigit():
            out[disk.get("name", "")] = int(size)
    return out


def dirty_bytes(d: Disk, checkpoint: str, sizes: dict[str, int], workdir: Path, running: bool) -> DiskPrediction | None:
    """An incremental copy's stored bytes: libvirt's checkpoint size (running), else the bitmap's count through
    qemu-storage-daemon (shut off: the image holds the bitmap QEMU flushed when it stopped; a running QEMU's
    on-disk copy is stale); None when neither knows (the caller estimates a full)."""
    if d.target in sizes:
        return DiskPrediction(d.target, "incremental", sizes[d.target], "checkpoint-size")
    if running:
        return None
    try:
        state = qsd.bitmaps(d.path, workdir=workdir).get(checkpoint)
    except VmBackupError:
        return None
    return None if state is None else DiskPrediction(d.target, "incremental", state.count, "bitmap-count")


def recent_ratio(vault: Vault, vm_uuid: str, points: int = RATIO_POINTS) -> float:
    """stored / uncompressed bytes of the compressed disks of the VM's newest points (an incremental: its
    changed bytes; a full: qemu-img measure of the stored image), capped at 1.0; 1.0 without such disks."""
    stored = logical = 0
    for p in vault.list_points(vm_uuid)[:points]:
        for rec in p.manifest.disks:
            if rec.compression == "none" or rec.key_id:
                continue
            raw = rec.changed_bytes if rec.kind == "incremental" else _stored_measure(vault, p, rec.target)
            if raw:
                stored, logical = stored + rec.stored_bytes, logical + raw
    return min(1.0, stored / logical) if logical else 1.0


def _stored_measure(vault: Vault, p: RecoveryPoint, target: str) -> int | None:
    """The uncompressed size of a stored full disk (qemu-img measure of the point's file), None if unknown."""
    rec = p.manifest.disk(target)
    if rec is None:
        return None
    try:
        path = vault.disk_path(p, rec)
        return measure(Disk(target=target, path=str(path), format=rec.format))
    except (VmBackupError, OSError, TypeError):
        return None


def predict(
    vault: Vault,
    dom: libvirt.virDomain,
    ds: list[Disk],
    chain: ChainPlan,
    running: bool,
    workdir: Path,
    compression: str = "none",
) -> Prediction:
    """The next point's predicted stored bytes (see the module doc) and the vault's free space and margin."""
    sizes = checkpoint_sizes(dom, chain.checkpoint) if running and chain.checkpoint and chain.parent else {}
    disks: list[DiskPrediction] = []
    for d in ds:
        inc = None
        if chain.copies_changes(d.target) and chain.checkpoint:
            inc = dirty_bytes(d, chain.checkpoint, sizes, workdir, running)
        disks.append(inc or full_bytes(d, running))
    ratio = recent_ratio(vault, dom.UUIDString()) if compression != "none" else 1.0
    st = os.statvfs(_existing(vault.root))
    return Prediction(
        bytes=int(sum(x.bytes for x in disks) * ratio),
        disks=disks,
        ratio=round(ratio, 4),
        free_bytes=st.f_bavail * st.f_frsize,
        margin_bytes=margin_for(st.f_blocks * st.f_frsize),
    )


def _existing(path: Path) -> Path:
    """path, or its nearest existing parent (a vault not created yet: the filesystem it will be on)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check(vault: Vault, pred: Prediction) -> None:
    """VAULT_FULL (nothing frozen, nothing written yet) unless the predicted point plus the margin fits."""
    if pred.fits:
        return
    per_disk = ", ".join(f"{x.target} {x.kind} {x.bytes / 2**20:.1f} MiB ({x.source})" for x in pred.disks)
    raise VaultFull(
        f"vault {vault.root} has {pred.free_bytes / 2**20:.1f} MiB free; this point needs about "
        f"{pred.bytes / 2**20:.1f} MiB ({per_disk}{f', x{pred.ratio} compressed' if pred.ratio != 1.0 else ''}) "
        f"plus a {pred.margin_bytes / 2**20:.1f} MiB margin",
        details=pred.to_dict(),
    )
