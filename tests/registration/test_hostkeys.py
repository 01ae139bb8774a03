"""Trust on first use of guest SSH host keys, per VM UUID (the real handshake is covered in test_register_vm)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import paramiko
import pytest

from controller.errors import VmBackupError
from controller.registration.hostkeys import HostKeyStore, fingerprint

VM_A, VM_B = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[paramiko.PKey]:
    """Two ed25519 host keys made by ssh-keygen, like a guest's."""
    d = tmp_path_factory.mktemp("hostkeys")
    out = []
    for name in ("k1", "k2"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        out.append(paramiko.Ed25519Key.from_private_key_file(str(d / name)))
    return out


def test_learn_then_match_then_refuse_a_changed_key(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    store = HostKeyStore(tmp_path / "ssh" / "known_vms.json")
    assert store.check(VM_A, "web1", keys[0]) == "learned"
    assert store.check(VM_A, "web1", keys[0]) == "matched"
    with pytest.raises(VmBackupError) as ei:
        store.check(VM_A, "web1", keys[1])
    e = ei.value
    assert e.code == "SSH_HOST_KEY_CHANGED" and "--accept-new-host-key" in e.remediation
    assert e.details["recorded"] == fingerprint(keys[0]) and e.details["presented"] == fingerprint(keys[1])
    assert store.check(VM_A, "web1", keys[0]) == "matched"  # a refusal changes nothing


def test_keys_are_per_vm_and_accept_new_replaces(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    """Another VM may present any key (reused ports/addresses); --accept-new-host-key records the new one."""
    store = HostKeyStore(tmp_path / "known_vms.json")
    store.check(VM_A, "web1", keys[0])
    assert store.check(VM_B, "db1", keys[1]) == "learned"
    assert store.check(VM_A, "web1", keys[1], accept_new=True) == "replaced"
    assert store.check(VM_A, "web1", keys[1]) == "matched"
    saved = json.loads((tmp_path / "known_vms.json").read_text())
    assert set(saved) == {VM_A, VM_B} and saved[VM_A]["key"] == keys[1].get_base64()


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(f"{keys[0].get_name()} {keys[0].get_base64()}\n")
    printed = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert printed.split()[1] == fingerprint(keys[0])
