"""The vault key store: the keys new points are LUKS-encrypted with, kept OUTSIDE the vault.

Files (``$VMBACKUP_HOME/pki/vault-keys/``, directory 0700, every file 0600, owner root)::

    <key id>.key   one line: the key as `vmbackup vault key export` prints it (base64)
    current        the id of the key new points are encrypted with (absent: encryption is off)

A key is 256 random bits. QEMU hands a LUKS passphrase to its crypto code as UTF-8 text ("Data from secret ... is
not valid UTF-8" for raw random bytes), so the passphrase is those bits as 64 hex characters, and the key's text
form (file, export) is that passphrase in base64: QEMU reads the key file as it is with
``--object secret,id=ID,file=KEYFILE,format=base64``. The key id is the first 16 hex digits of the SHA-256 of the
passphrase; manifests record only the id (DiskRecord.key_id). The key itself never goes into argv, logs, job rows or
manifests: QEMU reads it from the key file (``file=``), for qemu-img and qemu-storage-daemon alike.

Usage::

    store = KeyStore()
    key = store.enable()                       # a new key, current from now on
    args = ["--object", key.secret_object()]   # qemu-img; QMP: qmp.cmd("object-add", **key.secret_qmp())
    source = image_source([(top, key.key_id), (parent, key.key_id)])   # qemu-img --image-opts of a chain
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import settings as settings_mod
from controller.vault import chain, qemuimg
from controller.vault.key_exceptions import EncryptedPointUnsupported, KeyExposed, KeyInvalid, KeyMissing, KeyWrong
from controller.vault.manifest import RecoveryPoint

if TYPE_CHECKING:  # vault.py imports this module
    from controller.vault.vault import Vault
from controller.vault.qemuimg import QEMU_IMG

KEY_DIR = "vault-keys"
CURRENT = "current"
SUFFIX = ".key"
ID_LEN = 16
#: QEMU's message when no keyslot of a LUKS header opens with the passphrase
WRONG_KEY_MESSAGE = "Invalid password, cannot unlock any keyslot"
#: QEMU's message when an encrypted image is opened without a key-secret
NO_KEY_MESSAGE = "Parameter 'encrypt.key-secret' is required"
_HEX = frozenset("0123456789abcdef")
#: PBKDF2 time of a new LUKS header's keyslot (see VaultKey.create_options)
ITER_TIME_MS = 10


@dataclass(frozen=True)
class VaultKey:
    """One vault key: its id and the 0600 file holding it (the key material is only in that file)."""

    key_id: str
    path: Path

    @property
    def secret_id(self) -> str:
        """The QEMU object id of this key's secret (one per key: several keys can open one chain)."""
        return secret_id(self.key_id)

    def secret_object(self) -> str:
        """The value of qemu-img's / qemu-storage-daemon's ``--object``: the secret read from the key file."""
        return f"secret,id={self.secret_id},file={_qopt(str(self.path))},format=base64"

    def secret_qmp(self) -> dict[str, Any]:
        """The arguments of QMP ``object-add`` that define the same secret (qemu-storage-daemon)."""
        return {"qom-type": "secret", "id": self.secret_id, "file": str(self.path), "format": "base64"}

    def create_options(self) -> dict[str, str]:
        """qemu-img ``-o`` options that make a new qcow2 LUKS-encrypted with this key.

        iter-time 10 ms: the passphrase is 256 random bits, so PBKDF2 stretching adds nothing, and QEMU's default
        (2 s) would be paid again by every open of every layer of a chain (restore, merge, verify).
        """
        return {"encrypt.format": "luks", "encrypt.key-secret": self.secret_id, "encrypt.iter-time": str(ITER_TIME_MS)}

    def read_text(self) -> str:
        """The key as `vault key export` prints it (one base64 line, no newline)."""
        return self.path.read_text(encoding="ascii").strip()


def secret_id(key_id: str) -> str:
    """The QEMU object id of a key's secret."""
    return f"vmbk-key-{key_id}"


def key_id_of(passphrase: bytes) -> str:
    """A key's id: the first 16 hex digits of the SHA-256 of its passphrase."""
    return hashlib.sha256(passphrase).hexdigest()[:ID_LEN]


