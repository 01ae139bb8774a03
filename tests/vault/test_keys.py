"""The vault key store (controller/vault/keys.py): modes, ids, export/import, wrong key, QEMU arguments."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from controller import settings as settings_mod
from controller.vault import keys, qemuimg
from controller.vault.key_exceptions import KeyExposed, KeyInvalid, KeyMissing, KeyWrong
from tests.vault.helpers import MiB, images_identical, qemu_io_write, run


def _mode(p: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(os.stat(p).st_mode)


def test_enable_makes_a_0600_key_under_pki_outside_the_vault(private_home: Path) -> None:
    """enable() writes <id>.key 0600 in pki/vault-keys (0700), never in the vault; the id is sha256[:16]."""
    store = keys.KeyStore()
    assert store.current() is None and store.status()["enabled"] is False
    key = store.enable()
    s = settings_mod.load()
    assert key.path.parent == s.pki_dir / "vault-keys"
    assert s.vault not in key.path.parents
    assert _mode(key.path) == 0o600 and _mode(key.path.parent) == 0o700
    passphrase = base64.b64decode(key.read_text())
    assert len(passphrase) == 64 and key.key_id == hashlib.sha256(passphrase).hexdigest()[:16]
    assert store.current() == key
    st = store.status()
    assert st == {
        "enabled": True,
        "current_key_id": key.key_id,
        "current_key_held": True,
        "key_ids": [key.key_id],
        "key_dir": str(key.path.parent),
    }
    assert key.read_text() not in repr(st) and key.read_text() not in repr(key)
    other = store.enable()  # a new key: current from now on, the old one kept for old points
    assert other.key_id != key.key_id and store.current() == other
    assert store.ids() == sorted([key.key_id, other.key_id])
    assert store.disable() == other.key_id and store.current() is None and store.get(key.key_id) == key


def test_export_import_round_trip_into_another_home(private_home: Path, tmp_path: Path) -> None:
    """The exported text imported into an empty store gives the same id and file; bad text is KEY_INVALID."""
    key, text = keys.KeyStore().export(keys.KeyStore().enable().key_id)
    other = keys.KeyStore(tmp_path / "elsewhere")
    with pytest.raises(KeyMissing) as e:
        other.get(key.key_id)
    assert "vault key import" in e.value.remediation
    got, new = other.import_key(f"# vmbackup vault key {key.key_id}\n{text}\n")
    assert new and got.key_id == key.key_id and got.path.read_bytes() == key.path.read_bytes()
    assert _mode(got.path) == 0o600 and other.current() is None  # imported, not made current
    assert other.import_key(text)[1] is False
    for bad in ("not base64!", base64.b64encode(b"short").decode(), base64.b64encode(os.urandom(64)).decode()):
        with pytest.raises(KeyInvalid):
            other.import_key(bad)


def test_exposed_key_file_is_refused(private_home: Path) -> None:
    """A key file readable by others is KEY_EXPOSED, not used."""
    store = keys.KeyStore()
    key = store.enable()
    key.path.chmod(0o644)
    with pytest.raises(KeyExposed):
        store.get(key.key_id)


def test_qemu_reads_the_key_file_and_a_wrong_key_is_refused(private_home: Path, tmp_path: Path) -> None:
    """A qcow2 created with the key's options opens with its secret object; another key gives KEY_WRONG."""
    store = keys.KeyStore()
    key, wrong = store.enable(), store.enable()
    img = tmp_path / "enc.qcow2"
    plain = tmp_path / "plain.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(plain), "16M")
    qemu_io_write(plain, "qcow2", 0x5A, 0, 1 * MiB)
    src = keys.image_source([(plain, None)])
    assert src == ["-f", "qcow2", str(plain)]
    enc = qemuimg.run_create(["qemu-img", "convert", *src, "--object", key.secret_object(), "-O", "qcow2",
                           *qemuimg.option_args(key.create_options()), str(img)])  # fmt: skip
    assert enc.returncode == 0, enc.stderr
    assert key.read_text() not in key.secret_object()  # argv names the file, never the key
    assert b"\x5a" * 4096 not in img.read_bytes()  # the data is not stored in the clear
    out = tmp_path / "out.qcow2"
    run("qemu-img", "convert", *keys.image_source([(img, key.key_id)]), "-O", "qcow2", str(out))
    assert images_identical(out, plain)
    bad = subprocess.run(["qemu-img", "convert", *keys.image_source([(img, wrong.key_id)]), str(tmp_path / "x")],
                         capture_output=True, text=True, check=False)  # fmt: skip
    err = keys.key_error(bad.stderr, "reading enc.qcow2", [wrong.key_id])
    assert bad.returncode != 0 and isinstance(err, KeyWrong) and wrong.key_id in err.message
    none = subprocess.run(["qemu-img", "convert", "-f", "qcow2", str(img), str(tmp_path / "y")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert isinstance(keys.key_error(none.stderr, "reading enc.qcow2"), KeyMissing)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_image_opts_gives_each_encrypted_layer_its_key(tmp_path: Path) -> None:
    """Top first; an unencrypted layer gets no key-secret; commas in a path are doubled."""
    opts = keys.image_opts([(tmp_path / "a,b.qcow2", "1" * 16), (Path("x"), None), (Path("y"), "2" * 16)])
    assert opts == (f"driver=qcow2,file.filename={tmp_path}/a,,b.qcow2,encrypt.key-secret=vmbk-key-{'1' * 16},"
                    f"backing.backing.encrypt.key-secret=vmbk-key-{'2' * 16}")  # fmt: skip
