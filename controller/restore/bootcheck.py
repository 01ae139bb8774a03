"""Boot-check: prove a recovery point really boots, in a throwaway isolated VM, and record the verdict.

Flow (one job of type ``boot-check``)::

    restore as vmb-bootcheck-<id> (isolated: restricted user-mode NIC; SSH + agent forwards on 127.0.0.1), by
        default instant: a throwaway qcow2 overlay per disk over the vault point (no copy; pinned meanwhile)
    -> boot: the first proof within the timeout: the serial console shows a login prompt or the multi-user /
       graphical target, or sshd answers with its banner through the SSH forward (probes.py says what each proves)
    -> agent: GetInfo over mTLS as the ORIGINAL VM uuid (only if the point's VM was registered)
    -> command: the user's check command over SSH (optional)
    -> shutdown (ACPI, then hard) -> fsck: offline e2fsck/xfs_repair of every restored filesystem
    instant path: the fsck of the point's filesystems as stored runs while the guest boots (throwaway overlays
    over the vault files, fsck.py), and the VM is powered off instead of shut down (its overlays are discarded)
    -> cleanup: domain and every file removed, whatever happened

The result goes into the point's manifest (``boot_check``) and the job; a failure raises BOOT_CHECK_FAILED
with the reason. Usage::

    with BootChecker(settings) as checker:     # or BootChecker(state): borrows an open State
        result = checker.run("20261125T101500Z-3fa9c1", command="test -f /etc/os-release")
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid as uuid_mod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from agent.contract import AGENT_PORT
from controller.errors import VmBackupError
from controller.jobs.store import JobRun, VmRef
from controller.restore import fsck, probes, sweep
from controller.restore.exceptions import BootCheckFailed
from controller.restore.probes import Probe
from controller.restore.restore import NewVmSpec, Restorer
from controller.restore.result import RestoreResult
from controller.restore.undo import Created
from controller.settings import Settings
from controller.ssh.client import GUEST_SSH_PORT
from controller.state import State, StateUser
from controller.vault import RecoveryPoint, keys, pins
from controller.virt.connection import connection

PREFIX = "vmb-bootcheck-"


@dataclass
class BootCheckResult:
    """The verdict and what it rests on."""

    point_id: str
    job_id: str
    vm_name: str
    passed: bool = False
    reason: str = ""
    boot_seconds: float | None = None
    duration_s: float = 0.0
    checks: list[Probe] = field(default_factory=list)
    console_tail: str = ""
    ports: dict[int, int] = field(default_factory=dict)  # guest port -> 127.0.0.1 port the throwaway VM used
    checked_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    #: devices of the original the throwaway VM did not get (restore's dropped_devices), with why
    dropped_devices: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The form stored in the manifest's boot_check field and the job."""
        out: dict[str, Any] = {
            "result": "passed" if self.passed else "failed",
            "reason": self.reason,
            "point_id": self.point_id,
            "job_id": self.job_id,
            "vm_name": self.vm_name,
            "boot_seconds": None if self.boot_seconds is None else round(self.boot_seconds, 1),
            "duration_s": round(self.duration_s, 1),
            "checked_at": self.checked_at,
            "checks": [c.to_dict() for c in self.checks],
            "ports": {str(g): h for g, h in sorted(self.ports.items())},
            "dropped_devices": list(self.dropped_devices),
        }
        if not self.passed:
            out["console_tail"] = self.console_tail
        return out


