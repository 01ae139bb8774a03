"""Instant restore: a VM that runs from the vault point itself, through a fresh qcow2 overlay per disk (no copy).

Each overlay lives outside the vault (the new VM's pool directory, like a restore's copies) and its backing is the
point's stored file, named by absolute path with its format; an incremental's stored file keeps its own relative
backing chain inside the vault. The domain XML spells the whole chain out (``<backingStore>``, so libvirt probes
nothing) and marks every vault layer ``<seclabel model='dac' relabel='no'/>``: libvirt never chowns a vault file.
QEMU opens backing files read-only; nothing here writes them (no bitmap removal, no commit; fsck reads through a
throwaway overlay). QEMU's user gets read access to exactly the pinned files by ACL (``controller.vault.pins``), and
the pin record keeps delete, merge and prune away from the chain until ``finish`` moves the storage out::

    running VM:  libvirt block pull of the whole chain into each overlay (the guest keeps running)
    shut-off VM: qemu-img rebase -b '' (the overlay takes in its backing's data), the definition rewritten
    --pool-dir:  shut-off only: qemu-img convert into DIR, the definition rewritten, the old overlays removed

then checks that neither the domain XML nor ``qemu-img info --backing-chain`` names the vault, and drops the pin.
"""

from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import libvirt

from controller.errors import VmBackupError
from controller.jobs.store import VmRef
from controller.restore.exceptions import InstantFinishFailed, InstantVmNotFound, RestoreTargetInvalid
from controller.restore.undo import Created
from controller.vault import RecoveryPoint, Vault, chain, pins, qemuimg
from controller.virt.connection import connection

if TYPE_CHECKING:  # restore.py imports this module
    from controller.restore.restore import Restorer

#: progress(target, bytes_done, bytes_total)
Progress = Callable[[str, int, int], None]
POLL_S = 0.5


@dataclass
class Layers:
    """One disk of an instant VM: its overlay and the vault files under it, the point's own first."""

    overlay: Path
    backing: list[tuple[Path, str]] = field(default_factory=list)  # (vault file, format), top first


def check_local(uri: str) -> None:
    """Instant restore reads the vault by path: the VM must run on the vault's host (no remote URI)."""
    if urlparse(uri).netloc:
        raise RestoreTargetInvalid(
            f"instant restore runs the VM from the vault's files, so it needs a local libvirt, not {uri}",
            remediation="Restore a copy instead (`vmbackup restore POINT --as NEW_NAME --host URI`).",
        )


def qemu_uid(lv: libvirt.virConnect, virt_type: str) -> int | None:
    """The uid libvirt's DAC driver runs QEMU as for this domain type (None: root, or no DAC driver)."""
    caps = ET.fromstring(lv.getCapabilities())
    labels: dict[str, str] = {}
    for model in caps.iter("secmodel"):
        if model.findtext("model") == "dac":
            labels.update({str(b.get("type")): b.text for b in model.findall("baselabel") if b.text})
    label = labels.get(virt_type) or next(iter(labels.values()), "")
    return int(label.split(":")[0].lstrip("+")) or None if label else None


