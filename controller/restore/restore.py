"""Restore a recovery point: as a new VM, as disk images only, or into an existing shut-off VM (replace).

Every restore is one job (type ``restore``) with the phases verify -> copy -> define -> start and the bytes
copied. The point is checked as a whole before anything is touched (``verify_point_quick``); each disk is then
copied sparse with its SHA-256 verified while reading (``copy_out_disk``). Anything a failed restore created
is removed again (domain, files, directories). Usage::

    r = Restorer(state)                  # a State (borrowed), or Settings (opens one; close() or `with`)
    res = r.restore_as_new("20261125T101500Z-3fa9c1", "web1-copy", start=True)
    res = r.restore_as_new("20261125T101500Z-3fa9c1", "web1-now", start=True, instant=True)  # see instant.py
    res = r.restore_disks("20261125T101500Z-3fa9c1", Path("/srv/disks"))
    res = r.restore_replace("20261125T101500Z-3fa9c1", "web1")           # web1 must be shut off
"""

from __future__ import annotations

import re
import time
import uuid as uuid_mod
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libvirt

from agent.contract import AGENT_PORT
from controller.errors import VmBackupError
from controller.jobs.store import JobRun, JobStore, VmRef
from controller.restore import domainxml, instant
from controller.restore.exceptions import RestoreFailed, RestoreTargetInvalid, VmNameExists
from controller.restore.replace import replace_disks
from controller.restore.result import RestoreResult
from controller.restore.undo import Created
from controller.settings import Settings
from controller.ssh.client import GUEST_SSH_PORT
from controller.state import State, StateUser
from controller.vault import RecoveryPoint, copy_out_disk, keys, merge, pins, verify_point_quick
from controller.vault.layout import DOMAIN_XML
from controller.virt import ports as virt_ports
from controller.virt.connection import connection, translate

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$")
#: Restored disk images: owner only. libvirt's dynamic_ownership chowns an image to the QEMU user at start.
IMAGE_MODE = 0o600
#: Directories of a disks-only restore: owner only (no QEMU has to get in).
PRIVATE_DIR_MODE = 0o700
#: Directories a restored VM's disks live in (new VM, boot-check). Not 0700: dynamic_ownership chowns only the
#: image, never its parent directories, so QEMU (libvirt-qemu) could not reach a disk under a root-owned 0700
#: directory and the start fails ("Cannot access storage file ... Permission denied"). 0711 lets QEMU pass
#: through but nobody list the directory; the 0600 images are readable only by root and the running QEMU.
VM_DIR_MODE = 0o711
#: progress(target, bytes_done, bytes_total)
Progress = Callable[[str, int, int], None]


@dataclass
class NewVmSpec:
    """How to restore a point as a new VM."""

    name: str
    host_uri: str
    pool_dir: Path
    start: bool = False
    isolate: bool = False  # boot-check: only user-mode SSH/agent forwards, restrict=on
    instant: bool = False  # run from the vault point through overlays (instant.py), pinned as `purpose`
    purpose: str = "instant-restore"


