"""Changed-block tracking: vmbackup's libvirt checkpoints, and whether the next backup can be an incremental.

A checkpoint is a persistent qcow2 dirty bitmap on each backed-up disk, named ``vmb-<job id>`` after the job that made
it; vmbackup touches no other checkpoint. Each point's manifest names the checkpoint its job made; the next backup
copies only what that checkpoint's bitmap marks (controller/backup/qsd.py) and, once the VM is back on its disks,
deletes every older ``vmb-*`` checkpoint::

    plan = plan_chain(conn, vault, dom, disks, force_full=False, full_every=None)   # parent + why not, per disk
    name = create(dom, job_id, disks)          # right before the freeze; None if no disk can carry a bitmap
    ...snapshot, copy (incremental from plan.parent's plan.checkpoint), commit...
    delete_ours(dom, keep=name)                # the older checkpoints are not needed any more

Any doubt about a chain gives a full with the reason on the point (``full_reason``); restore ``--replace``,
unprotect, unregister and crash recovery call :func:`reset_chain`, so the next backup is a full.
"""

from __future__ import annotations

import contextlib
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import libvirt

from controller.backup.exceptions import CheckpointFailed
from controller.errors import VmBackupError
from controller.vault import chain, qemuimg, recycle
from controller.vault.manifest import DiskRecord, RecoveryPoint
from controller.vault.vault import Vault
from controller.virt.connection import translate
from controller.virt.domain import Disk, disks

PREFIX = "vmb-"
#: full reasons that are a normal part of the schedule, not a broken chain: no warning on the job
_EXPECTED = ("no previous point", "--full requested", "policy full_every", "raw disk: no dirty bitmap")


RAW_REASON = "raw disk: no dirty bitmap"
V2_REASON = (
    "qcow2 v2 image (compat 0.10) cannot hold a dirty bitmap; with the VM shut off, "
    "`qemu-img amend -f qcow2 -o compat=1.1 FILE` enables incrementals"
)


def probe(d: Disk) -> tuple[str | None, qemuimg.ImageInfo | None]:
    """Why a disk cannot carry a dirty bitmap (raw, qcow2 v2, unreadable) or None, and its qemu-img info (qcow2)."""
    if d.format != "qcow2":
        return RAW_REASON, None
    try:
        inf = qemuimg.info(Path(d.path), force_share=True, fmt="qcow2")
    except VmBackupError as e:
        return f"disk {d.target} unreadable: {e.message}", None
    return (None if inf.compat == "1.1" else V2_REASON), inf


def bitmap_problem(d: Disk) -> str | None:
    """Why a disk cannot carry a dirty bitmap (raw, qcow2 v2, unreadable), or None."""
    return probe(d)[0]


def checkpoint_name(job_id: str) -> str:
    """The checkpoint a backup job creates."""
    return f"{PREFIX}{job_id}"


def ours(dom: libvirt.virDomain) -> list[str]:
    """The domain's vmbackup checkpoints, oldest first (job ids sort by time)."""
    return sorted(c.getName() for c in dom.listAllCheckpoints(0) if c.getName().startswith(PREFIX))


def bitmap_targets(dom: libvirt.virDomain, name: str) -> set[str]:
    """The disk targets a checkpoint tracks with a bitmap."""
    root = ET.fromstring(dom.checkpointLookupByName(name, 0).getXMLDesc(0))
    return {d.get("name", "") for d in root.findall("./disks/disk") if d.get("checkpoint") == "bitmap"}


