"""Instant restore and the instant boot-check on the real lab guest, from a real incremental point.

The shared registered ``lab_vm`` is backed up twice (a full, then an incremental with a second marker); the
incremental point feeds:
  1. ``vmbackup restore POINT --as NAME --instant --start``: the VM boots from overlays over the vault chain (SSH
     answers, both markers are there), a guest write lands in the overlay, the point and its parent are pinned
     (``vault delete`` refuses, retention keeps them), ``restore list`` shows it running; ``restore finish NAME``
     pulls the chain into the overlays while it runs and leaves no reference to the vault (domain XML, live and
     persistent; ``qemu-img info --backing-chain``), the pin and the ACLs gone; the guest still answers;
  2. ``boot-check`` on the instant path passes and leaves no pin.
Throughout, the sha256 of every vault file of the chain is unchanged, and they stay root-owned.

Run under ``flock /tmp/vmbackup-vm.lock`` (two boots of ~30 s under TCG).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup.engine import BackupEngine, BackupRequest
from controller.lab.sshexec import run as ssh_run
from controller.lab.sshexec import wait_for_ssh
from controller.policies.model import Retention
from controller.restore import instant
from controller.restore.bootcheck import BootChecker
from controller.scheduling.prune import record_of
from controller.scheduling.retention import select_prunable
from controller.settings import Settings
from controller.vault import Vault, chain, pins
from controller.virt import metadata as labmeta

pytestmark = pytest.mark.vm

VMBACKUP = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmbackup")


@dataclass
class ChainPoint:
    """An incremental point of the lab VM, its parent, the markers and the vault files its disks read."""

    point_id: str
    parent: str
    marker: str
    data_marker: str
    files: list[Path]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the vmbackup CLI with this session's environment."""
    return subprocess.run([VMBACKUP, *args], capture_output=True, text=True, timeout=timeout, env=os.environ)


def digests(files: list[Path]) -> dict[str, str]:
    """sha256 of each file."""
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        out[str(f)] = h.hexdigest()
    return out


@pytest.fixture(scope="module")
def point(settings: Settings, lab_vm: Any, registered_vm: Any) -> ChainPoint:
    """A full, then an incremental backup of the lab VM with a marker written before each."""
    marker, data_marker = f"full-{secrets.token_hex(6)}", f"inc-{secrets.token_hex(6)}"
    assert lab_vm.ssh(f"echo {marker} > /root/vmb-instant-marker && sync")[0] == 0
    BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    assert lab_vm.ssh(f"echo {data_marker} > /data1/vmb-instant-marker && sync")[0] == 0
    res = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    assert res.point_type == "incremental" and res.parent, res
    vault = Vault(settings.vault)
    p = vault.get_point(res.point_id)
    files = [vault.disk_path(q, r) for d in p.manifest.disks for q, r in chain.disk_chain(vault, p, d.target)]
    return ChainPoint(res.point_id, res.parent, marker, data_marker, files)


def test_instant_restore_runs_on_the_vault_then_finish_moves_it_out(settings: Settings, point: ChainPoint) -> None:
    before = digests(point.files)
    name = f"inst-{secrets.token_hex(3)}"
    p = cli("restore", point.point_id, "--as", name, "--instant", "--start", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert res["mode"] == "instant" and res["bytes_copied"] == 0 and res["started"]
    assert res["ssh_command"] and res["agent_endpoint"].startswith("127.0.0.1:")
    assert all(str(settings.vault.resolve()) in files[0] for files in res["backing"].values())
    lv = libvirt.open("qemu:///system")
    try:
        dom = lv.lookupByName(name)
        meta = labmeta.read(dom)
        assert meta is not None
        boot_s = wait_for_ssh(meta, 240)
        print(f"\ninstant restore defined+started in {res['duration_s']:.1f} s; SSH after {boot_s:.1f} s")
        assert ssh_run(meta, "cat /root/vmb-instant-marker")[1].strip() == point.marker
        assert ssh_run(meta, "cat /data1/vmb-instant-marker")[1].strip() == point.data_marker
        # a guest write goes to the overlay, never to the vault
        vdb = Path(res["disks"]["vdb"])
        used = vdb.stat().st_blocks * 512
        assert ssh_run(meta, "dd if=/dev/urandom of=/data1/new bs=1M count=16 conv=fsync 2>&1")[0] == 0
        assert vdb.stat().st_blocks * 512 - used >= 16 << 20
        assert all(f.stat().st_uid == 0 for f in point.files)  # libvirt chowned nothing in the vault
        # pinned: the point and its parent can be neither deleted nor pruned
        d = cli("vault", "delete", point.parent, "--json")
        assert d.returncode != 0 and "POINT_PINNED" in d.stdout + d.stderr, d.stdout + d.stderr
        vault = Vault(settings.vault)
        pts = vault.list_points(vault.get_point(point.point_id).vm_uuid)
        sel = select_prunable([record_of(q) for q in pts], Retention(keep_last=1), datetime.now(UTC))
        assert {point.point_id, point.parent} <= {v.point.id for v in sel.keep}
        listed = json.loads(cli("restore", "list", "--json").stdout)
        assert [(x["name"], x["state"], x["point_id"]) for x in listed if x["name"] == name] == [
            (name, "running", point.point_id)]
        assert digests(point.files) == before

        f = cli("restore", "finish", name, "--json")
        assert f.returncode == 0, f.stdout + f.stderr
        assert json.loads(f.stdout)["method"] == "block-pull"
        root = str(settings.vault.resolve())
        assert root not in dom.XMLDesc(0) and root not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        for img in res["disks"].values():
            info = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", img], capture_output=True, text=True,
                                  check=True).stdout
            assert "backing file" not in info and root not in info
        assert [x for x in pins.list_pins(settings.vault) if x.name == name] == []
        acl = subprocess.run(["getfacl", "-n", "-p", *map(str, point.files)], capture_output=True, text=True).stdout
        assert f"user:{instant.qemu_uid(lv, 'qemu')}:" not in acl
        assert ssh_run(meta, "cat /data1/vmb-instant-marker; ls -l /data1/new")[0] == 0
    finally:
        cli("lab", "destroy", name)
        lv.close()
    assert digests(point.files) == before


def test_boot_check_on_the_instant_path(settings: Settings, point: ChainPoint) -> None:
    before = digests(point.files)
    with BootChecker(settings) as checker:
        r = checker.run(point.point_id)
    print(f"\ninstant boot-check: {r.duration_s:.1f} s (boot {r.boot_seconds} s)")
    assert r.passed, r.to_dict()
    restore = next(c for c in r.checks if c.name == "restore")
    assert "no copy" in restore.detail
    assert any(c.name.startswith("fsck:") and c.ok for c in r.checks)
    assert pins.list_pins(settings.vault) == []
    assert digests(point.files) == before
