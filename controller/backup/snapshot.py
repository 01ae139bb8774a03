"""libvirt primitives of a backup: the atomic external disk-only snapshot and the active commit back.

Overlays are created next to each disk as ``<stem>.vmb-<job-id>.qcow2`` so they are recognisably ours and carry the job
id; the snapshot is taken with ``NO_METADATA`` so libvirt keeps no snapshot object behind::

    overlays = take_snapshot(dom, disks, job_id)          # {target: overlay path}; VM now writes to the overlays
    # or, to keep everything but libvirt's snapshot call out of a guest freeze:
    prep = prepare_snapshot(dom, disks, job_id)           # before the freeze: overlay files created, XML built
    overlays = take_prepared(dom, prep)                   # while frozen: one libvirt call (REUSE_EXT)
    ...copy each disk.path (now read-only) into the vault...
    for d in disks:
        commit_back(dom, d.target, d.path)                 # shallow active commit + pivot; VM back on d.path
        remove_overlay(overlays[d.target])
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import libvirt

from controller.backup.disksource import is_block_device
from controller.backup.exceptions import CommitFailed, SnapshotFailed, UnsupportedDisk
from controller.virt.connection import translate
from controller.virt.domain import Disk, disks

OVERLAY_RE = re.compile(r"\.vmb-(?P<job>[A-Za-z0-9_-]+)\.qcow2$")

SNAPSHOT_FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
)
COMMIT_FLAGS = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW


#: The overlays' qcow2 options: 128 KiB clusters in 32 subclusters of 4 KiB (extended L2 entries). The guest's
#: first write into a cluster of a fresh overlay copies only the 4 KiB subclusters it does not cover from the
#: disk below, not a whole 64 KiB cluster (a guest's writes are 4 KiB pages: mostly no copy at all). That is work
#: the guest waits for right after the thaw, when every write is a first write, and again during the commit.
OVERLAY_OPTIONS = "extended_l2=on,cluster_size=128k"


def overlay_path(disk_path: str, job_id: str, block_dir: Path | None = None) -> str:
    """Where the overlay of a disk goes for a job, named after the job (the one place that decides it).

    Beside a file disk; in ``block_dir`` (``disksource.overlay_dir(home, vm_uuid)``) for a block device, named
    after the device's path (/dev/vg/lv -> dev-vg-lv.vmb-<job>.qcow2). A block device needs ``block_dir``.
    """
    p = Path(disk_path)
    if is_block_device(disk_path):
        if block_dir is None:
            raise ValueError(f"{disk_path} is a block device: its overlay needs a vmbackup-owned directory")
        return str(block_dir / f"{'-'.join(p.parts[1:])}.vmb-{job_id}.qcow2")
    return str(p.with_name(f"{p.stem}.vmb-{job_id}.qcow2"))


def is_overlay(path: str) -> bool:
    """True when a path is one of our snapshot overlays."""
    return OVERLAY_RE.search(path) is not None


def check_disks(ds: list[Disk]) -> None:
    """Refuse disks we cannot snapshot (non-qcow2/raw formats)."""
    for d in ds:
        if d.format not in ("qcow2", "raw"):
            raise UnsupportedDisk(f"disk {d.target} ({d.path}) has format {d.format!r}")


def snapshot_xml(ds: list[Disk], overlays: dict[str, str], name: str) -> str:
    """The <domainsnapshot> document for an external disk-only snapshot of the given disks."""
    parts = [
        f"<disk name={quoteattr(d.target)} snapshot='external' type='file'>"
        f"<driver type='qcow2'/><source file={quoteattr(overlays[d.target])}/></disk>"
        for d in ds
    ]
    return (
        f"<domainsnapshot><name>{name}</name><description>vmbackup {name}</description>"
        f"<disks>{''.join(parts)}</disks></domainsnapshot>"
    )


@dataclass(frozen=True)
class PreparedSnapshot:
    """An external snapshot ready to be taken by one libvirt call: its overlay files exist, its XML is built."""

    overlays: dict[str, str]  # {target: overlay path}, each an empty qcow2 over the disk's current image
    xml: str
    flags: int


def prepare_snapshot(
    dom: libvirt.virDomain, ds: list[Disk], job_id: str, block_dir: Path | None = None
) -> PreparedSnapshot:
    """Everything of a snapshot that can happen before a freeze: create each overlay (an empty qcow2 whose backing
    is the disk's current image, at the disk's virtual size) and build the XML that makes libvirt reuse them.

    libvirt then skips creating and formatting the files inside the freeze (half of its snapshot call's time).
    block_dir holds the overlays of block-device disks (see overlay_path); it is created when needed. An overlay
    left behind by a failure is named after the job, so the job's undo or crash recovery deletes it.
    """
    check_disks(ds)
    overlays = {d.target: overlay_path(d.path, job_id, block_dir) for d in ds}
    if block_dir is not None and any(is_block_device(d.path) for d in ds):
        block_dir.mkdir(mode=0o711, parents=True, exist_ok=True)  # qemu (libvirt-qemu) must reach the overlay
        block_dir.parent.chmod(0o711)
    for path in overlays.values():
        if os.path.exists(path):
            raise SnapshotFailed(f"overlay {path} already exists", details={"overlay": path})
    for d in ds:
        _create_overlay(dom, d, overlays[d.target])
    flags = SNAPSHOT_FLAGS | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
    return PreparedSnapshot(overlays, snapshot_xml(ds, overlays, f"vmb-{job_id}"), flags)


def _create_overlay(dom: libvirt.virDomain, d: Disk, path: str) -> None:
    """``qemu-img create`` an empty qcow2 over ``d``'s image (not opened: QEMU holds it; the size is libvirt's)."""
    try:
        size = int(dom.blockInfo(d.target)[0])
    except libvirt.libvirtError as e:
        err = translate(e, f"size of disk {d.target}")
        raise SnapshotFailed(err.message, details={**err.details, "target": d.target}) from e
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", OVERLAY_OPTIONS, "-u", "-b", d.path, "-F", d.format,
           path, str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise SnapshotFailed(f"creating overlay {path} failed: {proc.stderr.strip()}",
                             details={"overlay": path, "target": d.target})


def take_prepared(dom: libvirt.virDomain, prep: PreparedSnapshot) -> dict[str, str]:
    """Atomically switch every disk to its prepared overlay (nothing but libvirt's call); returns {target: overlay}."""
    try:
        dom.snapshotCreateXML(prep.xml, prep.flags)
    except libvirt.libvirtError as e:
        err = translate(e, "external snapshot")
        raise SnapshotFailed(err.message, details=err.details) from e
    return prep.overlays


class SnapshotInFlight:
    """:func:`take_prepared` started in its own thread (libvirt releases the GIL), so the caller can write the records
    it must write while libvirt works instead of before it. ``wait`` joins it; leave no path without joining."""

    def __init__(self, dom: libvirt.virDomain, prep: PreparedSnapshot) -> None:
        self.prep = prep
        self.duration_ms: float | None = None
        self._overlays: dict[str, str] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(dom,), name="snapshot", daemon=True)
        self._thread.start()

    def _run(self, dom: libvirt.virDomain) -> None:
        """The thread: libvirt's call, its duration, its result or error."""
        t0 = time.monotonic()
        try:
            self._overlays = take_prepared(dom, self.prep)
        except BaseException as e:  # handed to wait(), in the caller's thread
            self._error = e
        finally:
            self.duration_ms = (time.monotonic() - t0) * 1000

    def join(self) -> None:
        """Wait until libvirt's call returned, whatever its outcome."""
        self._thread.join()

    def wait(self) -> dict[str, str]:
        """Join; {target: overlay path}, or raise what the call raised (SnapshotFailed)."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._overlays is not None
        return self._overlays


def take_snapshot(
    dom: libvirt.virDomain, ds: list[Disk], job_id: str, block_dir: Path | None = None
) -> dict[str, str]:
    """Atomically snapshot every disk to a fresh overlay file; returns {target: overlay path}.

    block_dir holds the overlays of block-device disks (see overlay_path); it is created when needed.
    """
    return take_prepared(dom, prepare_snapshot(dom, ds, job_id, block_dir))


def active_path(dom: libvirt.virDomain, target: str) -> str | None:
    """The file a running domain currently writes for a disk target."""
    for d in disks(dom):
        if d.target == target:
            return d.path
    return None


def commit_back(dom: libvirt.virDomain, target: str, base_path: str, timeout_s: float = 600.0) -> float:
    """Merge the active overlay of `target` into `base_path` and pivot; returns seconds taken."""
    t0 = time.monotonic()
    current = active_path(dom, target)
    if current == base_path:
        return 0.0  # nothing to do: already on the base (e.g. a retry after a crash)
    try:
        if not dom.blockJobInfo(target, 0):
            dom.blockCommit(target, None, None, 0, COMMIT_FLAGS)
        _pivot_when_ready(dom, target, t0 + timeout_s)
    except libvirt.libvirtError as e:
        err = translate(e, f"block commit of {target}")
        raise CommitFailed(err.message, details={**err.details, "target": target, "overlay": current}) from e
    now_on = active_path(dom, target)
    if now_on != base_path:
        raise CommitFailed(
            f"after the commit {target} runs on {now_on}, expected {base_path}",
            details={"target": target, "active": now_on, "expected": base_path},
        )
    return time.monotonic() - t0


def _pivot_when_ready(dom: libvirt.virDomain, target: str, deadline: float) -> None:
    """Poll the active commit until it is in sync, pivot, and wait for the job to go away."""
    pivoted = False
    while time.monotonic() < deadline:
        info = dom.blockJobInfo(target, 0)
        if not info:
            if pivoted:
                return
            raise CommitFailed(f"the commit job of {target} vanished before the pivot", details={"target": target})
        if not pivoted and info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                pivoted = True
            except libvirt.libvirtError as e:
                if "not ready" not in (e.get_error_message() or ""):
                    raise
        time.sleep(0.05)
    raise CommitFailed(f"the commit of {target} did not finish in time", details={"target": target})


def remove_overlay(path: str) -> None:
    """Delete one of our overlays (refuses any other file)."""
    if not is_overlay(path):
        raise ValueError(f"refusing to delete {path}: not a vmbackup overlay")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