def create(dom: libvirt.virDomain, job_id: str, ds: list[Disk], tracked: set[str] | None = None) -> str | None:
    """Create ``vmb-<job id>`` tracking every disk of ``ds`` that can hold a bitmap (qcow2 v3; every other disk:
    no bitmap); its name. None when no disk can (raw, qcow2 v2). CHECKPOINT_FAILED if libvirt refuses.
    ``tracked``: the targets known to carry a bitmap (``ChainPlan.trackable``), to skip probing them again.
    """
    if tracked is None:
        tracked = {d.target for d in ds if bitmap_problem(d) is None}
    if not tracked:
        return None
    name = checkpoint_name(job_id)
    parts = "".join(
        f"<disk name={quoteattr(d.target)} checkpoint={quoteattr('bitmap' if d.target in tracked else 'no')}/>"
        for d in disks(dom)
    )
    xml = f"<domaincheckpoint><name>{name}</name><description>vmbackup</description><disks>{parts}</disks>" \
        "</domaincheckpoint>"
    try:
        dom.checkpointCreateXML(xml, 0)
    except libvirt.libvirtError as e:
        err = translate(e, "checkpoint")
        raise CheckpointFailed(err.message, details={**err.details, "checkpoint": name}) from e
    return name


def delete(dom: libvirt.virDomain, name: str) -> None:
    """Delete one of our checkpoints and its bitmaps.

    A running domain: libvirt removes the bitmaps. A shut-off one (libvirt 9.0 cannot delete there): the metadata
    only, then ``qemu-img bitmap --remove`` on each tracked qcow2 disk (nothing holds them open).
    """
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to delete checkpoint {name!r}: not vmbackup's")
    try:
        cp = dom.checkpointLookupByName(name, 0)
    except libvirt.libvirtError:
        return  # already gone
    if dom.isActive():
        cp.delete(0)
        return
    tracked = bitmap_targets(dom, name)
    cp.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    for d in disks(dom):
        if d.target in tracked and d.format == "qcow2" and d.path:
            _remove_bitmap(d.path, name)


def _remove_bitmap(path: str, name: str) -> None:
    """Remove a persistent bitmap from an image nobody runs on, if it is there (best effort: a stray bitmap only
    costs a little tracking; the next backup's checks never trust a bitmap without its checkpoint)."""
    with contextlib.suppress(VmBackupError):
        qemuimg.remove_bitmaps(Path(path), name)


def delete_ours(dom: libvirt.virDomain, keep: str | None = None) -> list[str]:
    """Delete every vmbackup checkpoint except ``keep``, newest first (libvirt merges a child into its parent
    otherwise); the names deleted."""
    gone = []
    for name in reversed(ours(dom)):
        if name != keep:
            delete(dom, name)
            gone.append(name)
    return gone


def mark_reset(conn: sqlite3.Connection, vm_uuid: str, reason: str) -> None:
    """Record that the VM's chain is broken from now on: its next backup is a full with this reason."""
    with conn:
        conn.execute(
            "INSERT INTO chain_resets (vm_uuid, at, reason) VALUES (?, ?, ?) "
            "ON CONFLICT(vm_uuid) DO UPDATE SET at = excluded.at, reason = excluded.reason",
            (vm_uuid, datetime.now(UTC).isoformat(timespec="seconds"), reason),
        )


def clear_reset(conn: sqlite3.Connection, vm_uuid: str) -> None:
    """A full point started a new chain: the reset is done with."""
    with conn:
        conn.execute("DELETE FROM chain_resets WHERE vm_uuid = ?", (vm_uuid,))


def last_reset(conn: sqlite3.Connection, vm_uuid: str) -> tuple[str, str] | None:
    """(at, reason) of the VM's last chain reset, or None."""
    row = conn.execute("SELECT at, reason FROM chain_resets WHERE vm_uuid = ?", (vm_uuid,)).fetchone()
    return (row[0], row[1]) if row else None


def reset_chain(conn: sqlite3.Connection, dom: libvirt.virDomain | None, vm_uuid: str, reason: str) -> list[str]:
    """Break the VM's chain: mark it (next backup full, with reason) and delete its vmbackup checkpoints.

    Returns the checkpoints deleted; a libvirt failure deleting them is not fatal (the mark alone forces the full,
    and the next backup deletes stale ones).
    """
    mark_reset(conn, vm_uuid, reason)
    if dom is None:
        return []
    try:
        return delete_ours(dom)
    except libvirt.libvirtError:
        return []


