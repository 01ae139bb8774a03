"""Putting VMs back after a failed, cancelled or interrupted backup.

``put_back`` is the undo used both by the engine (failure, cancel) and by ``recover`` at controller start: whatever
step was reached and whether the VM still runs or was shut off since, the VM (live and saved definition) ends on its
original disk files with every guest write merged in and no overlay left, the guest is thawed, and no partial
recovery point remains. Usage at start-up::

    report = recover(settings)      # or recover(state); idempotent; safe to run while no backup is running
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from controller.agentclient import open_agent
from controller.backup import cbt, qga, qsdproc
from controller.backup.disksource import overlay_dir
from controller.backup.intent import Intent, IntentStore
from controller.backup.offline import merge_offline, remove_overlay_guarded, repoint_inactive
from controller.backup.snapshot import active_path, commit_back, overlay_path
from controller.errors import VmBackupError
from controller.registration.store import get_registration
from controller.settings import Settings
from controller.state import State, using
from controller.virt.connection import connection
from controller.virt.domain import Disk, disks


@dataclass
class RecoveryReport:
    """What a recovery pass did."""

    committed: list[str] = field(default_factory=list)  # "vm:target"
    removed_overlays: list[str] = field(default_factory=list)
    removed_partials: list[str] = field(default_factory=list)
    thawed: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def put_back(
    dom: libvirt.virDomain,
    originals: dict[str, str],
    job_id: str,
    report: RecoveryReport | None = None,
    block_dir: Path | None = None,
) -> None:
    """Merge this job's overlays back into the original disk files and delete them; others' overlays are left alone.

    A running (or paused) VM is merged by an active commit + pivot; a VM that is not running (shut off mid-backup,
    destroyed, powered off) by ``qemu-img commit`` and a redefinition of its inactive XML on the original files.
    Only ``<stem>.vmb-<job_id>.qcow2`` files of `job_id` are touched, and a file is deleted only once no domain
    definition of the host (live or inactive) names it. block_dir is where block-device overlays live
    (disksource.overlay_dir). Raises the first error after trying every disk.
    """
    report = report or RecoveryReport()
    active = bool(dom.isActive())
    first_error: VmBackupError | None = None
    for target, base in originals.items():
        ovl = overlay_path(base, job_id, block_dir)
        try:
            if active:
                _put_back_live(dom, target, ovl, base, report)
            else:
                _put_back_offline(dom, target, ovl, base, report)
        except VmBackupError as e:
            report.errors.append(f"{dom.name()}:{target}: {e}")
            first_error = first_error or e
    if first_error is not None:
        raise first_error


def _put_back_live(dom: libvirt.virDomain, target: str, ovl: str, base: str, report: RecoveryReport) -> None:
    """Active commit + pivot when the running VM writes to this job's overlay; then delete it if nothing names it."""
    now_on = active_path(dom, target)
    if now_on is not None and os.path.realpath(now_on) == os.path.realpath(ovl):
        commit_back(dom, target, base)
        report.committed.append(f"{dom.name()}:{target}")
    # libvirt normally moves the persistent definition back on the pivot; make sure it does not name the overlay
    repoint_inactive(dom, target, ovl, base, _format_in(disks(dom), target))
    _remove_if_present(dom.connect(), ovl, report)


def _put_back_offline(dom: libvirt.virDomain, target: str, ovl: str, base: str, report: RecoveryReport) -> None:
    """qemu-img commit + inactive redefinition when the saved definition names this job's overlay; then delete it."""
    named = any(
        d.target == target and os.path.realpath(d.path) == os.path.realpath(ovl)
        for d in (disks(dom, inactive=True) if dom.isPersistent() else [])
    )
    if named:
        merge_offline(dom, target, ovl, base)
        report.committed.append(f"{dom.name()}:{target}")
    _remove_if_present(dom.connect(), ovl, report)


