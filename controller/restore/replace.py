"""Replace-restore: put a point's disks back into an existing VM that is shut off.

The point must be of the target VM (same libvirt UUID) unless ``from_other_vm``; ``confirm(summary)`` (the CLI
asks on the terminal) is called before anything is touched and a False answer ends it with RESTORE_DECLINED.
Each disk is first copied (verified) next to the VM's current file as ``<file>.vmb-restore-<job>``. Only when
every copy is good are the current files renamed aside to ``<file>.vmb-replaced-<job>`` and the copies renamed
into place. On any failure the current files are moved back; after success they are kept (listed in the
result's ``kept_old``) unless ``discard_old``. The VM's definition is not changed. Right before the swap the VM's
incremental chain is reset (``cbt.reset_chain``): its vmbackup checkpoints are deleted and its next backup is a full.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import libvirt

from controller.backup import cbt, chainreset
from controller.jobs.store import JobRun, JobStore, VmRef
from controller.restore.exceptions import PointFromOtherVm, RestoreDeclined, RestoreTargetInvalid, VmRunning
from controller.restore.result import RestoreResult
from controller.vault import DiskRecord, RecoveryPoint, Vault, copy_out_disk, qemuimg
from controller.virt.connection import connection, lookup
from controller.virt.domain import disks, state_name


class Restorer(Protocol):
    """What a replace uses of controller.restore.restore.Restorer (which calls replace_disks with itself)."""

    jobs: JobStore
    vault: Vault

    def _verify(self, run: JobRun, point: RecoveryPoint) -> None: ...

    def _progress(self, run: JobRun, target: str) -> Callable[[int, int], None]: ...


REPLACED = ".vmb-replaced-"
INCOMING = ".vmb-restore-"


#: asked before a replace changes anything: True to go ahead
Confirm = Callable[[str], bool]


def replace_disks(
    r: Restorer,
    point: RecoveryPoint,
    vm: str,
    uri: str,
    discard_old: bool = False,
    from_other_vm: bool = False,
    confirm: Confirm | None = None,
) -> RestoreResult:
    """The replace-restore as one job on the target VM (POINT_FROM_OTHER_VM before any job for a foreign point)."""
    with connection(uri) as lv:
        dom = lookup(lv, vm)
        ref = VmRef(uuid=dom.UUIDString(), name=dom.name(), host_uri=uri)
        refuse_other_vm(point, ref, from_other_vm)
        job = r.jobs.create("restore", vm=ref)
        with r.jobs.run(job.id) as run:
            run.detail("point_id", point.point_id)
            run.detail("mode", "replace")
            if point.vm_uuid.lower() != ref.uuid.lower():
                run.detail("from_other_vm", {"uuid": point.vm_uuid, "name": point.vm_name})
            return _replace(r, run, point, dom, ref, discard_old, confirm)


def refuse_other_vm(point: RecoveryPoint, ref: VmRef, from_other_vm: bool) -> None:
    """POINT_FROM_OTHER_VM unless the point was taken of this VM (same UUID) or from_other_vm is set."""
    if from_other_vm or point.vm_uuid.lower() == ref.uuid.lower():
        return
    raise PointFromOtherVm(
        f"point {point.point_id} is of VM {point.vm_name!r} ({point.vm_uuid}), not of {ref.name!r} ({ref.uuid}); "
        f"replacing would put {point.vm_name!r}'s disks into {ref.name!r}",
        details={"point_vm": point.vm_uuid, "target_vm": ref.uuid},
    )


def summary(point: RecoveryPoint, ref: VmRef, targets: dict[str, Path], discard_old: bool) -> str:
    """What a replace is about to do, for the confirmation question."""
    foreign = point.vm_uuid.lower() != ref.uuid.lower()
    src = f"point {point.point_id} of {point.vm_name!r} ({point.manifest.created})"
    lines = [f"Replace the disks of VM {ref.name!r} ({ref.uuid}) with {src}:"]
    if foreign:
        lines.append(f"  WARNING: the point is of ANOTHER VM ({point.vm_uuid})")
    for target, path in targets.items():
        lines.append(f"  {target}: {path}")
    lines.append(
        "  the current files will be DELETED after the swap"
        if discard_old
        else f"  the current files are kept as <file>{REPLACED}<job> (delete them when no longer needed)"
    )
    return "\n".join(lines)


def _replace(
    r: Restorer,
    run: JobRun,
    point: RecoveryPoint,
    dom: libvirt.virDomain,
    ref: VmRef,
    discard_old: bool,
    confirm: Confirm | None,
) -> RestoreResult:
    """Confirm, verify, copy beside, swap, clean up."""
    t0 = time.monotonic()
    res = RestoreResult(run.job_id, point.point_id, "replace", ref.name, ref.uuid, ref.host_uri)
    with run.phase("verify"):
        refuse_unless_shut_off(dom)
        targets = _match_disks(point, dom)
        if confirm is not None and not confirm(summary(point, ref, targets, discard_old)):
            raise RestoreDeclined(f"replace-restore of {point.point_id} into {ref.name!r} declined; nothing changed")
        r._verify(run, point)
    incoming: dict[str, Path] = {}
    try:
        with run.phase("copy"):
            raw = {d.target for d in disks(dom, inactive=True) if d.format == "raw"}
            for target, path in targets.items():
                new = path.with_name(f"{path.name}{INCOMING}{run.job_id}")
                incoming[target] = new
                rec = _copy_out(r, run, point, target, new, target in raw)
                _copy_owner(path, new)
                res.bytes_copied += rec.logical_size
                run.add_bytes(rec.logical_size)
        with run.phase("define"):
            refuse_unless_shut_off(dom)  # it must not have been started meanwhile
            reset_chain(r.jobs.conn, run, point, dom)
            swap(targets, incoming, run.job_id)
    except BaseException:
        for p in incoming.values():
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".part").unlink(missing_ok=True)
        raise
    for target, path in targets.items():
        old = path.with_name(f"{path.name}{REPLACED}{run.job_id}")
        res.disks[target] = str(path)
        if discard_old:
            old.unlink(missing_ok=True)
        elif old.exists():
            res.kept_old[target] = str(old)
            res.warnings.append(f"previous {target} kept as {old} (delete it when no longer needed)")
    others = [d.target for d in disks(dom, inactive=True) if d.target not in targets]
    res.warnings += [f"disk {t} is not in the point and was left as it is" for t in others]
    for w in res.warnings:
        run.warn(w)
    res.duration_s = time.monotonic() - t0
    run.detail("result", res.to_dict())
    return res


def reset_chain(conn: sqlite3.Connection, run: JobRun, point: RecoveryPoint, dom: libvirt.virDomain) -> None:
    """Break the VM's incremental chain: its disks are about to be replaced, so its checkpoints no longer describe
    them. Done right before the swap (a crash between the swap and the mark would leave a chain over foreign disks;
    a swap that fails and is undone costs only one full backup)."""
    reason = replaced_reason(point)
    run.detail("chain_reset", chainreset.detail(reason, cbt.reset_chain(conn, dom, dom.UUIDString(), reason)))


def _copy_out(r: Restorer, run: JobRun, point: RecoveryPoint, target: str, new: Path, raw: bool) -> DiskRecord:
    """copy_out_disk to new; for a raw disk whose point stored it as a qcow2 (compressed or encrypted), copied out as
    a qcow2 beside it first and written raw into new."""
    rec = point.manifest.disk(target)
    if not raw or rec is None or rec.format != "qcow2":
        return copy_out_disk(point, target, new, r._progress(run, target), r.vault)
    tmp = new.with_name(new.name + ".qcow2")
    try:
        out = copy_out_disk(point, target, tmp, r._progress(run, target), r.vault, overwrite=True)
        qemuimg.to_raw(tmp, new)
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return out


def replaced_reason(point: RecoveryPoint) -> str:
    """The full_reason of the first backup after a replace-restore from ``point``."""
    return f"VM restored or replaced from point {point.point_id}"


def refuse_unless_shut_off(dom: libvirt.virDomain) -> None:
    """VM_RUNNING unless the domain is shut off."""
    state = state_name(dom)
    if state != "shutoff":
        raise VmRunning(f"VM {dom.name()!r} is {state}; a replace-restore needs it shut off")


def _match_disks(point: RecoveryPoint, dom: libvirt.virDomain) -> dict[str, Path]:
    """target -> the VM's current file, for every disk of the point; formats must agree."""
    current = {d.target: d for d in disks(dom, inactive=True)}
    out: dict[str, Path] = {}
    for rec in point.manifest.disks:
        d = current.get(rec.target)
        if d is None:
            raise RestoreTargetInvalid(
                f"VM {dom.name()!r} has no file disk {rec.target}; the point has {rec.target}",
                remediation="Restore as a new VM instead (`vmbackup restore POINT --as NAME`).",
            )
        if d.kind == "block" or stat.S_ISBLK(_mode(d.path)):  # renaming files aside would clobber /dev entries
            raise RestoreTargetInvalid(
                f"disk {rec.target} of {dom.name()!r} is the block device {d.path}; --replace only swaps files",
                remediation=(
                    "Restore the disks only (`vmbackup restore POINT --disks-only --to DIR`) and, with the VM shut "
                    "off, write the image onto the device yourself; or restore as a new VM (`--as NAME`)."
                ),
            )
        if d.format != rec.format and (d.format, rec.format) != ("raw", "qcow2"):  # qcow2 -> raw: _copy_out
            raise RestoreTargetInvalid(
                f"disk {rec.target} of {dom.name()!r} is {d.format}, the point holds {rec.format}",
                remediation="Restore as a new VM or disks only (`--disks-only --to DIR`), then convert.",
            )
        out[rec.target] = Path(d.path)
    return out


def _mode(path: str) -> int:
    """st_mode of path (0 when it cannot be stat'ed)."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def swap(targets: dict[str, Path], incoming: dict[str, Path], job_id: str) -> None:
    """Rename current files aside and the verified copies into place; undo every rename on failure."""
    done: list[tuple[Path, Path]] = []  # (current, aside) pairs already moved aside
    try:
        for target, path in targets.items():
            aside = path.with_name(f"{path.name}{REPLACED}{job_id}")
            if path.exists():
                os.rename(path, aside)
                done.append((path, aside))
            os.rename(incoming[target], path)
    except BaseException:
        for path, aside in reversed(done):
            if path.exists():
                os.rename(path, path.with_name(f"{path.name}{INCOMING}{job_id}"))
            os.rename(aside, path)
        raise


def _copy_owner(ref: Path, new: Path) -> None:
    """Give the restored file the owner and mode of the file it replaces (QEMU must be able to open it)."""
    try:
        st = ref.stat()
    except OSError:
        return
    os.chown(new, st.st_uid, st.st_gid)
    os.chmod(new, st.st_mode & 0o7777)
