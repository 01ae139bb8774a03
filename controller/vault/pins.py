"""Pins: a VM that runs on a vault point's disk files (instant restore, boot-check) holds that point's chain still.

An instant-restored VM's disks are qcow2 overlays outside the vault whose backing chain is the point's stored files
(and, for an incremental, its parents'). While it does, none of those files may change: a pin record
``VAULT/<vm>/.pin-<point>-<name>.json`` (``layout.pin_path``) names the point, the VM and every file it reads, and
delete, merge and prune refuse the pinned points (``refuse_if_pinned``; merge.py, retention). The vault stays
self-describing: the pins are files beside the points they hold.

QEMU runs as an unprivileged user (libvirt's DAC label, e.g. libvirt-qemu) and the vault is 0700 root. libvirt must
never chown a vault file (its disks get ``<seclabel model='dac' relabel='no'/>``); instead the pinned files get a
POSIX ACL entry ``u:<qemu uid>:r`` and each directory from the vault root down to them ``u:<qemu uid>:x`` (pass
through, no listing). Nobody else gains anything, and ``release`` takes the entries away again once no pin needs
them. Usage::

    pin = Pin(vm_uuid, point_id, "web1-now", chain=[...], files=[...], qemu_uid=64055)
    hold(vault_root, pin)                       # record + ACLs
    release(vault_root, pin)                    # record gone, ACLs no other pin needs gone
    refuse_if_pinned(vault_root, vm_uuid, point_id, "delete")   # POINT_PINNED
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.vault import layout
from controller.vault.exceptions import PathEscape, PointPinned, VaultError
from controller.vault.manifest import fsync_dir, write_file_durable

PIN_VERSION = 1
SETFACL = "setfacl"


@dataclass
class Pin:
    """One VM's hold on a point's chain."""

    vm_uuid: str  # the point's VM (its vault directory)
    point_id: str
    name: str  # the VM running on it
    chain: list[str] = field(default_factory=list)  # point ids it reads, the full first, point_id last
    files: list[str] = field(default_factory=list)  # absolute vault files its overlays are backed by
    qemu_uid: int | None = None  # the uid granted read access by ACL (None: QEMU runs as root, nothing granted)
    purpose: str = "instant-restore"  # instant-restore | boot-check
    host_uri: str = ""
    domain_uuid: str = ""
    overlays: dict[str, str] = field(default_factory=dict)  # target -> overlay file outside the vault
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = PIN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON view (the record's content)."""
        return asdict(self)

    @classmethod
    def from_file(cls, path: Path) -> Pin:
        """Read a pin record; VAULT_ERROR if it cannot be read (an unreadable pin still pins: see pinned_ids)."""
        try:
            d = json.loads(path.read_text())
            if d.get("version") != PIN_VERSION:
                raise ValueError(f"unknown pin version {d.get('version')!r}")
            return cls(**d)
        except (OSError, ValueError, TypeError) as e:
            raise VaultError(f"cannot read the pin record {path}: {e}") from e


def path_of(root: Path, pin: Pin) -> Path:
    """Where the pin's record lives."""
    return layout.pin_path(root, pin.vm_uuid, pin.point_id, pin.name)


def list_pins(root: Path, vm_uuid: str | None = None) -> list[Pin]:
    """The pins of one VM's points (or of the whole vault), oldest point first; unreadable records skipped."""
    out: list[Pin] = []
    for path in _pin_files(root, vm_uuid):
        with contextlib.suppress(VaultError):
            out.append(Pin.from_file(path))
    return out


def _pin_files(root: Path, vm_uuid: str | None) -> list[Path]:
    """The .pin-*.json files under one VM directory or all of them."""
    if not root.is_dir():
        return []
    dirs = [root / vm_uuid] if vm_uuid else [p for p in root.iterdir() if layout.UUID_RE.fullmatch(p.name)]
    out: list[Path] = []
    for d in dirs:
        with contextlib.suppress(PathEscape):
            vd = layout.vm_dir(root, d.name)
            if vd.is_dir():
                out += [p for p in vd.iterdir() if p.name.startswith(layout.PIN_PREFIX) and p.suffix == ".json"]
    return sorted(out)