def parse_key_text(text: str) -> bytes:
    """The passphrase in a key's text form (export output; '#' comment lines ignored); KEY_INVALID otherwise."""
    body = "".join(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyInvalid(f"not a vault key: the text is not base64 ({e})") from e
    if len(raw) != 64 or not set(raw.decode("ascii", errors="replace")) <= _HEX:
        raise KeyInvalid("not a vault key: it does not hold 256 bits as 64 hex digits (vmbackup's key format)")
    return raw


def _qopt(value: str) -> str:
    """A value inside a QEMU option string (commas doubled)."""
    return value.replace(",", ",,")


class KeyStore:
    """The key directory (default ``$VMBACKUP_HOME/pki/vault-keys``): created 0700 on first write."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory if directory is not None else settings_mod.load().pki_dir / KEY_DIR

    def enable(self, key_id: str | None = None) -> VaultKey:
        """Make a key current for new points: a new random key, or (key_id) one already in the store."""
        key = self.get(key_id) if key_id is not None else self._store(secrets.token_hex(32).encode())
        self._write(self.directory / CURRENT, f"{key.key_id}\n".encode())
        return key

    def disable(self) -> str | None:
        """New points are stored unencrypted from now on (keys stay: old points need them); the former current id."""
        former = self.current_id()
        (self.directory / CURRENT).unlink(missing_ok=True)
        return former

    def current_id(self) -> str | None:
        """The id `current` names (its key file may be missing: current() then says KEY_MISSING), or None."""
        path = self.directory / CURRENT
        return path.read_text(encoding="ascii").strip() if path.is_file() else None

    def current(self) -> VaultKey | None:
        """The key new points are encrypted with, or None when encryption is off."""
        path = self.directory / CURRENT
        if not path.is_file():
            return None
        self._check_mode(path)
        return self.get(path.read_text(encoding="ascii").strip())

    def get(self, key_id: str) -> VaultKey:
        """The key with this id; KEY_MISSING (import it) when the store does not hold it, KEY_EXPOSED if readable."""
        if len(key_id) != ID_LEN or not set(key_id) <= _HEX:
            raise KeyInvalid(f"not a vault key id: {key_id!r} (16 hex digits, as `vault encryption status` shows)")
        path = self.directory / f"{key_id}{SUFFIX}"
        if not path.is_file():
            raise KeyMissing(f"vault key {key_id} is not in {self.directory}", details={"key_id": key_id})
        self._check_mode(path)
        return VaultKey(key_id, path)

    def ids(self) -> list[str]:
        """The ids of every key in the store."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}"))

    def export(self, key_id: str | None = None) -> tuple[VaultKey, str]:
        """The key (default: the current one) and its text; KEY_MISSING when there is none."""
        if key_id is None:
            cur = self.current()
            if cur is None:
                raise KeyMissing("vault encryption is off and no key id was given: there is no current key")
            key_id = cur.key_id
        key = self.get(key_id)
        return key, key.read_text()

    def import_key(self, text: str) -> tuple[VaultKey, bool]:
        """Store a key from its exported text; (the key, True if it was new). It does not become current."""
        raw = parse_key_text(text)
        existed = (self.directory / f"{key_id_of(raw)}{SUFFIX}").is_file()
        return self._store(raw), not existed

    def status(self) -> dict[str, Any]:
        """Whether new points are encrypted, with which key, and which keys the store holds (never a key)."""
        cur, held = self.current_id(), self.ids()
        return {"enabled": cur is not None, "current_key_id": cur, "current_key_held": cur in held if cur else None,
                "key_ids": held, "key_dir": str(self.directory)}  # fmt: skip

    def _store(self, passphrase: bytes) -> VaultKey:
        """Write <id>.key (0600) unless it exists; the key."""
        key_id = key_id_of(passphrase)
        path = self.directory / f"{key_id}{SUFFIX}"
        if not path.is_file():
            self._write(path, base64.b64encode(passphrase) + b"\n")
        return self.get(key_id)

    def _write(self, path: Path, data: bytes) -> None:
        """Write a file of the store atomically, 0600, in the 0700 directory (created if needed), durably."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _check_mode(self, path: Path) -> None:
        """KEY_EXPOSED when the file or the key directory can be read by group or others."""
        for p in (self.directory, path):
            if os.stat(p).st_mode & 0o077:
                raise KeyExposed(f"{p} is readable by group or others", details={"path": str(p)})


def keys_for(store: KeyStore, key_ids: Sequence[str | None]) -> list[VaultKey]:
    """The distinct keys a set of layers needs, in first-use order (KEY_MISSING for the first one absent)."""
    out: list[VaultKey] = []
    for kid in key_ids:
        if kid is not None and all(k.key_id != kid for k in out):
            out.append(store.get(kid))
    return out


def image_opts(layers: Sequence[tuple[Path, str | None]], fmt: str = "qcow2") -> str:
    """qemu-img ``--image-opts`` for a qcow2 chain given top first as (file, key id or None): each encrypted layer
    gets its key-secret (``backing.`` once per level down). The backing files are the ones the headers name."""
    top, _ = layers[0]
    parts = [f"driver={fmt}", f"file.filename={_qopt(str(top))}"]
    for depth, (_, kid) in enumerate(layers):
        if kid is not None:
            parts.append(f"{'backing.' * depth}encrypt.key-secret={secret_id(kid)}")
    return ",".join(parts)


def image_source(
    layers: Sequence[tuple[Path, str | None]], fmt: str = "qcow2", store: KeyStore | None = None
) -> list[str]:
    """The qemu-img arguments that open a chain (top first): ``-f FMT FILE`` when nothing in it is encrypted, else
    one ``--object secret`` per key, ``--image-opts`` and the options (KEY_MISSING when a key is not held)."""
    return chain_source(layers[0][0], [kid for _, kid in layers], fmt, store)


def chain_source(
    top: Path, key_ids: Sequence[str | None], fmt: str = "qcow2", store: KeyStore | None = None
) -> list[str]:
    """image_source() of the chain under `top` whose layers (top first) are encrypted with key_ids."""
    if not any(key_ids):
        return ["-f", fmt, str(top)]
    objects = [a for k in keys_for(store or KeyStore(), key_ids) for a in ("--object", k.secret_object())]
    return [*objects, "--image-opts", image_opts([(top, k) for k in key_ids], fmt)]


def unlock_check(layers: Sequence[tuple[Path, str | None]], what: str, store: KeyStore | None = None) -> None:
    """Before anything is read or written: every key a chain (top first) needs is held (KEY_MISSING) and opens its
    layer (KEY_WRONG), proven by ``qemu-img check`` of the chain opened with the keys. Nothing when unencrypted."""
    kids = [kid for _, kid in layers]
    if not any(kids):
        return
    cmd = [QEMU_IMG, "check", "-q", *image_source(layers, store=store)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    err = key_error(p.stderr, what, kids) if p.returncode not in (0, 3) else None
    if err is not None:
        raise err


def check_stored(path: Path, fmt: str, key_id: str | None, store: KeyStore | None = None) -> qemuimg.CheckResult:
    """`qemu-img check` of one stored vault file (verify): with its key when it is encrypted, on its own layer when
    its backing file needs a key. A key not held: not run (said in the summary; the checksum proved the bytes)."""
    if key_id:
        try:
            key = (store or KeyStore()).get(key_id)
        except KeyMissing as e:
            return qemuimg.CheckResult(True, 0, f"encrypted, qemu-img check not run: {e.code}: {e.message}")
        res = qemuimg.check(path, fmt, key)
        if not res.ok and WRONG_KEY_MESSAGE in res.summary:
            res.summary = f"KEY_WRONG: vault key {key_id} does not open it ({res.summary})"
        return res
    res = qemuimg.check(path, fmt)
    if not res.ok and NO_KEY_MESSAGE in res.summary:  # a plain layer over an encrypted backing file
        return qemuimg.check(path, fmt, own_layer=True)
    return res


def point_key_ids(vault: Vault, point: RecoveryPoint) -> list[str]:
    """The vault keys reading `point` needs: of its disks' files and of every file they are built on."""
    ids = {r.key_id for rec in point.manifest.disks for _, r in chain.disk_chain(vault, point, rec.target)}
    return sorted(k for k in ids if k)