class Restorer(StateUser):
    """Runs restores against the state DB, the vault and libvirt named by the settings."""

    def __init__(self, source: Settings | State, progress: Progress | None = None):
        state = self._use_state(source)
        self.settings = state.settings
        self.conn = state.db
        self.jobs = JobStore(self.conn)
        self.vault = state.vault
        self.progress = progress

    def point(self, point_id: str) -> RecoveryPoint:
        """The recovery point (POINT_NOT_FOUND if absent)."""
        return self.vault.get_point(point_id)

    def default_pool_dir(self, name: str) -> Path:
        """$VMBACKUP_HOME/restored/<name>/."""
        return self.settings.home / "restored" / name

    def restore_as_new(
        self,
        point_id: str,
        new_name: str,
        host_uri: str | None = None,
        pool_dir: Path | None = None,
        start: bool = False,
        instant: bool = False,
    ) -> RestoreResult:
        """Create (and optionally start) a new VM from a point; refuses an existing name.

        instant: no copy; the VM runs on overlays over the point's files, which stay pinned (instant.py).
        """
        point = self.point(point_id)
        check_name(new_name)
        uri = host_uri or self.settings.uri
        pool = Path(pool_dir or self.default_pool_dir(new_name))
        spec = NewVmSpec(new_name, uri, pool, start, instant=instant)
        new_uuid = str(uuid_mod.uuid4())
        job = self.jobs.create("restore", vm=VmRef(uuid=new_uuid, name=new_name, host_uri=uri))
        with self.jobs.run(job.id) as run:
            run.detail("point_id", point.point_id)
            run.detail("mode", "instant" if instant else "new-vm")
            res = self.as_new_vm(run, point, spec, new_uuid)
            return res

    def as_new_vm(
        self,
        run: JobRun,
        point: RecoveryPoint,
        spec: NewVmSpec,
        new_uuid: str,
        created: Created | None = None,
    ) -> RestoreResult:
        """The new-VM restore inside a job (boot-check reuses it); on failure removes what it created.

        Pass ``created`` to learn what was made (boot-check removes it all afterwards, whatever happened).
        """
        t0 = time.monotonic()
        mode = "instant" if spec.instant else "new-vm"
        res = RestoreResult(run.job_id, point.point_id, mode, spec.name, new_uuid, spec.host_uri)
        created = created if created is not None else Created(uri=spec.host_uri)
        with connection(spec.host_uri) as lv:
            try:
                layers: dict[str, instant.Layers] | None = None
                if spec.instant:
                    layers = self._instant_overlays(lv, run, point, spec, created, res)
                else:
                    self._verify(run, point)
                    refuse_existing_name(lv, spec.name)
                    self._copy_all(run, point, spec.pool_dir, created, res, f"{spec.name}-", VM_DIR_MODE)
                with run.phase("define"):
                    self._define(lv, point, spec, new_uuid, created, res, layers)
                if spec.start:
                    with run.phase("start"):
                        self._start(lv, spec.name)
                        res.started = True
            except BaseException as e:
                problems = created.remove_all(lv)
                if problems:
                    run.detail("cleanup_problems", problems)
                if isinstance(e, VmBackupError | KeyboardInterrupt):
                    raise
                raise RestoreFailed(f"restore of {point.point_id} as {spec.name} failed: {e}") from e
        res.duration_s = time.monotonic() - t0
        for w in res.warnings:
            run.warn(w)
        run.detail("result", res.to_dict())
        return res

    def restore_disks(self, point_id: str, to_dir: Path) -> RestoreResult:
        """Copy only the point's disk images (verified) into to_dir as <target>.<format>."""
        point = self.point(point_id)
        t0 = time.monotonic()
        ref = VmRef(uuid=point.vm_uuid, name=point.vm_name, host_uri=point.manifest.host)
        job = self.jobs.create("restore", vm=ref)
        with self.jobs.run(job.id) as run:
            run.detail("point_id", point.point_id)
            run.detail("mode", "disks-only")
            res = RestoreResult(run.job_id, point.point_id, "disks-only", point.vm_name, point.vm_uuid)
            created = Created()
            try:
                self._verify(run, point)
                self._copy_all(run, point, Path(to_dir), created, res, "", PRIVATE_DIR_MODE)
            except BaseException:
                created.remove_all(None)
                raise
            res.duration_s = time.monotonic() - t0
            run.detail("result", res.to_dict())
            return res

    def restore_replace(
        self,
        point_id: str,
        vm: str,
        host_uri: str | None = None,
        discard_old: bool = False,
        from_other_vm: bool = False,
        confirm: Callable[[str], bool] | None = None,
    ) -> RestoreResult:
        """Put the point's disks back into an existing, shut-off VM (see controller.restore.replace).

        The point must be of that VM unless from_other_vm; the replaced files are kept unless discard_old.
        """
        point = self.point(point_id)
        uri = host_uri or self.settings.uri
        return replace_disks(self, point, vm, uri, discard_old, from_other_vm, confirm)

    # -- steps ---------------------------------------------------------------------------------------------

    def _instant_overlays(
        self,
        lv: libvirt.virConnect,
        run: JobRun,
        point: RecoveryPoint,
        spec: NewVmSpec,
        created: Created,
        res: RestoreResult,
    ) -> dict[str, instant.Layers]:
        """Verify, create the overlays and pin the chain, holding the VM's chain still meanwhile (instant.py)."""
        instant.check_local(spec.host_uri)
        keys.refuse_encrypted(self.vault, point, "instant restore (a VM running on the vault's files)")
        refuse_existing_name(lv, spec.name)
        virt_type = ET.fromstring((self.vault.point_path(point) / DOMAIN_XML).read_text()).get("type", "kvm")
        with merge.chain_lock(self.vault, point.vm_uuid):
            self._verify(run, point)
            with run.phase("overlay"):
                make_dir(spec.pool_dir, created, VM_DIR_MODE)
                layers = instant.make_overlays(self.vault, point, spec.pool_dir, f"{spec.name}-", created, IMAGE_MODE)
                pin = instant.pin_for(
                    self.vault, point, spec.name, layers, instant.qemu_uid(lv, virt_type), spec.purpose
                )
                pin.host_uri, pin.domain_uuid = spec.host_uri, res.vm_uuid
                created.pins.append((self.vault.root, pin))
                pins.hold(self.vault.root, pin)
        for target, lay in layers.items():
            res.disks[target] = str(lay.overlay)
            if self.progress:
                self.progress(target, 1, 1)
        res.backing = {t: [str(f) for f, _ in lay.backing] for t, lay in layers.items()}
        run.detail("pinned", pin.to_dict())
        return layers

    def _verify(self, run: JobRun, point: RecoveryPoint) -> None:
        """Quick whole-point verification before anything is touched (names the bad disk)."""
        with run.phase("verify"):
            verify_point_quick(point, self.vault)

    def _copy_all(
        self,
        run: JobRun,
        point: RecoveryPoint,
        dest_dir: Path,
        created: Created,
        res: RestoreResult,
        prefix: str,
        dir_mode: int,
    ) -> None:
        """Copy every disk of the point into dest_dir (created with dir_mode), verified while reading; 0600."""
        with run.phase("copy"):
            make_dir(dest_dir, created, dir_mode)
            for rec in point.manifest.disks:
                dest = dest_dir / f"{prefix}{rec.target}.{rec.format}"
                if dest.exists():
                    raise RestoreTargetInvalid(f"{dest} already exists; refusing to overwrite it")
                created.add_file(dest)
                out = copy_out_disk(point, rec.target, dest, self._progress(run, rec.target), self.vault)
                res.disks[rec.target] = str(dest)
                res.bytes_copied += out.logical_size
                run.add_bytes(out.logical_size)
                dest.chmod(IMAGE_MODE)

    def _define(
        self,
        lv: libvirt.virConnect,
        point: RecoveryPoint,
        spec: NewVmSpec,
        new_uuid: str,
        created: Created,
        res: RestoreResult,
        layers: dict[str, instant.Layers] | None = None,
    ) -> None:
        """Rewrite the point's domain XML for the new VM and define it (instant: over the overlays' chains)."""
        xml = (self.vault.point_path(point) / DOMAIN_XML).read_text()
        if spec.isolate:
            xml = domainxml.isolate(xml)
        fmts = {r.target: "qcow2" if layers else r.format for r in point.manifest.disks}
        console = spec.pool_dir / "console.log"
        created.add_file(console)
        guest_ports = sorted(domainxml.hostfwds(xml))
        with virt_ports.port_lock():  # held until defined, so a concurrent restore or lab create cannot take them
            host_ports = (
                virt_ports.pick_ports(len(guest_ports), avoid=virt_ports.ports_of_domains(lv)) if guest_ports else []
            )
            plan = domainxml.RewritePlan(
                name=spec.name,
                disks={t: (p, fmts[t]) for t, p in res.disks.items()},
                console_log=str(console),
                ports=dict(zip(guest_ports, host_ports, strict=True)),
                uuid=new_uuid,
                vm_dir=str(spec.pool_dir),
            )
            out = domainxml.rewrite(xml, plan)
            refuse_existing_name(lv, spec.name)
            try:
                lv.defineXML(instant.add_backing(out.xml, layers) if layers else out.xml)
            except libvirt.libvirtError as e:
                raise translate(e, f"defining restored VM {spec.name!r}") from e
        created.domain = spec.name
        res.ports, res.macs, res.console_log = out.ports, out.macs, str(console)
        if AGENT_PORT in out.ports:
            res.agent_endpoint = f"127.0.0.1:{out.ports[AGENT_PORT]}"
        res.ssh_command = self._ssh_command(point, out)
        res.warnings += out.warnings
        res.warnings += [f"disk {t} is not in the point and was left out" for t in out.dropped_disks]
        res.dropped_devices = out.dropped_devices
        res.warnings += [
            f"{d['device']} {d['target']} not attached: {d['reason']}"
            for d in out.dropped_devices
            if d["target"] not in out.dropped_disks
        ]

    def _ssh_command(self, point: RecoveryPoint, out: domainxml.RewriteResult) -> str:
        """`ssh ...` for the new VM: the lab metadata's user and key, else the registration's ('' if no SSH)."""
        port = out.ports.get(GUEST_SSH_PORT)
        if not port:
            return ""
        user, key = "root", ""
        if out.lab is not None:
            user, key = out.lab.ssh_user, out.lab.ssh_key
        else:
            from controller.registration.store import get_registration

            reg = get_registration(self.conn, point.vm_uuid)
            if reg is not None:
                user, key = reg.ssh_user or user, reg.ssh_key or ""
        ident = f"-i {key} " if key else ""
        return f"ssh {ident}-p {port} {user}@127.0.0.1"

    def _start(self, lv: libvirt.virConnect, name: str) -> None:
        """Start the defined VM."""
        try:
            lv.lookupByName(name).create()
        except libvirt.libvirtError as e:
            raise translate(e, f"starting restored VM {name!r}") from e

    def _progress(self, run: JobRun, target: str) -> Callable[[int, int], None]:
        """Report copy progress and honour cancels."""

        def cb(done: int, total: int) -> None:
            if self.progress:
                self.progress(target, done, total)
            run.check_cancelled()

        return cb


def check_name(name: str) -> str:
    """A VM name usable as a libvirt name and a directory name."""
    if not NAME_RE.fullmatch(name):
        raise RestoreTargetInvalid(
            f"not a usable VM name: {name!r} (letters, digits, '_.+-', at most 63 characters)",
            remediation="Pick a name such as web1-restored.",
        )
    return name


def refuse_existing_name(lv: libvirt.virConnect, name: str) -> None:
    """VM_NAME_EXISTS if a domain of that name is defined on the host."""
    try:
        lv.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise translate(e, f"looking up {name!r}") from e
    raise VmNameExists(f"a VM named {name!r} already exists on {lv.getURI()}")


def make_dir(path: Path, created: Created, mode: int) -> None:
    """Create a restore directory and its missing parents with exactly `mode` (whatever the umask; remembered
    for cleanup); an existing one must be a directory and is left as it is."""
    if path.exists():
        if not path.is_dir():
            raise RestoreTargetInvalid(f"{path} exists and is not a directory")
        return
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=mode)
        p.chmod(mode)  # mkdir's mode is masked by the umask
    created.dirs.append(missing[-1])