class BootChecker(StateUser):
    """Runs boot-checks with the settings' vault, state DB and libvirt; close() closes a State it opened."""

    def __init__(self, source: Settings | State):
        state = self._use_state(source)
        self.settings = state.settings
        self.restorer = Restorer(state)

    def run(
        self,
        point_id: str,
        timeout_s: float = 180.0,
        command: str | None = None,
        host_uri: str | None = None,
        instant: bool = True,
    ) -> BootCheckResult:
        """Boot-check one point; records the result on the point and raises BOOT_CHECK_FAILED if it failed.

        instant (default): the throwaway VM boots the point through overlays (no copy; the point is pinned
        meanwhile); instant=False copies the disks out first (the old path, kept for comparison). An encrypted
        point always takes the copy path: its disks are decrypted into the throwaway VM's directory (removed after).
        """
        point = self.restorer.point(point_id)
        # an encrypted point boots from a decrypted temporary copy (docs/design.md); a key not held or wrong is
        # KEY_MISSING / KEY_WRONG here, before a job or a verdict is recorded (the point is not at fault)
        if keys.check_point(self.restorer.vault, point):
            instant = False
        uri = host_uri or self.settings.uri
        name = PREFIX + secrets.token_hex(4)
        root = self.settings.home / "bootcheck"
        with connection(uri) as lv:
            stale = sweep.sweep(root, lv, PREFIX)
        for pin in pins.list_pins(self.restorer.vault.root):
            if pin.purpose == "boot-check" and pin.name in stale:  # a killed boot-check's hold on its point
                pins.release(self.restorer.vault.root, pin)
        with sweep.hold(root / f"{name}.lock"):
            return self._run(point, uri, name, timeout_s, command, stale, instant)

    def _run(
        self,
        point: RecoveryPoint,
        uri: str,
        name: str,
        timeout_s: float,
        command: str | None,
        stale: list[str],
        instant: bool = True,
    ) -> BootCheckResult:
        """The boot-check job, while holding this check's lock."""
        new_uuid = str(uuid_mod.uuid4())
        job = self.restorer.jobs.create("boot-check", vm=VmRef(uuid=new_uuid, name=name, host_uri=uri))
        with self.restorer.jobs.run(job.id) as run:
            run.detail("point_id", point.point_id)
            run.detail("original_vm", {"uuid": point.vm_uuid, "name": point.vm_name})
            if stale:
                run.detail("removed_stale_bootchecks", stale)
            res = BootCheckResult(point.point_id, run.job_id, name)
            t0 = time.monotonic()
            created = Created(uri=uri)
            spec = NewVmSpec(
                name, uri, self.settings.home / "bootcheck" / name, isolate=True, instant=instant, purpose="boot-check"
            )
            run.detail("path", "instant (overlays over the vault point)" if instant else "copy")
            try:
                self._check(run, point, spec, new_uuid, created, res, timeout_s, command)
            finally:
                with run.phase("cleanup"), connection(uri) as lv:
                    left = created.remove_all(lv)
                if left:
                    run.detail("cleanup_problems", left)
                res.duration_s = time.monotonic() - t0
                self._record(run, point, res)
            if not res.passed:
                raise BootCheckFailed(f"boot-check of {point.point_id} failed: {res.reason}", details=res.to_dict())
            return res

    def _check(
        self,
        run: JobRun,
        point: RecoveryPoint,
        spec: NewVmSpec,
        new_uuid: str,
        created: Created,
        res: BootCheckResult,
        timeout_s: float,
        command: str | None,
    ) -> None:
        """Restore, boot, probe, shut down, fsck; fills res (never raises for a failed check).

        Instant path: the point's filesystems are checked while the guest boots (each through its own throwaway
        overlay over the vault file: the point as stored, not what the boot changed), and the throwaway VM is
        powered off rather than shut down (its overlays are discarded; nothing it wrote is kept).
        """
        try:
            restored = self.restorer.as_new_vm(run, point, spec, new_uuid, created)
        except VmBackupError as e:
            res.checks.append(Probe("restore", False, f"{e.code}: {e.message}"))
            res.reason = f"the point could not be restored: {e.message}"
            return
        how = "overlays over the vault point (no copy)" if spec.instant else f"{restored.bytes_copied} bytes copied"
        res.checks.append(Probe("restore", True, f"{len(restored.disks)} disk(s), {how}"))
        res.ports = dict(restored.ports)
        res.dropped_devices = list(restored.dropped_devices)
        console = Path(restored.console_log)
        with ThreadPoolExecutor(max_workers=1) as pool:
            early = pool.submit(self._fsck_point, point, spec.pool_dir) if spec.instant else None
            with connection(spec.host_uri) as lv:
                dom = lv.lookupByName(spec.name)
                self._boot_and_probe(run, dom, point, restored, res, timeout_s, command)
                res.console_tail = probes.console_tail(console)
                booted = res.boot_seconds is not None
                with run.phase("shutdown"):
                    res.checks.append(power_off(dom) if spec.instant else shutdown(dom, 90.0 if booted else 0.0))
            with run.phase("fsck"):
                if early is not None:
                    res.checks += early.result()
                else:
                    for target, path in restored.disks.items():
                        fmt = next(d.format for d in point.manifest.disks if d.target == target)
                        res.checks += _fs_probes(fsck.check_image(Path(path), fmt, target, workdir=spec.pool_dir))
        failed = [c for c in res.checks if not c.ok and c.name != "shutdown"]
        res.passed = not failed
        if failed and not res.reason:
            res.reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)

    def _fsck_point(self, point: RecoveryPoint, workdir: Path) -> list[Probe]:
        """fsck every disk of the point as stored (read through throwaway overlays; the vault is only read)."""
        out: list[Probe] = []
        for rec in point.manifest.disks:
            image = self.restorer.vault.disk_path(point, rec)
            out += _fs_probes(fsck.check_image(image, rec.format, rec.target, workdir=workdir))
        return out

    def _boot_and_probe(
        self,
        run: JobRun,
        dom: libvirt.virDomain,
        point: RecoveryPoint,
        restored: RestoreResult,
        res: BootCheckResult,
        timeout_s: float,
        command: str | None,
    ) -> None:
        """Start the VM, wait for the console; if it booted, ask the agent and run the command."""
        with run.phase("boot"):
            t0 = time.monotonic()
            dom.create()
            ssh_port = restored.ports.get(GUEST_SSH_PORT)
            boot = probes.wait_for_boot(Path(restored.console_log), t0, timeout_s, dom.isActive, ssh_port)
            res.checks.append(boot)
            res.boot_seconds = boot.seconds
            run.detail("boot_seconds", boot.seconds)
        if not boot.ok:
            res.reason = boot.detail
            return
        remaining = max(30.0, timeout_s - (time.monotonic() - t0))
        if self._agent_expected(point):
            with run.phase("agent"):
                res.checks.append(
                    probes.check_agent(self.settings, restored.ports[AGENT_PORT], point.vm_uuid, remaining)
                )
        if command:
            user, key = self._ssh_identity(point)
            with run.phase("command"):
                res.checks.append(probes.run_command(restored.ports[GUEST_SSH_PORT], user, key, command, remaining))

    def _agent_expected(self, point: RecoveryPoint) -> bool:
        """True when the point's VM had the agent: registered with it now, or the backup talked to an agent."""
        from controller.registration.store import get_registration

        reg = get_registration(self.restorer.conn, point.vm_uuid)
        return bool(point.manifest.agent_version) or (reg is not None and reg.quiescer == "agent")

    def _ssh_identity(self, point: RecoveryPoint) -> tuple[str, Path]:
        """The SSH user and key: the registration's, else the lab key as root."""
        from controller.registration.store import get_registration

        reg = get_registration(self.restorer.conn, point.vm_uuid)
        if reg is not None and reg.ssh_key:
            return reg.ssh_user or "root", Path(reg.ssh_key)
        return "root", self.settings.lab_dir / "ssh" / "id_ed25519"

    def _record(self, run: JobRun, point: RecoveryPoint, res: BootCheckResult) -> None:
        """Store the verdict on the recovery point and on the job."""
        data = res.to_dict()
        run.detail("boot_check", data)
        self.restorer.vault.update_manifest(point, boot_check=data)


