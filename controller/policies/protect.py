"""Protecting VMs: bind registered VMs to a policy (one configure-protection job per VM), unprotect them.

Usage::

    svc = ProtectionService(state)       # a State (borrowed), or Settings (opens one; close() or `with`)
    outcomes = svc.protect(["web1", "db1"], "gold", now=True)    # every VM must be registered
    svc.unprotect("web1", delete_data=False)                      # row stays as unprotected-retain
    svc.unprotect("db1", delete_data=True)                        # stop-protection job; points deleted

Unprotecting (retain or delete) resets the VM's incremental chain: its vmbackup checkpoints are deleted and a later
backup is a full (controller.backup.chainreset).

``--now`` starts a backup through :func:`run_backup_now`, the seam to the backup engine
(``BackupEngine(settings).run(BackupRequest(...))``, engine closed after); tests pass their own runner.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.errors import VmBackupError
from controller.jobs.run import JobRun
from controller.jobs.store import JobStore, VmRef
from controller.policies import store
from controller.policies.exceptions import NotProtected, ProtectRequiresRegistration
from controller.policies.model import Policy
from controller.registration.store import Registration, get_registration, list_registrations
from controller.settings import Settings
from controller.state import State, StateUser
from controller.vault.protect import refuse_if_protected

#: why an unprotected VM's next backup is a full
UNPROTECT_REASON = "VM unprotected"
#: backup seam: (settings, registration, policy) -> the new recovery point's id
BackupRunner = Callable[[Settings, Registration, Policy], str]


def run_backup_now(settings: Settings, reg: Registration, policy: Policy) -> str:
    """Back up one VM now through the backup engine (imported lazily: it needs libvirt)."""
    from controller.backup.engine import BackupEngine, BackupRequest

    req = BackupRequest(
        vm=reg.vm_uuid,
        host_uri=reg.host_uri,
        policy=policy.name,
        min_consistency=policy.min_consistency,
        exclude_disks=policy.exclude_disks,
        full_every=policy.full_every,
        compression=policy.compression,
    )
    with BackupEngine(settings) as engine:
        return engine.run(req).point_id


@dataclass
class ProtectOutcome:
    """What `protect` did for one VM."""

    vm_uuid: str
    vm_name: str
    policy: str
    job_id: str
    previous_policy: str | None = None
    status: str = ""
    backup_point: str | None = None
    backup_error: dict[str, Any] | None = None

    @property
    def change(self) -> str:
        """'new', 'unchanged', 'rebound from X' or 're-protected'."""
        if self.previous_policy is None:
            return "new"
        if self.previous_policy == self.policy:
            return "unchanged"
        return f"rebound from {self.previous_policy}"

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {**self.__dict__, "change": self.change}


@dataclass
class UnprotectOutcome:
    """What `unprotect` did."""

    vm_uuid: str
    vm_name: str
    job_id: str
    mode: str  # retain | delete
    deleted_points: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return dict(self.__dict__)


class ProtectionService(StateUser):
    """Protection bindings against the state DB and vault named by the settings (conn: use that DB connection)."""

    def __init__(
        self,
        source: Settings | State,
        conn: sqlite3.Connection | None = None,
        backup_runner: BackupRunner | None = None,
    ):
        state = self._use_state(source)
        self.settings = state.settings
        self.conn = conn or state.db
        self.jobs = JobStore(self.conn)
        self.vault = state.vault
        self.backup_runner = backup_runner or run_backup_now

    def resolve(self, vm: str) -> Registration:
        """A registered VM by uuid or name; ProtectRequiresRegistration otherwise."""
        reg = get_registration(self.conn, vm.lower())
        if reg is not None:
            return reg
        named = [r for r in list_registrations(self.conn) if r.vm_name == vm]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise ProtectRequiresRegistration(
                f"{len(named)} registered VMs are named {vm!r}: give the uuid",
                remediation="Name the VM by its uuid (`vmbackup register --list`).",
            )
        raise ProtectRequiresRegistration(f"VM {vm!r} is not registered")

    def point_count(self, vm_uuid: str) -> int:
        """How many recovery points of the VM the vault holds."""
        return len(self.vault.list_points(vm_uuid))

    def status(self, vm_uuid: str) -> str:
        """The protection status text of one VM."""
        return store.status_text(store.get_protection(self.conn, vm_uuid), self.point_count(vm_uuid))

    def protect(self, vms: Sequence[str], policy_name: str, now: bool = False) -> list[ProtectOutcome]:
        """Bind every VM to the policy (all must be registered; checked before anything changes)."""
        policy = store.get_policy(self.conn, policy_name).policy
        regs: dict[str, Registration] = {}
        bad = []
        for vm in vms:
            try:
                reg = self.resolve(vm)
                regs[reg.vm_uuid] = reg
            except ProtectRequiresRegistration:
                bad.append(vm)
        if bad:
            raise ProtectRequiresRegistration(
                f"not registered: {', '.join(bad)} (nothing was changed)", details={"vms": bad}
            )
        outcomes = [self._bind_one(reg, policy) for reg in regs.values()]
        if now:
            for out in outcomes:
                self._backup_now(out, regs[out.vm_uuid], policy)
        return outcomes

    def _bind_one(self, reg: Registration, policy: Policy) -> ProtectOutcome:
        """One configure-protection job: bind the VM to the policy."""
        job = self.jobs.create("configure-protection", vm=VmRef(reg.vm_uuid, reg.vm_name, reg.host_uri))
        with self.jobs.run(job.id) as run, run.phase("bind"):
            prev = store.bind(self.conn, reg.vm_uuid, reg.vm_name, policy.name)
            prev_policy = prev.policy if prev is not None and prev.active else None
            run.detail("policy", policy.name)
            if prev is not None:
                run.detail("previous", prev.to_dict())
        out = ProtectOutcome(reg.vm_uuid, reg.vm_name, policy.name, job.id, prev_policy)
        out.status = self.status(reg.vm_uuid)
        return out

    def _backup_now(self, out: ProtectOutcome, reg: Registration, policy: Policy) -> None:
        """Run the initial backup; its failure is recorded on the outcome (the binding stays)."""
        try:
            out.backup_point = self.backup_runner(self.settings, reg, policy)
        except VmBackupError as e:
            out.backup_error = e.to_dict()
        out.status = self.status(reg.vm_uuid)

    def unprotect(self, vm: str, delete_data: bool) -> UnprotectOutcome:
        """Stop protection (a stop-protection job): keep the points (retain) or delete them all."""
        uuid, name, uri = self._protected_vm(vm)
        if delete_data:  # a protected point (vault protect, protect_newest) is never deleted: refused up front
            refuse_if_protected(self.vault, uuid, None, "delete the points of the VM")
        job = self.jobs.create("stop-protection", vm=VmRef(uuid, name, uri))
        out = UnprotectOutcome(uuid, name, job.id, "delete" if delete_data else "retain")
        with self.jobs.run(job.id) as run:
            run.detail("mode", out.mode)
            if not delete_data:
                with run.phase("retain"):
                    store.set_retain(self.conn, uuid)
                self._reset_chain(run, uuid, uri)
                return out
            with run.phase("stop"):
                store.set_retain(self.conn, uuid)  # the schedule stops before any point goes
            self._reset_chain(run, uuid, uri)
            with run.phase("delete-points"):
                for p in self.vault.list_points(uuid):
                    self.vault.delete_point(p, self.settings.soft_delete_days, by="unprotect")  # soft (recycle.py)
                    out.deleted_points.append(p.point_id)
                    run.check_cancelled()
                run.detail("deleted_points", out.deleted_points)
            with run.phase("unbind"):
                store.remove_protection(self.conn, uuid)
        return out

    def _reset_chain(self, run: JobRun, uuid: str, uri: str) -> None:
        """Break the VM's incremental chain (its vmbackup checkpoints go; a later backup is a full)."""
        from controller.backup.chainreset import detail, reset_vm_chain  # lazy: needs libvirt

        with run.phase("reset-chain"):
            run.detail("chain_reset", detail(UNPROTECT_REASON, reset_vm_chain(self.conn, uri, uuid, UNPROTECT_REASON)))

    def _protected_vm(self, vm: str) -> tuple[str, str, str]:
        """(uuid, name, host uri) of a VM with a protection row, by uuid or name (registered or not)."""
        rows = [p for p in store.list_protections(self.conn) if vm.lower() == p.vm_uuid or vm == p.vm_name]
        if len(rows) != 1:
            why = "is not protected" if not rows else f"is ambiguous ({len(rows)} VMs): give the uuid"
            raise NotProtected(f"VM {vm!r} {why}")
        reg = get_registration(self.conn, rows[0].vm_uuid)
        return rows[0].vm_uuid, rows[0].vm_name, reg.host_uri if reg else self.settings.uri
