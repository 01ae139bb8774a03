"""Encryption at rest (issue #17 item 2), host-only with real qemu-img/qemu-io/qemu-storage-daemon.

An encrypted (and compressed) full copy through PointWriter.copy_disk and an encrypted incremental through the real
byte mover (qsd.backup_changed) into PointWriter.add_incremental_disk; then everything that reads them: copy-out
(restore), the README's plain `qemu-img convert --object secret` lines run literally, verify, a retention merge of
the encrypted chain, and a missing or wrong key refused with nothing changed.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.backup import qsd
from controller.cli.main import main
from controller.filerestore.session import open_point
from controller.restore.bootcheck import BootChecker
from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import Vault, keys, merge, pins
from controller.vault.copyout import copy_out_disk
from controller.vault.key_exceptions import EncryptedPointUnsupported, KeyMissing, KeyWrong
from controller.vault.manifest import RecoveryPoint
from tests.vault.helpers import MiB, run

VM = "6f1d4b2c-3e5a-4b7c-9d0e-1f2a3b4c5d6e"
SIZE = 64 * MiB
FIELDS = {"vm": {"uuid": VM, "name": "enc", "host": "qemu:///system"}, "consistency": "CRASH"}
README = Path(__file__).resolve().parents[2] / "README.md"
MARK = b"vmbackup-plaintext-marker-"
ZSTD_MAGIC = bytes.fromhex("28b52ffd")


def _text(n: int, seed: int) -> bytes:
    """n bytes of compressible log-like text with a marker that must never appear in a stored encrypted file."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += MARK + f"{rnd.randrange(10**6):06d} kernel: eth0 link up, session opened\n".encode()
    return bytes(out[:n])


def _qemu_io(image: Path, *cmds: str) -> None:
    """qemu-io on a plain qcow2 (records into its enabled persistent bitmaps)."""
    run("qemu-io", "-f", "qcow2", *(a for c in cmds for a in ("-c", c)), str(image))


@dataclass
class Encrypted:
    """A full and an incremental point of vdb, encrypted with `key`; snapshots of the source at each."""

    vault: Vault
    key: keys.VaultKey
    full: RecoveryPoint
    inc: RecoveryPoint
    at_full: Path
    at_inc: Path


def _publish(vault: Vault, write: object, parent: RecoveryPoint | None = None) -> RecoveryPoint:
    """A point of VM holding what write(writer) stores (an incremental one over parent)."""
    w = vault.new_point(VM)
    write(w)  # type: ignore[operator]
    w.write_domain_xml(f"<domain><name>enc</name><uuid>{VM}</uuid></domain>")
    chain = {"parent": parent.point_id, "chain_depth": parent.manifest.chain_depth + 1} if parent else {}
    return w.publish({**FIELDS, **chain})


def _build(home: Path) -> None:
    """In `home`: encryption on; a compressible source with bitmap cp1 (home/base.qcow2) stored as an encrypted
    full (compression asked for), then changed and stored as an encrypted incremental by qemu-storage-daemon;
    home/at-full.qcow2 and home/at-inc.qcow2 are the source at each point."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMBACKUP_HOME", str(home))
        vault = Vault(home / "vault")
        keys.KeyStore().enable()
        src = home / "src.raw"
        with open(src, "wb") as f:
            f.truncate(SIZE)
            f.write(_text(8 * MiB, 1))
            f.seek(32 * MiB)
            f.write(random.Random(2).randbytes(2 * MiB))
        base = home / "base.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(base))
        run("qemu-img", "bitmap", "--add", "--enable", str(base), "cp1")
        full = _publish(vault, lambda w: w.copy_disk("vdb", base, fmt="qcow2", compression="zstd"))
        run("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(base), str(home / "at-full.qcow2"))
        _qemu_io(base, f"write -P 0x5c {3 * MiB} {MiB}", f"write -z {40 * MiB} {MiB}", f"write -P 0x6d {60 * MiB} 4096")

        def incremental(w: object) -> None:
            def write(dst: Path, backing: str) -> int:
                key = w.key  # type: ignore[attr-defined]
                return qsd.backup_changed(str(base), "cp1", dst, backing, home / "qsd", compression="zstd", key=key)

            w.add_incremental_disk("vdb", full, write, str(base), SIZE)  # type: ignore[attr-defined]

        _publish(vault, incremental, full)
        run("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(base), str(home / "at-inc.qcow2"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The encrypted points, made once for the module (each LUKS header costs seconds on a loaded host)."""
    home = tmp_path_factory.mktemp("enc-home")
    _build(home)
    return home


