"""Real lab VMs from the real lab image: SSH with paramiko, data disks mounted, growing the root disk, and a
teardown that leaves no domain, overlay or listening port behind. Run under `flock /tmp/vmbackup-vm.lock`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.lab import image
from controller.settings import Settings
from controller.virt import ports

GiB = 1 << 30
pytestmark = pytest.mark.vm


def test_image_cached_small_and_instant(settings: Settings, lab_image: image.ImageInfo) -> None:
    assert lab_image.path.parent == settings.image_cache and lab_image.path.exists()
    assert lab_image.virtual_size == 2 * GiB
    assert lab_image.allocated < 700 * (1 << 20), lab_image
    t0 = time.monotonic()
    again = image.ensure_image(settings)
    assert time.monotonic() - t0 < 5 and not again.built_now and again.path == lab_image.path
    print(f"\nlab image {lab_image.path}: virtual {lab_image.virtual_size} B, allocated "
          f"{lab_image.allocated / 2**20:.0f} MiB, build {lab_image.build_seconds} s")  # fmt: skip


def test_ssh_write_and_read_back(lab_vm: Any) -> None:
    token = uuid.uuid4().hex
    rc, out, err = lab_vm.ssh(f"echo {token} > /root/probe && sync && cat /root/probe && cat /proc/cmdline")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == token
    assert "console=ttyS0" in lines[1] and "root=/dev/vda1" in lines[1]
    rc, out, _ = lab_vm.ssh("systemctl is-active ssh qemu-guest-agent systemd-journald; hostname")
    assert out.split() == ["active", "active", "active", "lab-guest"], out
    print(f"\nlab VM {lab_vm.name}: SSH after {lab_vm.boot_seconds:.1f} s")


@pytest.mark.parametrize("n", [1, 2])
def test_data_disks_mounted_ext4_of_right_size(lab_vm: Any, n: int) -> None:
    rc, out, err = lab_vm.ssh(f"findmnt -n -b -o SOURCE,FSTYPE,LABEL,SIZE /data{n}")
    assert rc == 0, f"/data{n} not mounted: {err}\n{lab_vm.console_tail()}"
    source, fstype, label, size = out.split()
    assert (source, fstype, label) == (f"/dev/vd{chr(ord('a') + n)}", "ext4", f"data{n}")
    assert 0.9 * GiB < int(size) <= GiB  # 1 GiB disk minus ext4 overhead
    token = uuid.uuid4().hex
    rc, out, err = lab_vm.ssh(f"echo {token} > /data{n}/probe && sync && cat /data{n}/probe")
    assert (rc, out.strip()) == (0, token), err


def test_absent_data_disks_do_not_block_boot(lab_vm: Any) -> None:
    cmd = "findmnt -n /data3 || echo absent; timeout 120 systemctl is-system-running --wait || true"
    _rc, out, _ = lab_vm.ssh(cmd, timeout=150)
    assert out.split()[0] == "absent"
    assert out.split()[1] in ("running", "degraded"), out


def test_own_vm_grown_root_then_clean_teardown(settings: Settings, make_lab_vm: Callable[..., Any]) -> None:
    vm = make_lab_vm("grow", disk_size_gib=3)
    rc, out, err = vm.ssh("df -B1 --output=size / | tail -1")
    assert rc == 0, err
    assert int(out) > 2.5 * GiB, f"root not grown: {out}"
    print(f"\nlab VM {vm.name}: SSH after {vm.boot_seconds:.1f} s, root fs {int(out) / GiB:.2f} GiB")
    meta = vm.meta
    overlay = Path(meta.files[0])
    assert overlay.exists() and overlay.name == "root.qcow2"
    vm.destroy()
    with libvirt.open(settings.uri) as conn:
        assert vm.name not in {d.name() for d in conn.listAllDomains(0)}
    assert not overlay.exists() and not Path(meta.console_path).exists() and not Path(meta.vm_dir).exists()
    assert all(ports.bind_free(p) for p in meta.ports()), "a forwarded port is still listening"
    assert Path(meta.base_image).exists()


def test_cli_image_reports_cached_image(lab_image: image.ImageInfo) -> None:
    import os
    import subprocess
    import sys

    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "controller.cli.main", "lab", "image"], capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "cached" in p.stdout and str(lab_image.path) in p.stdout and "allocated" in p.stdout
    assert time.monotonic() - t0 < 30
