"""Fixtures of the inventory tests: a private state dir, real libvirt, and two tiny defined (never started) domains.

Defining a domain is slow on this host (libvirtd re-probes QEMU's capabilities on each define: 30-100 s), so the
two domains are defined once per module and shared (never undefined by a test); the test that needs a domain to
disappear gets its own (``doomed``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from controller import db, settings
from controller.lab import host
from controller.settings import Settings
from tests.inventory.helpers import DISK_XML, DOMAIN_XML, URI, InvDomains


@pytest.fixture
def cfg(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the test's private home (its own state.db), on the local libvirt."""
    monkeypatch.setenv("VMBACKUP_URI", URI)
    return settings.load()


@pytest.fixture
def conn(cfg: Settings) -> sqlite3.Connection:
    """The private state database."""
    return db.connect(cfg.db_path)


@pytest.fixture(scope="module")
def lv() -> Iterator[libvirt.virConnect]:
    """A connection to the real local libvirtd (its daemons started if they are not running; nothing installed)."""
    host.ensure_daemons(URI)
    c = libvirt.open(URI)
    yield c
    c.close()


def _disk(path: Path, fmt: str, size_mib: int, write_mib: int) -> None:
    """Create an image with qemu-img and write write_mib MiB of data at its start with qemu-io."""
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"], check=True)
    if write_mib:
        cmd = f"write -P 0xab 0 {write_mib}M"
        subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, str(path)], check=True, capture_output=True)


def _define(lv: libvirt.virConnect, name: str, d: Path, disks: list[tuple[str, str, int, int]]) -> libvirt.virDomain:
    """Define (not start) a domain with disks [(target, format, size MiB, MiB written)]."""
    parts = []
    for target, fmt, size_mib, write_mib in disks:
        path = d / f"{name}-{target}.{fmt}"
        _disk(path, fmt, size_mib, write_mib)
        parts.append(DISK_XML.format(fmt=fmt, path=path, target=target))
    return lv.defineXML(DOMAIN_XML.format(name=name, uuid=uuid.uuid4(), disks="".join(parts)))


@pytest.fixture(scope="module")
def domains(lv: libvirt.virConnect, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InvDomains]:
    """Two defined domains with a unique test prefix; undefined at teardown, pass or fail."""
    prefix = f"vmbt-inv-{uuid.uuid4().hex[:6]}-"
    d = tmp_path_factory.mktemp("inventory-disks")
    made: list[libvirt.virDomain] = []
    try:
        made.append(_define(lv, prefix + "one", d, [("vda", "qcow2", 64, 4)]))
        made.append(_define(lv, prefix + "two", d, [("vda", "qcow2", 32, 0), ("vdb", "raw", 16, 0)]))
        yield InvDomains(prefix, made[0], made[1], d)
    finally:
        for dom in made:
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()


@pytest.fixture
def doomed(lv: libvirt.virConnect, domains: InvDomains) -> Iterator[libvirt.virDomain]:
    """A third defined domain (vda qcow2 64 MiB, 4 MiB written) that the test may undefine; gone afterwards."""
    dom = _define(lv, domains.prefix + "doomed", domains.dir, [("vda", "qcow2", 64, 4)])
    try:
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