@pytest.fixture
def encrypted(vault: Vault, private_home: Path, built: Path, tmp_path: Path) -> Encrypted:
    """A copy of the module's encrypted points, key store and source in this test's own home."""
    for name in ("vault", "pki"):
        subprocess.run(["cp", "-a", "--sparse=always", str(built / name), str(private_home)], check=True)
    for name in ("base.qcow2", "at-full.qcow2", "at-inc.qcow2"):
        shutil.copyfile(built / name, tmp_path / name)
    full, inc = sorted(vault.list_points(VM), key=lambda p: p.point_id)
    key = keys.KeyStore().current()
    assert key is not None
    return Encrypted(vault, key, full, inc, tmp_path / "at-full.qcow2", tmp_path / "at-inc.qcow2")


def _same(a: Path, b: Path) -> bool:
    """qemu-img compare of two plain images."""
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


def _stored(e: Encrypted, p: RecoveryPoint) -> Path:
    """The stored vdb file of a point."""
    return _stored_of(e.vault, p)


def _stored_of(vault: Vault, p: RecoveryPoint) -> Path:
    """The stored vdb file of a point of `vault`."""
    rec = p.manifest.disk("vdb")
    assert rec is not None
    return vault.disk_path(p, rec)


def test_points_are_stored_encrypted_and_name_only_the_key_id(encrypted: Encrypted) -> None:
    """Both files are LUKS qcow2, the manifest records the key id and never the key, and no plaintext of the guest's
    data is in the stored bytes. Compression was asked for (zstd) but not applied: QEMU writes a qcow2's compressed
    clusters unencrypted, so an encrypted image is stored uncompressed (no zstd frame in it either)."""
    e = encrypted
    for p, kind in ((e.full, "full"), (e.inc, "incremental")):
        rec = p.manifest.disk("vdb")
        assert rec is not None and rec.kind == kind and rec.key_id == e.key.key_id
        info = json.loads(run("qemu-img", "info", "--output=json", str(_stored(e, p))))
        assert info["encrypted"] is True and info["format-specific"]["data"]["encrypt"]["format"] == "luks"
        stored = _stored(e, p).read_bytes()
        assert MARK not in stored and ZSTD_MAGIC not in stored and rec.compression == "none"
        for name in ("manifest.json", "SHA256SUMS", "domain.xml"):
            assert e.key.read_text() not in (p.path / name).read_text()


def test_restore_by_copy_out_and_by_the_readme_lines(encrypted: Encrypted, tmp_path: Path) -> None:
    """copy_out_disk gives an unencrypted qcow2 identical to the source at each point; so do the README's
    `qemu-img convert --object secret,...` lines, run literally with the exported key in a file."""
    e = encrypted
    for p, want in ((e.full, e.at_full), (e.inc, e.at_inc)):
        out = tmp_path / f"{p.point_id}.qcow2"
        rec = copy_out_disk(p, "vdb", out, vault=e.vault)
        assert _same(out, want) and rec.digest == ""
        assert json.loads(run("qemu-img", "info", "--output=json", str(out))).get("encrypted") is not True
    key_file = tmp_path / "vault-key.txt"
    key_file.write_text(keys.KeyStore().export(e.key.key_id)[1] + "\n")
    lines = [ln for ln in README.read_text().splitlines() if ln.startswith("qemu-img convert --object secret")]
    assert len(lines) == 2, "the README shows one line for a full point and one for an incremental point"
    for line, p, want in ((lines[0], e.full, e.at_full), (lines[1], e.inc, e.at_inc)):
        cmd = line.split("#")[0].replace("VAULT/<vm-uuid>/<point-id>", str(p.path))
        argv = shlex.split(cmd)
        assert re.search(r"file=vault-key\.txt", cmd) and argv[-1] == "vdb-restored.qcow2"
        subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)
        assert _same(tmp_path / "vdb-restored.qcow2", want)
        (tmp_path / "vdb-restored.qcow2").unlink()


