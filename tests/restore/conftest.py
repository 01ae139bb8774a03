"""Fixtures of the restore tests: libvirt cleanup of the domains a test defined in its ``private_home``.

The tests take the shared ``private_home``/``private_settings`` fixtures (tests/conftest.py: under /var/tmp, mode
0755, so QEMU's user can reach disk images in it); the lab-VM tests keep the session home.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest


@pytest.fixture
def lv(private_home: Path) -> Iterator[libvirt.virConnect]:
    """A libvirt connection; every domain whose disks live under the test's home is removed afterwards."""
    conn = libvirt.open("qemu:///system")
    before = {d.name() for d in conn.listAllDomains(0)}
    yield conn
    for dom in conn.listAllDomains(0):
        if dom.name() in before:
            continue
        xml = dom.XMLDesc(0)
        if str(private_home) in xml:
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    conn.close()
