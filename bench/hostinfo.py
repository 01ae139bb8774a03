"""What the results were measured on: machine, versions, virtualization type, load."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import libvirt

import controller
from controller.lab import host


def _cmd_version(cmd: list[str]) -> str | None:
    """First line of a --version style command, or None if it is not installed."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, kernel."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "os": _os_release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _os_release() -> str:
    """PRETTY_NAME from /etc/os-release."""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
    return m.group(1) if m else platform.platform()


def contender_venv() -> Path:
    """The separate venv virt-backup is installed in (bench/.venv-contenders)."""
    return Path(__file__).resolve().parent / ".venv-contenders"


def versions() -> dict[str, Any]:
    """vmbackup, libvirt (library and daemon), QEMU, Python, and the contenders (None if absent)."""
    lib = libvirt.getVersion()
    vb = contender_venv() / "bin" / "pip"
    virt_backup = None
    if vb.exists():
        out = subprocess.run([str(vb), "show", "virt-backup"], capture_output=True, text=True, check=False)
        m = re.search(r"^Version: (.+)$", out.stdout, re.M)
        virt_backup = m.group(1) if m else None
    return {
        "vmbackup": controller.__version__,
        "libvirt": f"{lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}",
        "libvirt_python": metadata.version("libvirt-python"),
        "qemu": _cmd_version(["qemu-system-x86_64", "--version"]),
        "qemu_img": _cmd_version(["qemu-img", "--version"]),
        "python": platform.python_version(),
        "coreutils_cp": _cmd_version(["cp", "--version"]),
        "virtnbdbackup": _cmd_version(["virtnbdbackup", "--version"]),
        "virt_backup": virt_backup,
    }


def virt_type(configured: str) -> str:
    """The domain type lab VMs use here (kvm or qemu/TCG)."""
    return host.detect_virt_type(configured)
