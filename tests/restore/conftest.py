"""Fixtures of the restore tests: a private VMBACKUP_HOME that QEMU can read, and libvirt cleanup."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private VMBACKUP_HOME under /var/tmp (0755, so QEMU's user can reach disk images in it)."""
    d = Path(tempfile.mkdtemp(prefix="vmb-restore-test-", dir="/var/tmp"))
    d.chmod(0o755)
    monkeypatch.setenv("VMBACKUP_HOME", str(d))
    monkeypatch.delenv("VMBACKUP_VAULT", raising=False)
    monkeypatch.setenv("VMBACKUP_IMAGE_CACHE", os.environ.get("VMBACKUP_IMAGE_CACHE", "/var/tmp/vmbackup-images"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lv(home: Path) -> Iterator[libvirt.virConnect]:
    """A libvirt connection; every domain whose disks live under the test's home is removed afterwards."""
    conn = libvirt.open("qemu:///system")
    before = {d.name() for d in conn.listAllDomains(0)}
    yield conn
    for dom in conn.listAllDomains(0):
        if dom.name() in before:
            continue
        xml = dom.XMLDesc(0)
        if str(home) in xml:
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    conn.close()
