"""The lab CLI and library on bad input (one-line typed errors, non-zero exit), and VM bookkeeping with QEMU
running a blank disk (no guest OS: cheap), so no image is needed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import libvirt
import pytest

from controller.lab import host, vms
from controller.lab.exceptions import InsufficientSpace, LabVmExists, NotALabVm
from controller.settings import Settings
from controller.virt import metadata, ports


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `vmbackup ARGS` in a subprocess with the session environment (plus env)."""
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120, check=False,
    )  # fmt: skip


def assert_one_line_error(p: subprocess.CompletedProcess[str], code: str) -> None:
    """Exit 1, and stderr is `error CODE: ...` plus the fix line, no traceback."""
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith(f"error {code}: "), p.stderr
    assert len(lines) == 2 and lines[1].startswith("  fix: "), p.stderr


@pytest.mark.parametrize("name", ["a/b", "has space", "-x", "x" * 64])
def test_cli_rejects_bad_names(name: str) -> None:
    assert_one_line_error(cli("lab", "create", "--no-wait", "--", name), "LAB_NAME_INVALID")


def test_cli_rejects_unknown_virt_type() -> None:
    assert_one_line_error(cli("lab", "create", "ok-name", VMBACKUP_VIRT_TYPE="xen"), "LAB_VIRT_TYPE_INVALID")


def test_cli_not_enough_space(settings: Settings, lab_prefix: str) -> None:
    name = f"{lab_prefix}huge"
    p = cli("lab", "create", name, "--data-disks", "2", "--data-disk-size", "1000000")
    assert_one_line_error(p, "LAB_INSUFFICIENT_SPACE")
    assert not (settings.lab_dir / "vms" / name).exists()


@pytest.mark.libvirt
def test_library_space_check_creates_nothing(settings: Settings, lab_prefix: str) -> None:
    host.ensure_daemons(settings.uri)
    with pytest.raises(InsufficientSpace):
        vms.create_lab_vm(settings, f"{lab_prefix}huge2", data_disks=8, data_disk_gib=10**6, wait=False)
    assert not (settings.lab_dir / "vms" / f"{lab_prefix}huge2").exists()


@pytest.fixture
def plain_domain(settings: Settings, lab_prefix: str):  # type: ignore[no-untyped-def]
    """A defined, never started, non-lab domain."""
    host.ensure_daemons(settings.uri)
    conn = libvirt.open(settings.uri)
    name = f"{lab_prefix}plain"
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
    yield name
    dom.undefine()
    conn.close()


@pytest.mark.libvirt
def test_existing_name_and_non_lab_destroy_refused(settings: Settings, plain_domain: str) -> None:
    assert_one_line_error(cli("lab", "create", plain_domain, "--no-wait"), "LAB_VM_EXISTS")
    with pytest.raises(LabVmExists):
        vms.create_lab_vm(settings, plain_domain, wait=False)
    assert_one_line_error(cli("lab", "destroy", plain_domain), "LAB_NOT_A_LAB_VM")
    with pytest.raises(NotALabVm):
        vms.destroy_lab_vm(settings, plain_domain)
    assert plain_domain not in {v.name for v in vms.list_lab_vms(settings)}


@pytest.fixture
def blank_base(settings: Settings) -> Path:
    """A 64 MiB blank qcow2 as a stand-in base image (QEMU runs, SeaBIOS finds nothing to boot)."""
    d = settings.home / "blank"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    path = d / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    os.chmod(path, 0o644)
    return path


@pytest.mark.vm
def test_concurrent_creates_distinct_ports_and_clean_destroy(
    settings: Settings, lab_prefix: str, blank_base: Path
) -> None:
    names = [f"{lab_prefix}par{i}" for i in range(2)]
    made: dict[str, vms.LabVm] = {}
    errors: list[BaseException] = []

    def create(n: str) -> None:
        try:
            made[n] = vms.create_lab_vm(settings, n, data_disks=1, wait=False, base_image=blank_base)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        all_ports = [p for vm in made.values() for p in vm.meta.ports()]
        assert len(set(all_ports)) == 4
        listed = {v.name: v for v in vms.list_lab_vms(settings)}
        for n in names:
            assert listed[n].meta == made[n].meta and listed[n].state == "running"
            assert all(not ports.bind_free(p) for p in made[n].meta.ports())  # QEMU holds the forwards
            with libvirt.open(settings.uri) as conn:
                assert metadata.read(conn.lookupByName(n)) == made[n].meta
        assert_one_line_error(cli("lab", "create", names[0], "--no-wait"), "LAB_VM_EXISTS")
        p = cli("lab", "list", "--names")
        assert set(names) <= set(p.stdout.split())
    finally:
        for n in names:
            if n in made:
                assert cli("lab", "destroy", n).returncode == 0
    for n in names:
        meta = made[n].meta
        assert vms.wait_until_gone(meta)
        assert not any(Path(f).exists() for f in meta.files)
        assert not Path(meta.vm_dir).exists()
        assert blank_base.exists()  # the base is not the VM's to delete
        with libvirt.open(settings.uri) as conn:
            assert n not in {d.name() for d in conn.listAllDomains(0)}


@pytest.mark.vm
def test_destroy_keeps_files_another_domain_uses(settings: Settings, lab_prefix: str, blank_base: Path) -> None:
    vm = vms.create_lab_vm(settings, f"{lab_prefix}owner", data_disks=1, wait=False, base_image=blank_base)
    shared = vm.meta.files[1]
    conn = libvirt.open(settings.uri)
    keeper = conn.defineXML(
        f"<domain type='qemu'><name>{lab_prefix}keeper</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{shared}'/><target dev='vda' bus='virtio'/>"
        "</disk></devices></domain>"
    )
    try:
        vms.destroy_lab_vm(settings, vm.name)
        assert Path(shared).exists(), "a file another domain uses was deleted"
        assert not Path(vm.meta.files[0]).exists()  # its own overlay is gone
    finally:
        keeper.undefine()
        conn.close()
        Path(shared).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            Path(vm.meta.vm_dir).rmdir()
