"""Encryption at rest on a real lab guest: an encrypted full and an encrypted incremental (qemu-storage-daemon on the
running VM) of a dedicated lab VM, then a boot-check of the incremental point passes (booted from a decrypted
temporary copy of the chain, which is removed afterwards).

Encryption is switched on in the session's VMBACKUP_HOME only for this test (off again afterwards, whatever
happens), on its own VM, so no other test's points are encrypted. Run under ``flock /tmp/vmbackup-vm.lock``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from controller.backup.engine import BackupEngine, BackupRequest
from controller.registration.register import RegisterOptions, Registrar
from controller.restore.bootcheck import BootChecker
from controller.settings import Settings
from controller.vault import Vault
from controller.vault.keys import KeyStore

pytestmark = pytest.mark.vm
MARKER = "/root/vmb-encrypt-marker"


@pytest.fixture(autouse=True)
def _home() -> None:
    """Overrides tests/vault/conftest.py's private home: this test uses the session's (the lab-VM fixtures')."""


def test_encrypted_full_and_incremental_then_boot_check(settings: Settings, make_lab_vm: Callable[..., Any]) -> None:
    """Every stored disk of both points names the vault key (the manifest never holds the key); the incremental
    point boots, holds the marker written before it, and its boot-check took the copy path."""
    vm = make_lab_vm("enc", data_disks=0)
    try:
        Registrar(settings).register(vm.name, RegisterOptions(ssh_wait_s=120))
        key = KeyStore().enable()
        try:
            assert vm.ssh(f"echo full > {MARKER} && sync")[0] == 0
            full = BackupEngine(settings).run(BackupRequest(vm=vm.name, full=True))
            marker = f"inc-{secrets.token_hex(6)}"
            assert vm.ssh(f"echo {marker} > {MARKER} && sync")[0] == 0
            inc = BackupEngine(settings).run(BackupRequest(vm=vm.name))
        finally:
            KeyStore().disable()
        vault = Vault(settings.vault)
        points = {p.point_id: p for p in vault.list_points(vm.uuid)}
        pf, pi = points[full.point_id], points[inc.point_id]
        assert pi.manifest.type == "incremental" and pi.manifest.parent == pf.point_id
        for p in (pf, pi):
            assert p.manifest.disks and all(d.key_id == key.key_id for d in p.manifest.disks)
            assert key.read_text() not in (p.path / "manifest.json").read_text()
        print(f"\nencrypted full {full.bytes_copied} B in {full.duration_s:.1f} s, "
              f"incremental {inc.bytes_copied} B in {inc.duration_s:.1f} s")  # fmt: skip
        with BootChecker(settings) as checker:
            res = checker.run(pi.point_id, timeout_s=300, command=f"grep -qx {marker} {MARKER}")
        checks = {c.name: c for c in res.checks}
        assert res.passed, res.to_dict()
        assert "disk(s)" in checks["restore"].detail and "bytes copied" in checks["restore"].detail
        assert checks["command"].ok and any(n.startswith("fsck:") for n in checks)
        print(f"boot-check of the encrypted incremental: boot {res.boot_seconds} s, total {res.duration_s:.1f} s")
        stored = vault.get_point(pi.point_id).manifest.boot_check
        assert stored is not None and stored["result"] == "passed"
        assert not (settings.home / "bootcheck").is_dir() or not list((settings.home / "bootcheck").glob("*.qcow2"))
        assert json.dumps(stored).count(key.key_id) == 0
    finally:
        vm.destroy()