def _remove_if_present(conn: libvirt.virConnect, ovl: str, report: RecoveryReport) -> None:
    """Delete an overlay file that exists and that no domain definition names (OverlayInUse otherwise)."""
    if os.path.exists(ovl):
        remove_overlay_guarded(conn, ovl)
        report.removed_overlays.append(ovl)


def _format_in(ds: list[Disk], target: str) -> str | None:
    """The format the live definition gives a target (the base's own format once the VM runs on it again)."""
    return next((d.format for d in ds if d.target == target), None)


def recover(source: Settings | State) -> RecoveryReport:
    """Finish or undo every backup whose controller died (see :func:`_recover`), on a State or opening one."""
    with using(source) as st:
        return _recover(st)


def _recover(st: State) -> RecoveryReport:
    """Finish or undo every backup whose controller died; mark their jobs failed (CONTROLLER_RESTARTED).

    Each VM is put back inside a ``recover`` job holding the VM's operation lock, so no other job (a new backup, a
    restore) touches the VM meanwhile; a VM whose lock a live job holds is skipped and reported. An intent whose
    put-back fails is kept, so the next ``vmbackup recover`` retries it.
    """
    from controller.jobs.store import JobStore, VmRef

    report = RecoveryReport()
    settings, conn = st.settings, st.db
    intents, jobs, vault = IntentStore(conn), JobStore(conn), st.vault
    for intent in intents.pending():
        if jobs.is_owner_alive(intent.job_id):
            continue  # a live controller is running this backup right now
        try:
            job = jobs.create("recover", vm=VmRef(uuid=intent.vm_uuid, name=intent.vm_name, host_uri=intent.host_uri))
            with jobs.run(job.id) as run:
                run.detail("recovers_job", intent.job_id)
                _recover_one(settings, conn, intent, report)
                vault.remove_partials(intent.vm_uuid)
            report.removed_partials.append(intent.vm_uuid)
            intents.done(intent.job_id)
        except VmBackupError as e:
            report.errors.append(f"{intent.vm_name}: {e}")
    report.failed_jobs = [j.id for j in jobs.recover_orphans()]
    return report


def _recover_one(settings: Settings, conn: sqlite3.Connection, intent: Intent, report: RecoveryReport) -> None:
    """Thaw the guest if it may still be frozen, then merge this job's overlays back (live or offline)."""
    with connection(intent.host_uri) as lv:
        try:
            dom = lv.lookupByUUIDString(intent.vm_uuid)
        except libvirt.libvirtError:
            return  # the VM is gone; nothing to put back (its overlays stay on disk, unmerged)
        if intent.freeze_token and intent.step in ("frozen", "snapshotted") and _thaw(settings, conn, intent, dom):
            report.thawed.append(intent.vm_name)
        work = overlay_dir(settings.home, intent.vm_uuid)
        qsdproc.kill_stray(work)  # an incremental copy's storage daemon, if the controller died mid-copy
        put_back(dom, intent.originals, intent.job_id, report, work)
        # whatever step it died at, the checkpoints may not match the vault any more: the next backup is a full
        cbt.reset_chain(conn, dom, intent.vm_uuid, f"backup job {intent.job_id} did not finish (recovered)")


def _thaw(settings: Settings, conn: sqlite3.Connection, intent: Intent, dom: libvirt.virDomain) -> bool:
    """Ask the agent to thaw with the recorded token; the agent's watchdog has usually done it already. A qemu-ga
    freeze has no watchdog: libvirt's fsThaw (bounded) thaws it."""
    token = intent.freeze_token
    if token is None:
        return False
    if token == qga.QGA_TOKEN:
        return qga.thaw_now(dom, qga.PING_TIMEOUT_S) is None
    reg = get_registration(conn, intent.vm_uuid)
    if reg is None:
        return False
    try:
        with open_agent(settings, reg) as client:
            client.thaw(token)
        return True
    except VmBackupError:
        return False