def holders(root: Path, vm_uuid: str, point_id: str) -> list[str]:
    """Who pins point_id (directly or through a point built on it): 'NAME (purpose, on point P)' each.

    A record that cannot be read pins the point its file name names, so damage never unpins anything.
    """
    out: list[str] = []
    for path in _pin_files(root, vm_uuid):
        try:
            pin = Pin.from_file(path)
        except VaultError:
            if path.name.startswith(f"{layout.PIN_PREFIX}{point_id}-"):
                out.append(f"{path.name} (unreadable pin record)")
            continue
        if point_id in pin.chain or point_id == pin.point_id:
            out.append(f"{pin.name} ({pin.purpose}, on point {pin.point_id})")
    return out


def refuse_if_pinned(root: Path, vm_uuid: str, point_id: str, what: str) -> None:
    """POINT_PINNED when a VM runs on point_id's files (the caller holds the VM's chain lock)."""
    who = holders(root, vm_uuid, point_id)
    if who:
        raise PointPinned(
            f"cannot {what} point {point_id}: VM {', '.join(who)} runs on its files "
            f"(finish it with `vmbackup restore finish NAME` first)",
            details={"point_id": point_id, "pinned_by": who},
        )


def hold(root: Path, pin: Pin) -> Path:
    """Write the pin record (durably), then grant QEMU read access to its files; returns the record's path."""
    path = path_of(root, pin)
    write_file_durable(path, (json.dumps(pin.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    if pin.qemu_uid is not None:
        for f in pin.files:
            grant(root, Path(f), pin.qemu_uid)
    return path


def release(root: Path, pin: Pin) -> None:
    """Remove the pin record, then the ACL entries no remaining pin needs."""
    path = path_of(root, pin)
    path.unlink(missing_ok=True)
    if path.parent.is_dir():
        fsync_dir(path.parent)
    if pin.qemu_uid is None:
        return
    still = [p for p in list_pins(root) if p.qemu_uid == pin.qemu_uid]
    needed = {Path(f) for p in still for f in p.files}
    needed_dirs = {d for f in needed for d in _dirs_to(root, f)}
    for f in pin.files:
        if Path(f) not in needed:
            _setfacl(["-x", f"u:{pin.qemu_uid}", f])
    for d in sorted({d for f in pin.files for d in _dirs_to(root, Path(f))}, key=lambda p: len(p.parts), reverse=True):
        if d not in needed_dirs:
            _setfacl(["-x", f"u:{pin.qemu_uid}", str(d)])


def grant(root: Path, file: Path, uid: int) -> None:
    """ACL: uid may read `file` and pass through each directory from the vault root down to it (nothing else)."""
    for d in _dirs_to(root, file):
        _setfacl(["-m", f"u:{uid}:x", str(d)])
    _setfacl(["-m", f"u:{uid}:r", str(file)])


def _dirs_to(root: Path, file: Path) -> list[Path]:
    """The vault root and each directory below it down to file's parent (PATH_ESCAPE if file is not inside)."""
    base = root.resolve()
    if not file.resolve().is_relative_to(base) or file.resolve() == base:
        raise PathEscape(f"{file} is not inside the vault {base}")
    rel = file.resolve().parent.relative_to(base)
    out = [base]
    for part in rel.parts:
        out.append(out[-1] / part)
    return out


def _setfacl(args: list[str]) -> None:
    """Run setfacl; VAULT_ERROR with its message on failure (a missing entry on -x is not a failure)."""
    try:
        p = subprocess.run([SETFACL, *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise VaultError(
            "setfacl is not installed: QEMU cannot be given read access to vault files (apt-get install acl)"
        ) from e
    if p.returncode != 0:
        raise VaultError(f"setfacl {' '.join(args)} failed: {p.stderr.strip()}")