def make_overlays(
    vault: Vault, point: RecoveryPoint, dest_dir: Path, prefix: str, created: Created, mode: int
) -> dict[str, Layers]:
    """A fresh qcow2 overlay per disk of the point in dest_dir (created before), backed by the vault's file."""
    out: dict[str, Layers] = {}
    for rec in point.manifest.disks:
        overlay = dest_dir / f"{prefix}{rec.target}.qcow2"
        if overlay.exists():
            raise RestoreTargetInvalid(f"{overlay} already exists; refusing to overwrite it")
        files = [(vault.disk_path(p, r), r.format) for p, r in reversed(chain.disk_chain(vault, point, rec.target))]
        top, fmt = files[0]
        created.add_file(overlay)
        cmd = [qemuimg.QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(top), str(overlay)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RestoreTargetInvalid(f"cannot create the overlay {overlay} over {top}: {p.stderr.strip()}")
        overlay.chmod(mode)
        out[rec.target] = Layers(overlay, files)
    return out


def add_backing(xml: str, layers: dict[str, Layers]) -> str:
    """Spell each overlay's backing chain out in the domain XML, every vault layer with relabel='no'."""
    root = ET.fromstring(xml)
    for disk in root.iter("disk"):
        target = disk.find("target")
        lay = layers.get(target.get("dev", "") if target is not None else "")
        if lay is None:
            continue
        for old in disk.findall("backingStore"):
            disk.remove(old)
        parent = disk
        src = disk.find("source")
        index = list(disk).index(src) + 1 if src is not None else len(disk)
        for i, (path, fmt) in enumerate(lay.backing):
            bs = ET.Element("backingStore", {"type": "file"})
            ET.SubElement(bs, "format", {"type": fmt})
            bsrc = ET.SubElement(bs, "source", {"file": str(path)})
            ET.SubElement(bsrc, "seclabel", {"model": "dac", "relabel": "no"})
            if i == 0:
                parent.insert(index, bs)
            else:
                parent.append(bs)
            parent = bs
        parent.append(ET.Element("backingStore"))
    return ET.tostring(root, encoding="unicode")


def pin_for(
    vault: Vault, point: RecoveryPoint, name: str, layers: dict[str, Layers], uid: int | None, purpose: str
) -> pins.Pin:
    """The pin an instant VM holds on the point's chain."""
    return pins.Pin(
        vm_uuid=point.vm_uuid,
        point_id=point.point_id,
        name=name,
        chain=[p.point_id for p in chain.chain(vault, point)],
        files=sorted({str(f) for lay in layers.values() for f, _ in lay.backing}),
        qemu_uid=uid,
        purpose=purpose,
        overlays={t: str(lay.overlay) for t, lay in layers.items()},
    )


def find_pin(vault: Vault, name: str) -> pins.Pin:
    """The instant-restore pin of VM `name` (INSTANT_VM_NOT_FOUND if it has none)."""
    for pin in pins.list_pins(vault.root):
        if pin.name == name and pin.purpose == "instant-restore":
            return pin
    raise InstantVmNotFound(f"no instant-restored VM named {name!r} runs on the vault")


def vm_state(lv: libvirt.virConnect, name: str) -> str:
    """running | shut off | paused | ... | gone (the domain no longer exists)."""
    try:
        dom = lv.lookupByName(name)
    except libvirt.libvirtError:
        return "gone"
    states = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
              libvirt.VIR_DOMAIN_SHUTOFF: "shut off"}
    return states.get(dom.state()[0], "other")


def pull_running(dom: libvirt.virDomain, target: str, progress: Progress | None) -> None:
    """libvirt block pull: the whole backing chain into the running disk's overlay; waits until it is done."""
    try:
        dom.blockPull(target, 0, 0)
        while True:
            info = dom.blockJobInfo(target, 0)
            if not info:
                break
            if progress and info.get("end"):
                progress(target, int(info["cur"]), int(info["end"]))
            time.sleep(POLL_S)
    except libvirt.libvirtError as e:
        raise InstantFinishFailed(f"block pull of {target} failed: {e.get_error_message()}") from e


