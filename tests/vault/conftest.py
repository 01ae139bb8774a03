"""Fixtures for the vault tests: real qcow2/raw images made with qemu-img and qemu-io (no VM needed)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from controller.vault import RecoveryPoint, Vault
from tests.vault.helpers import MiB, PointMaker, qemu_io_write, run


@pytest.fixture(autouse=True)
def _home(private_home: Path) -> None:
    """Every test gets its own VMBACKUP_HOME and vault (the shared ``private_home`` fixture)."""


@pytest.fixture
def vault(private_home: Path) -> Vault:
    """The test's vault."""
    return Vault(private_home / "vault")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A directory for source images."""
    d = tmp_path / "images"
    d.mkdir()
    return d


@pytest.fixture
def qcow2_plain(images: Path) -> Path:
    """A qcow2 without backing file: 64 MiB virtual, 0xab at 1M..3M, 0xcd at 40M..41M."""
    p = images / "plain.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(p), "64M")
    qemu_io_write(p, "qcow2", 0xAB, 1 * MiB, 2 * MiB)
    qemu_io_write(p, "qcow2", 0xCD, 40 * MiB, 1 * MiB)
    return p


@pytest.fixture
def chain(images: Path) -> Path:
    """An overlay on a base image (like a lab VM's disk); both layers hold data."""
    base = images / "base.qcow2"
    top = images / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_io_write(base, "qcow2", 0x11, 0, 4 * MiB)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top))
    qemu_io_write(top, "qcow2", 0x22, 2 * MiB, 1 * MiB)
    qemu_io_write(top, "qcow2", 0x33, 50 * MiB, 1 * MiB)
    return top


@pytest.fixture
def raw_sparse(images: Path) -> Path:
    """A raw image of 1 GiB virtual size holding 4 MiB of data (the rest are holes)."""
    p = images / "sparse.raw"
    run("qemu-img", "create", "-q", "-f", "raw", str(p), "1G")
    qemu_io_write(p, "raw", 0xAB, 1 * MiB, 2 * MiB)
    qemu_io_write(p, "raw", 0x5A, 768 * MiB, 2 * MiB)
    return p


@pytest.fixture
def make_point(vault: Vault) -> PointMaker:
    """Publish a point with the given {target: image} disks for a (new or given) VM uuid."""

    def make(
        disks: dict[str, Path], vm_uuid: str | None = None, name: str = "web1", **fields: object
    ) -> RecoveryPoint:
        vm = vm_uuid or str(uuid.uuid4())
        with vault.new_point(vm) as w:
            for target, src in disks.items():
                w.copy_disk(target, src)
            w.write_domain_xml(f"<domain><name>{name}</name><uuid>{vm}</uuid></domain>")
            return w.publish(
                {
                    "vm": {"uuid": vm, "name": name, "host": "qemu:///system"},
                    "consistency": "FILE_SYSTEM",
                    **fields,
                }
            )

    return make
