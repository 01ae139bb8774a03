"""The lab host: which virtualization type to use, and virtlogd/libvirtd running and answering.

Virt type rule: ``kvm`` only when ``/sys/module/kvm_intel`` or ``/sys/module/kvm_amd`` exists.
``/dev/kvm`` and ``virsh domcapabilities`` are not trusted: on some hosts /dev/kvm is kvm_pvm, which hangs
stock guests.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import libvirt

from controller.lab.exceptions import DaemonStartFailed, VirtTypeInvalid

VIRT_TYPES = ("kvm", "qemu", "auto")
DAEMONS = ("virtlogd", "libvirtd")  # virtlogd first: libvirtd needs its socket to start domains


def detect_virt_type(override: str = "auto", sysfs: Path = Path("/sys")) -> str:
    """'kvm' or 'qemu': the override if it is kvm/qemu, else kvm only if a real KVM module is loaded."""
    choice = (override or "auto").strip().lower()
    if choice not in VIRT_TYPES:
        raise VirtTypeInvalid(f"unknown virt type {override!r} (expected kvm, qemu or auto)")
    if choice != "auto":
        return choice
    real_kvm = any((sysfs / "module" / m).exists() for m in ("kvm_intel", "kvm_amd"))
    return "kvm" if real_kvm else "qemu"


def process_running(name: str, proc: Path = Path("/proc")) -> bool:
    """True if a process whose command name is exactly `name` is running."""
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == name:
                return True
        except OSError:
            continue
    return False


def libvirt_answers(uri: str) -> bool:
    """True if a connection to uri opens."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def fix_kvm_device(dev: Path = Path("/dev/kvm")) -> bool:
    """Give /dev/kvm Debian's usual owner/mode (root:kvm 0660) if it is root-only; True if it changed it.

    With a root-only /dev/kvm, libvirt's capability probe (run as root) sees KVM but its validity check (as the
    qemu user) does not, so libvirt throws its capability cache away on every lookup and re-probes QEMU for
    each define/start (tens of seconds each, serialised). Domains here still use type 'qemu' (TCG).
    """
    import grp

    try:
        st = dev.stat()
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return False
    if os.geteuid() != 0 or st.st_mode & 0o060 == 0o060:
        return False
    os.chown(dev, 0, kvm_gid)
    os.chmod(dev, 0o660)
    return True


def ensure_daemons(uri: str = "qemu:///system", timeout: float = 30.0) -> list[str]:
    """Start virtlogd and libvirtd if they are not running (idempotent); wait until uri answers.

    Returns what it did (daemons started, /dev/kvm fixed), empty when all was already in order.
    """
    started: list[str] = []
    if fix_kvm_device():
        started.append("fixed /dev/kvm permissions")
    if Path("/run/systemd/system").is_dir():
        subprocess.run(
            ["systemctl", "start", "virtlogd.socket", "libvirtd.socket", "libvirtd.service"],
            capture_output=True,
            check=False,
        )
    for name in DAEMONS:
        if process_running(name):
            continue
        if os.geteuid() != 0:
            raise DaemonStartFailed(f"{name} is not running and starting it needs root")
        p = subprocess.run([name, "-d"], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise DaemonStartFailed(f"`{name} -d` failed: {(p.stderr or p.stdout).strip()[-300:]}")
        started.append(name)
    deadline = time.monotonic() + timeout
    while not libvirt_answers(uri):
        if time.monotonic() > deadline:
            raise DaemonStartFailed(f"libvirt did not answer on {uri} within {timeout:.0f} s")
        time.sleep(0.5)
    return started