@dataclass
class ChainPlan:
    """What the next backup of a VM can be: an incremental over ``parent`` from ``checkpoint``, or a full."""

    parent: RecoveryPoint | None = None
    checkpoint: str | None = None  # the parent's checkpoint: the bitmap to copy from
    full_reason: str | None = None  # set when the whole point is a full (an incremental was possible in principle)
    disk_reasons: dict[str, str] = field(default_factory=dict)  # per disk copied in full inside an incremental
    new_checkpoint: str | None = None  # the checkpoint the new point names (made by this job, or carried on)
    trackable: set[str] = field(default_factory=set)  # disks that can carry a bitmap (qcow2 v3)
    notes: list[str] = field(default_factory=list)  # warnings for the job

    @property
    def incremental(self) -> bool:
        """True when at least some disks can be copied incrementally."""
        return self.parent is not None

    def copies_changes(self, target: str) -> bool:
        """True when this disk is to be copied incrementally (so far: the copy may still find its bitmap bad)."""
        return self.parent is not None and target not in self.disk_reasons

    def virtual_size(self, target: str) -> int:
        """The parent's virtual size of a disk (plan_chain checked the disk still has it)."""
        rec = self.parent.manifest.disk(target) if self.parent else None
        if rec is None:
            raise KeyError(target)
        return rec.virtual_size

    def manifest_fields(self, stored: list[DiskRecord]) -> dict[str, Any]:
        """The point's chain fields, from what was actually stored (a disk may have fallen back to a full copy)."""
        if self.parent is not None and any(r.kind == "incremental" for r in stored):
            depth = self.parent.manifest.chain_depth + 1
            return {"parent": self.parent.point_id, "checkpoint": self.new_checkpoint, "chain_depth": depth}
        if self.parent is not None and not self.full_reason:  # every disk fell back
            self.full_reason = "; ".join(sorted(set(self.disk_reasons.values())))
        return {"parent": None, "checkpoint": self.new_checkpoint, "chain_depth": 0, "full_reason": self.full_reason}

    def warnings(self) -> list[str]:
        """What the job should warn about: a chain that broke, disks that could not be copied incrementally."""
        out = list(self.notes)
        if self.full_reason and not self.full_reason.startswith(_EXPECTED):
            out.append(f"full backup instead of an incremental: {self.full_reason}")
        elif self.parent is not None:
            out += [
                f"disk {t} copied in full: {why}" for t, why in sorted(self.disk_reasons.items())
                if why not in (RAW_REASON, V2_REASON)
            ]
        return out

    @classmethod
    def full(cls, reason: str) -> ChainPlan:
        """A full backup, for this reason."""
        return cls(full_reason=reason)


def plan_chain(
    conn: sqlite3.Connection,
    vault: Vault,
    dom: libvirt.virDomain,
    ds: list[Disk],
    force_full: bool = False,
    full_every: str | None = None,
) -> ChainPlan:
    """Decide incremental or full for a VM's next backup from the chain's health; any doubt is a full."""
    probes = {d.target: probe(d) for d in ds}
    plan = _decide(conn, vault, dom, ds, probes, force_full, full_every)
    plan.trackable = {t for t, (why, _) in probes.items() if why is None}
    return plan