def _fs_probes(checks: list[fsck.FsCheck]) -> list[Probe]:
    """fsck results as boot-check probes."""
    return [Probe(f"fsck:{fs.name}", fs.ok, f"{fs.fstype}: {fs.status}: {fs.detail}") for fs in checks]


def power_off(dom: libvirt.virDomain) -> Probe:
    """Hard power-off of a throwaway instant VM (its overlays are discarded, so nothing needs flushing)."""
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        return Probe("shutdown", False, f"libvirt: {e.get_error_message()}")
    return Probe("shutdown", True, "powered off (throwaway overlays, discarded)")


def shutdown(dom: libvirt.virDomain, timeout_s: float) -> Probe:
    """ACPI shutdown, waiting up to timeout_s; then a hard power-off. ok means it shut down cleanly."""
    t0 = time.monotonic()
    try:
        if not dom.isActive():
            return Probe("shutdown", True, "already off")
        if timeout_s <= 0:  # it never booted: nothing inside could handle ACPI
            dom.destroy()
            return Probe("shutdown", True, "powered off (the guest never booted)")
        dom.shutdown()
        while time.monotonic() - t0 < timeout_s:
            if not dom.isActive():
                return Probe("shutdown", True, "clean ACPI shutdown", time.monotonic() - t0)
            time.sleep(1.0)
        dom.destroy()
    except libvirt.libvirtError as e:
        return Probe("shutdown", False, f"libvirt: {e.get_error_message()}")
    return Probe("shutdown", False, f"no clean shutdown within {timeout_s:.0f} s: powered off hard")
