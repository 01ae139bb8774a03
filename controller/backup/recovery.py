"""Putting VMs back after a failed, cancelled or interrupted backup.

``put_back`` is the undo used both by the engine (failure, cancel) and by ``recover`` at controller start: whatever
step was reached, the VM ends on its original disk files with no overlay left, the guest is thawed, and no partial
recovery point remains. Usage at start-up::

    report = recover(settings)      # idempotent; safe to run while no backup is running
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import libvirt

from controller import db
from controller.backup.intent import Intent, IntentStore
from controller.backup.snapshot import commit_back, is_overlay, remove_overlay
from controller.errors import VmBackupError
from controller.settings import Settings
from controller.virt.connection import connection
from controller.virt.domain import disks, state_name


@dataclass
class RecoveryReport:
    """What a recovery pass did."""

    committed: list[str] = field(default_factory=list)  # "vm:target"
    removed_overlays: list[str] = field(default_factory=list)
    removed_partials: list[str] = field(default_factory=list)
    thawed: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def put_back(dom: libvirt.virDomain, originals: dict[str, str], report: RecoveryReport | None = None) -> None:
    """Merge any overlay of ours back into the original disk files and delete it."""
    report = report or RecoveryReport()
    if state_name(dom) not in ("running", "paused", "blocked"):
        return  # a shut-off domain never got an overlay (the external snapshot needs a live domain)
    for d in disks(dom):
        base = originals.get(d.target)
        if base is None or d.path == base or not is_overlay(d.path):
            continue
        commit_back(dom, d.target, base)
        remove_overlay(d.path)
        report.committed.append(f"{dom.name()}:{d.target}")
        report.removed_overlays.append(d.path)


def _leftover_overlays(intent: Intent) -> list[str]:
    """Overlay files of this job still on disk (e.g. created by a snapshot whose intent step was never written)."""
    out = []
    for base in intent.originals.values():
        stem, _ = os.path.splitext(base)
        cand = f"{stem}.vmb-{intent.job_id}.qcow2"
        if os.path.exists(cand):
            out.append(cand)
    return out


def recover(settings: Settings) -> RecoveryReport:
    """Finish or undo every backup whose controller died; mark their jobs failed (CONTROLLER_RESTARTED)."""
    from controller.jobs.store import JobStore
    from controller.vault.vault import Vault

    report = RecoveryReport()
    conn = db.connect(settings.db_path)
    intents, jobs, vault = IntentStore(conn), JobStore(conn), Vault(settings.vault)
    for intent in intents.pending():
        if jobs.is_owner_alive(intent.job_id):
            continue  # a live controller is running this backup right now
        try:
            _recover_one(settings, intent, report)
            vault.remove_partials(intent.vm_uuid)
            report.removed_partials.append(intent.vm_uuid)
            intents.done(intent.job_id)
        except VmBackupError as e:
            report.errors.append(f"{intent.vm_name}: {e}")
    report.failed_jobs = [j.id for j in jobs.recover_orphans()]
    return report


def _recover_one(settings: Settings, intent: Intent, report: RecoveryReport) -> None:
    """Thaw the guest if it may still be frozen, then merge overlays back."""
    with connection(intent.host_uri) as lv:
        try:
            dom = lv.lookupByUUIDString(intent.vm_uuid)
        except libvirt.libvirtError:
            return  # the VM is gone; nothing to put back
        if intent.freeze_token and intent.step in ("frozen", "snapshotted") and _thaw(settings, intent):
            report.thawed.append(intent.vm_name)
        put_back(dom, intent.originals, report)
        if state_name(dom) not in ("running", "paused", "blocked"):
            for ovl in _leftover_overlays(intent):
                remove_overlay(ovl)
                report.removed_overlays.append(ovl)


def _thaw(settings: Settings, intent: Intent) -> bool:
    """Ask the agent to thaw with the recorded token; the agent's watchdog has usually done it already."""
    from controller.backup.quiesce import agent_client
    from controller.registration.store import get_registration

    conn = db.connect(settings.db_path)
    reg = get_registration(conn, intent.vm_uuid)
    if reg is None:
        return False
    try:
        with agent_client(settings, reg) as client:
            client.thaw(intent.freeze_token)
        return True
    except VmBackupError:
        return False