def test_verify_checks_encrypted_points(encrypted: Encrypted) -> None:
    """verify passes with qemu-img check run through the key; a damaged byte is still a checksum mismatch; with the
    key absent the checksum still proves the bytes and the check says it was not run."""
    e = encrypted
    res = e.vault.verify(e.inc)
    assert res.ok, res.to_dict()
    assert all("corruptions=0" in d.detail for d in res.disks)
    hidden = e.key.path.with_name("hidden")
    e.key.path.rename(hidden)
    res = e.vault.verify(e.inc)
    assert res.ok and "KEY_MISSING" in res.disks[0].detail
    hidden.rename(e.key.path)


def test_merge_of_the_encrypted_chain_keeps_the_child_restorable(encrypted: Encrypted, tmp_path: Path) -> None:
    """Deleting the full merges it into the incremental (qemu-img commit through the key): the child becomes a
    full, still encrypted with the key, restoring the same bytes."""
    e = encrypted
    out = merge.delete_or_merge(e.vault, VM, e.full.point_id)
    assert out.action == "merged" and out.into == e.inc.point_id and out.child_type == "full"
    child = e.vault.get_point(e.inc.point_id)
    rec = child.manifest.disk("vdb")
    assert rec is not None and rec.kind == "full" and rec.key_id == e.key.key_id and rec.backing is None
    assert e.vault.verify(child).ok
    dest = tmp_path / "after-merge.qcow2"
    copy_out_disk(child, "vdb", dest, vault=e.vault)
    assert _same(dest, e.at_inc)