def check_point(vault: Vault, point: RecoveryPoint) -> list[str]:
    """Every key reading `point` needs is held and opens its files (KEY_MISSING / KEY_WRONG otherwise, before
    anything is written); the key ids (empty: nothing is encrypted)."""
    kids = point_key_ids(vault, point)
    for rec in point.manifest.disks if kids else []:
        layers = [(vault.disk_path(p, r), r.key_id) for p, r in reversed(chain.disk_chain(vault, point, rec.target))]
        unlock_check(layers, f"disk {rec.target} of point {point.point_id}")
    return kids


def refuse_encrypted(vault: Vault, point: RecoveryPoint, what: str, remediation: str | None = None) -> None:
    """ENCRYPTED_POINT_UNSUPPORTED when reading `point` needs a vault key (for what cannot take one)."""
    kids = point_key_ids(vault, point)
    if kids:
        raise EncryptedPointUnsupported(
            f"point {point.point_id} is encrypted (vault key {', '.join(kids)}): {what} cannot read it",
            remediation=remediation,
            details={"point_id": point.point_id, "key_ids": kids},
        )


def key_error(stderr: str, what: str, key_ids: Sequence[str | None] = ()) -> KeyWrong | KeyMissing | None:
    """KEY_WRONG / KEY_MISSING when QEMU's stderr says a key did not open an image (or none was given), else None."""
    ids = sorted({k for k in key_ids if k})
    details = {"key_ids": ids, "stderr": stderr.strip()}
    if WRONG_KEY_MESSAGE in stderr:
        return KeyWrong(f"{what}: vault key {', '.join(ids) or '?'} does not open the image", details=details)
    if NO_KEY_MESSAGE in stderr:
        return KeyMissing(f"{what}: the image is encrypted and no key was given for it", details=details)
    return None
