"""GetInfo's facts about the guest, gathered once at startup where they cannot change (safe while frozen)."""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostFacts:
    """OS facts read once at startup."""

    os: str
    os_release: str
    kernel: str


def read_host_facts(os_release: Path = Path("/etc/os-release")) -> HostFacts:
    """OS name, distribution and kernel of this machine."""
    pretty = platform.platform()
    try:
        for line in os_release.read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return HostFacts(platform.system().lower(), pretty, platform.release())


def hostname() -> str:
    """The current hostname (a syscall: no file access)."""
    return socket.gethostname()