def _tree(vault: Vault) -> dict[str, tuple[int, float]]:
    """Every file under the vault with its size and mtime (to prove nothing changed)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in sorted(vault.root.rglob("*")) if p.is_file()}


def test_wrong_or_missing_key_is_refused_and_nothing_changes(encrypted: Encrypted, tmp_path: Path) -> None:
    """A key file replaced by another key: restore and merge say KEY_WRONG; removed: KEY_MISSING naming the
    import; no destination file, no merge intent, every vault file as it was."""
    e = encrypted
    good = e.key.path.read_bytes()
    other = keys.KeyStore(tmp_path / "other").enable()
    e.key.path.write_bytes(other.path.read_bytes())  # same id, wrong key
    before = _tree(e.vault)
    dest = tmp_path / "x.qcow2"
    with pytest.raises(KeyWrong):
        copy_out_disk(e.inc, "vdb", dest, vault=e.vault)
    with pytest.raises(KeyWrong):
        merge.delete_or_merge(e.vault, VM, e.full.point_id)
    e.key.path.unlink()
    with pytest.raises(KeyMissing) as missing:
        copy_out_disk(e.full, "vdb", dest, vault=e.vault)
    assert "vault key import" in missing.value.remediation
    with pytest.raises(KeyMissing):
        merge.delete_or_merge(e.vault, VM, e.full.point_id)
    assert not dest.exists() and not list(tmp_path.glob("x.qcow2*"))
    assert merge.pending_merges(e.vault, VM) == [] and _tree(e.vault) == before
    assert [p.point_id for p in e.vault.list_points(VM)] == [e.inc.point_id, e.full.point_id]
    assert keys.KeyStore().import_key(good.decode())[0] == e.key  # `vault key import` brings it back
    copy_out_disk(e.inc, "vdb", dest, vault=e.vault)
    assert _same(dest, e.at_inc)


def test_encryption_off_stores_plain_points_over_an_encrypted_chain(encrypted: Encrypted, tmp_path: Path) -> None:
    """After `encryption disable` a new incremental is plain (no key_id) over the encrypted chain; it restores."""
    e = encrypted
    keys.KeyStore().disable()
    base = tmp_path / "base.qcow2"  # this test's copy of the source (bitmap cp1 in it)
    run("qemu-img", "bitmap", "--add", "--enable", str(base), "cp2")
    _qemu_io(base, f"write -P 0x7e {5 * MiB} {MiB}")

    def incremental(w: object) -> None:
        def write(dst: Path, backing: str) -> int:
            return qsd.backup_changed(str(base), "cp2", dst, backing, tmp_path / "qsd2", key=w.key)  # type: ignore[attr-defined]

        w.add_incremental_disk("vdb", e.inc, write, str(base), SIZE)  # type: ignore[attr-defined]

    plain = _publish(e.vault, incremental, e.inc)
    rec = plain.manifest.disk("vdb")
    assert rec is not None and rec.key_id is None and rec.kind == "incremental"
    assert e.vault.verify(plain).ok
    out, want = tmp_path / "plain-out.qcow2", tmp_path / "want.qcow2"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(base), str(want))
    copy_out_disk(plain, "vdb", out, vault=e.vault)
    assert _same(out, want)


@pytest.mark.libvirt
def test_instant_restore_refuses_encrypted_points(encrypted: Encrypted, private_settings: Settings) -> None:
    """A VM running on the vault's files would need the key in libvirt for its lifetime: ENCRYPTED_POINT_UNSUPPORTED
    naming the key, with the way out; nothing is defined, pinned or created. (Boot-check takes its copy path.)"""
    e = encrypted
    assert keys.point_key_ids(e.vault, e.inc) == [e.key.key_id]
    name = "vmb-enc-instant-refused"
    with Restorer(private_settings) as r, pytest.raises(EncryptedPointUnsupported) as inst_err:
        r.restore_as_new(e.inc.point_id, name, instant=True)
    assert e.key.key_id in inst_err.value.message and "restore POINT --as NEW_NAME" in inst_err.value.remediation
    assert not (private_settings.home / "restored" / name).exists() and pins.list_pins(e.vault.root) == []


def test_files_reads_an_encrypted_point_through_an_nbd_export(vault: Vault, tmp_path: Path) -> None:
    """`vmbackup files` on an encrypted point: qemu-storage-daemon exports the chain decrypted over a unix socket and
    the appliance reads the file from it; its socket directory is gone afterwards."""
    keys.KeyStore().enable()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_bytes(MARK + b"from an encrypted point\n")
    raw, src = tmp_path / "fs.raw", tmp_path / "fs.qcow2"
    run("mkfs.ext4", "-q", "-F", "-d", str(tree), str(raw), "32M")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(src))
    p = _publish(vault, lambda w: w.copy_disk("vdb", src, fmt="qcow2"))
    assert p.manifest.disks[0].key_id is not None and MARK not in _stored_of(vault, p).read_bytes()
    with open_point(p.point_id, vault=vault) as files:
        assert [f.fstype for f in files.filesystems()] == ["ext4"]
        files.get(["vdb:/hello.txt"], tmp_path / "out")
        socks = list(Path(tempfile.gettempdir()).glob("vmb-files-nbd-*/nbd.sock"))
        assert socks, "the appliance reads through the NBD export"
    assert (tmp_path / "out" / "hello.txt").read_bytes() == MARK + b"from an encrypted point\n"
    assert not any(s.exists() for s in socks)


def test_boot_check_without_the_key_records_nothing(encrypted: Encrypted, private_settings: Settings) -> None:
    """A boot-check of an encrypted point whose key is not held stops with KEY_MISSING before any job or verdict:
    the point is not at fault, so no failed boot-check is written into it."""
    e = encrypted
    e.key.path.unlink()
    with BootChecker(private_settings) as checker:
        with pytest.raises(KeyMissing):
            checker.run(e.inc.point_id)
        assert list(checker.restorer.jobs.list()) == []
    assert e.vault.get_point(e.inc.point_id).manifest.boot_check is None


def test_status_counts_points_per_key_and_names_missing_keys(
    encrypted: Encrypted, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vault encryption status --json`: how many points each key encrypts and which of those keys are not held."""
    e = encrypted
    assert main(["vault", "encryption", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["points_by_key"] == {e.key.key_id: 2} and st["missing_key_ids"] == [] and st["enabled"] is True
    e.key.path.unlink()
    keys.KeyStore().disable()
    assert main(["vault", "encryption", "status"]) == 0
    out = capsys.readouterr().out
    assert f"MISSING keys (their points cannot be read): {e.key.key_id}" in out and "vault key import" in out
