"""An undo log for a restore: everything it created, removed again (in reverse) when the restore fails."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from controller.errors import VmBackupError
from controller.vault import pins


@dataclass
class Created:
    """What one restore has made so far: a domain, files, directories."""

    uri: str = ""
    domain: str | None = None
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    pins: list[tuple[Path, pins.Pin]] = field(default_factory=list)  # (vault root, pin) held on the vault

    def add_file(self, path: Path) -> Path:
        """Remember a file (and its .part sibling) to remove on failure."""
        self.files.append(path)
        return path

    def remove_all(self, conn: libvirt.virConnect | None) -> list[str]:
        """Destroy/undefine the domain, release pins, delete files and directories; returns what was not removed."""
        problems: list[str] = []
        if self.domain and conn is not None:
            problems += remove_domain(conn, self.domain)
        for root, pin in self.pins:  # after the domain: nothing runs on the vault's files any more
            try:
                pins.release(root, pin)
            except (OSError, VmBackupError) as e:
                problems.append(f"pin {pin.name} on {pin.point_id}: {e}")
        for f in reversed(self.files):
            for p in (f, f.with_name(f.name + ".part")):
                try:
                    p.unlink(missing_ok=True)
                except OSError as e:
                    problems.append(f"{p}: {e}")
        for d in reversed(self.dirs):
            shutil.rmtree(d, ignore_errors=True)
            if d.exists():
                problems.append(f"{d}: still exists")
        return problems


def remove_domain(conn: libvirt.virConnect, name: str, timeout_s: float = 20.0) -> list[str]:
    """Power off (hard) and undefine a domain by name, NVRAM included; missing is fine."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return []
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not dom.isActive():
                break
        except libvirt.libvirtError:
            break
        time.sleep(0.2)
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            return [f"domain {name}: {e.get_error_message()}"]
    return []