def flatten_offline(overlay: Path, dest: Path | None) -> None:
    """Shut-off VM: rebase the overlay onto nothing (it takes in its backing's data), or convert it into dest."""
    if dest is None:
        cmd = [qemuimg.QEMU_IMG, "rebase", "-q", "-f", "qcow2", "-b", "", str(overlay)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise InstantFinishFailed(f"qemu-img rebase of {overlay} failed: {p.stderr.strip()}")
        return
    qemuimg.convert(overlay, dest, fmt="qcow2")
    os.chmod(dest, 0o600)


def drop_backing_xml(xml: str, moved: dict[str, Path]) -> str:
    """The definition without any backingStore; disks in `moved` (target -> new file) point at their new file."""
    root = ET.fromstring(xml)
    for disk in root.iter("disk"):
        for bs in disk.findall("backingStore"):
            disk.remove(bs)
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        src = disk.find("source")
        if dev in moved and src is not None:
            src.set("file", str(moved[dev]))
            drv = disk.find("driver")
            if drv is not None:
                drv.set("type", "qcow2")
    return ET.tostring(root, encoding="unicode")


def vault_references(vault_root: Path, xmls: list[str], images: list[Path]) -> list[str]:
    """Where the vault is still named: in a domain XML, or in an image's backing chain (qemu-img info -U)."""
    root = str(vault_root.resolve())
    out = [f"domain XML #{i}" for i, x in enumerate(xmls) if root in x]
    for img in images:
        cmd = [qemuimg.QEMU_IMG, "info", "-U", "--backing-chain", "-f", "qcow2", str(img)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0 or root in p.stdout or "backing file:" in p.stdout:
            out.append(f"{img}: {p.stderr.strip() or 'still has a backing file'}")
    return out


@dataclass
class FinishResult:
    """What `restore finish` did."""

    job_id: str
    vm_name: str
    point_id: str
    state: str  # the VM's state when finished: running | shut off | gone
    method: str  # block-pull | rebase | convert | none (the VM was gone: only the pin was dropped)
    disks: dict[str, str] = field(default_factory=dict)  # target -> the VM's own file now
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON view."""
        return dict(vars(self))


def finish(r: Restorer, name: str, pool_dir: Path | None = None) -> FinishResult:
    """Move an instant VM's storage out of the vault (see the module docstring), then drop its pin."""
    pin = find_pin(r.vault, name)
    uri = pin.host_uri or r.settings.uri
    job = r.jobs.create("restore", vm=VmRef(uuid=pin.domain_uuid, name=name, host_uri=uri))
    t0 = time.monotonic()
    with r.jobs.run(job.id) as run, connection(uri) as lv:
        run.detail("mode", "instant-finish")
        run.detail("point_id", pin.point_id)
        state = vm_state(lv, name)
        res = FinishResult(run.job_id, name, pin.point_id, state, "none")
        if state != "gone":
            dom = lv.lookupByName(name)
            with run.phase("move"):
                _move(r, dom, pin, state, pool_dir, res)
            with run.phase("check"):
                xmls = [dom.XMLDesc(0)] + ([dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)] if dom.isActive() else [])
                left = vault_references(r.vault.root, xmls, [Path(p) for p in res.disks.values()])
                if left:
                    raise InstantFinishFailed(f"{name} still refers to the vault: {'; '.join(left)}")
        pins.release(r.vault.root, pin)
        res.duration_s = time.monotonic() - t0
        run.detail("result", res.to_dict())
        return res


def _move(
    r: Restorer, dom: libvirt.virDomain, pin: pins.Pin, state: str, pool_dir: Path | None, res: FinishResult
) -> None:
    """Running: block pull per disk. Shut off: rebase in place, or convert into pool_dir; then redefine."""
    overlays = {t: Path(p) for t, p in pin.overlays.items()}
    if state in ("running", "paused"):
        if pool_dir is not None:
            raise InstantFinishFailed(
                f"{res.vm_name} is running: its storage is pulled into its overlays where they are; "
                "--pool-dir needs the VM shut off",
                remediation="Run `vmbackup restore finish NAME` without --pool-dir, or shut the VM off first.",
            )
        for target in overlays:
            pull_running(dom, target, r.progress)
        res.method, res.disks = "block-pull", {t: str(p) for t, p in overlays.items()}
        return
    moved: dict[str, Path] = {}
    for target, overlay in overlays.items():
        dest = None if pool_dir is None else Path(pool_dir) / overlay.name
        if dest is not None and dest.exists():
            raise InstantFinishFailed(f"{dest} already exists; refusing to overwrite it")
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
        flatten_offline(overlay, dest)
        moved[target] = dest or overlay
        if r.progress:
            r.progress(target, 1, 1)
    try:
        dom.connect().defineXML(drop_backing_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), moved))
    except libvirt.libvirtError as e:
        raise InstantFinishFailed(f"redefining {res.vm_name} on its own files failed: {e.get_error_message()}") from e
    if pool_dir is not None:
        for target, overlay in overlays.items():
            if moved[target] != overlay:
                overlay.unlink(missing_ok=True)
    res.method = "rebase" if pool_dir is None else "convert"
    res.disks = {t: str(p) for t, p in moved.items()}


def list_instant(r: Restorer) -> list[dict[str, object]]:
    """Every VM running on the vault (instant restores and boot-checks): name, point, state, overlays, since."""
    out: list[dict[str, object]] = []
    for pin in pins.list_pins(r.vault.root):
        try:
            with connection(pin.host_uri or r.settings.uri) as lv:
                state = vm_state(lv, pin.name)
        except VmBackupError as e:
            state = f"unknown ({e.code})"
        out.append({
            "name": pin.name, "point_id": pin.point_id, "vm_uuid": pin.vm_uuid, "purpose": pin.purpose,
            "state": state, "chain": pin.chain, "overlays": pin.overlays, "created": pin.created,
        })
    return out