def _decide(
    conn: sqlite3.Connection,
    vault: Vault,
    dom: libvirt.virDomain,
    ds: list[Disk],
    probes: dict[str, tuple[str | None, qemuimg.ImageInfo | None]],
    force_full: bool,
    full_every: str | None,
) -> ChainPlan:
    """plan_chain's decision, given each disk's probe."""
    vm_uuid = dom.UUIDString()
    if force_full:
        return ChainPlan.full("--full requested")
    problems = {why for why, _ in probes.values()}
    if None not in problems:  # not one disk can carry a bitmap: every backup is a full, for that reason
        return ChainPlan.full("; ".join(sorted(p for p in problems if p)))
    gone = recycle.newest_deleted(vault, vm_uuid)
    if gone is not None:  # never build beside it (the chain would fork): a full
        return ChainPlan.full(f"newest point {gone} was deleted")
    parent = chain.latest(vault, vm_uuid)
    if parent is None:
        return ChainPlan.full("no previous point")
    m, pid = parent.manifest, parent.point_id
    if not m.checkpoint:
        return ChainPlan.full(f"previous point {pid} has no checkpoint")
    why = _policy_full(vault, parent, full_every) or _reset_since(conn, vm_uuid, m.created)
    why = why or _parent_problem(vault, parent) or _libvirt_problem(dom, m.checkpoint)
    if why:
        return ChainPlan.full(why)
    if {d.target for d in ds} != {r.target for r in m.disks}:
        return ChainPlan.full(f"disk set changed since {pid}")
    tracked = bitmap_targets(dom, m.checkpoint)
    plan = ChainPlan(parent=parent, checkpoint=m.checkpoint)
    for d in ds:
        rec = m.disk(d.target)
        assert rec is not None  # same disk set
        if d.format != "qcow2" or rec.format != "qcow2":
            plan.disk_reasons[d.target] = RAW_REASON
            continue
        why, inf = probes[d.target]
        if inf is None:
            return ChainPlan.full(why or f"disk {d.target} unreadable")
        if inf.virtual_size != rec.virtual_size:
            return ChainPlan.full(f"disk {d.target} virtual size changed since {pid}")
        if inf.compat != "1.1":
            plan.disk_reasons[d.target] = V2_REASON
        elif d.target not in tracked:
            plan.disk_reasons[d.target] = f"checkpoint {m.checkpoint} does not track disk {d.target}"
    if all(d.target in plan.disk_reasons for d in ds):
        return ChainPlan.full("; ".join(sorted(set(plan.disk_reasons.values()))))
    return plan


def _policy_full(vault: Vault, parent: RecoveryPoint, full_every: str | None) -> str | None:
    """The policy's full_every: N backups ("7") or N days ("7d") since the chain's full."""
    if not full_every:
        return None
    text = full_every.strip().lower()
    if text.endswith("d"):
        days = int(text[:-1])
        try:
            first = chain.chain(vault, parent)[0]
        except VmBackupError:
            return None  # _parent_problem reports it
        started = datetime.fromisoformat(first.manifest.created)
        if datetime.now(UTC) - started >= timedelta(days=days):
            return f"policy full_every {full_every} reached (chain started {first.manifest.created})"
        return None
    n = int(text)
    if parent.manifest.chain_depth + 1 >= n:
        return f"policy full_every {n} reached"
    return None


def _reset_since(conn: sqlite3.Connection, vm_uuid: str, created: str) -> str | None:
    """A chain reset recorded after the parent point was made."""
    reset = last_reset(conn, vm_uuid)
    if reset and reset[0] >= created:
        return f"{reset[1]} (at {reset[0]})"
    return None


def _parent_problem(vault: Vault, parent: RecoveryPoint) -> str | None:
    """Why the parent cannot carry an incremental: failed verification, a broken chain, a missing disk file."""
    v = parent.manifest.verify
    if v is not None and not v.get("ok", True):
        return f"parent point {parent.point_id} failed verification"
    try:
        chain.chain(vault, parent)
    except VmBackupError as e:
        return f"parent point {parent.point_id}'s chain is broken: {e}"
    for rec in parent.manifest.disks:
        if not vault.disk_path(parent, rec).is_file():
            return f"parent point {parent.point_id} is missing disk {rec.target}"
    return None


def _libvirt_problem(dom: libvirt.virDomain, name: str) -> str | None:
    """The parent's checkpoint must still exist in libvirt."""
    if name not in ours(dom):
        return f"checkpoint {name} missing in libvirt"
    return None
