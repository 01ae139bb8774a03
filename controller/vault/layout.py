"""Strict names for everything that becomes a path in the vault, and the one place paths are built."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from controller.vault.exceptions import InvalidVaultId, PathEscape, UnsupportedStoredFormat

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
POINT_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
#: libvirt disk targets: vda, sdb, hdc, xvda, vdaa ... (letters then letters/digits, short).
TARGET_RE = re.compile(r"^[a-z]{2,8}[a-z0-9]{0,8}$")
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
DOMAIN_XML = "domain.xml"
DISKS_DIR = "disks"
SUMS = "SHA256SUMS"  #: sha256 of manifest.json and domain.xml, see sums.py
MERGE_PREFIX = ".merge-"  #: VAULT/<vm>/.merge-<point>.json: a merge of that point into its child
PIN_PREFIX = ".pin-"  #: VAULT/<vm>/.pin-<point>-<name>.json: VM <name> runs on that point's files (pins.py)
PIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$")
DELETED_PREFIX = ".deleted-"  #: VAULT/<vm>/.deleted-<point>.json: the point is soft-deleted (recycle.py)
PROTECT_PREFIX = ".protect-"  #: VAULT/<vm>/.protect-<point>[-policy].json: the point is protected (protect.py)
#: who holds a protection record: "user" (`vault protect`) or "policy" (the VM's policy's protect_newest)
PROTECT_HOLDERS = ("user", "policy")


def new_point_id(now: dt.datetime | None = None, after: str | None = None) -> str:
    """A sortable point id: UTC time to the second plus 6 random hex digits, e.g. 20261125T101500Z-3fa9c1.

    ``after`` (the VM's newest id) keeps a VM's ids in creation order: a point made in the same second (or after
    the clock stepped back) takes the next second after it. The newest point is the parent of an incremental.
    """
    t = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    if after is not None:
        last = dt.datetime.strptime(check_point_id(after)[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        t = max(t, last + dt.timedelta(seconds=1))
    return f"{t:%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"  # the kernel's CSPRNG, as secrets uses (without its imports)


def check_uuid(value: str) -> str:
    """A VM uuid, lower-cased; anything else is refused."""
    v = str(value).strip().lower()
    if not UUID_RE.fullmatch(v):
        raise InvalidVaultId(f"not a VM uuid: {value!r}")
    return v


def check_point_id(value: str) -> str:
    """A point id of the form YYYYMMDDTHHMMSSZ-xxxxxx."""
    if not isinstance(value, str) or not POINT_ID_RE.fullmatch(value):
        raise InvalidVaultId(f"not a recovery point id: {value!r} (expected e.g. 20261125T101500Z-3fa9c1)")
    return value


def check_target(value: str) -> str:
    """A disk target name such as vda or sdb."""
    if not isinstance(value, str) or not TARGET_RE.fullmatch(value):
        raise InvalidVaultId(f"not a disk target name: {value!r} (expected e.g. vda, sdb)")
    return value


def inside(root: Path, *parts: str) -> Path:
    """root/parts, resolved, refused with PATH_ESCAPE unless it stays strictly inside root.

    Nothing below root may be a symlink, even one pointing inside the vault: a symlinked VM or point directory
    would let one id reach another's files (root itself may be a symlink).
    """
    base = root.resolve()
    for p in parts:
        if not p or Path(p).is_absolute() or "/" in p or "\\" in p or p in (".", ".."):
            raise PathEscape(f"refusing path component {p!r} under {base}")
    lexical = base.joinpath(*parts)
    path = lexical.resolve()
    if path == base or not path.is_relative_to(base):
        raise PathEscape(f"{lexical} resolves to {path}, outside the vault {base}")
    if path != lexical:
        raise PathEscape(f"{lexical} goes through a symlink (to {path}); the vault holds no symlinks")
    return path


def vm_dir(root: Path, vm_uuid: str) -> Path:
    """VAULT/<vm-uuid>."""
    return inside(root, check_uuid(vm_uuid))


def point_dir(root: Path, vm_uuid: str, point_id: str) -> Path:
    """VAULT/<vm-uuid>/<point-id> (published)."""
    return inside(root, check_uuid(vm_uuid), check_point_id(point_id))


def tmp_point_dir(root: Path, vm_uuid: str, point_id: str) -> Path:
    """VAULT/<vm-uuid>/.tmp-<point-id> (being written, never listed)."""
    return inside(root, check_uuid(vm_uuid), TMP_PREFIX + check_point_id(point_id))


def merge_intent_path(root: Path, vm_uuid: str, point_id: str) -> Path:
    """VAULT/<vm-uuid>/.merge-<point-id>.json: the durable intent of merging that point into its child."""
    return inside(root, check_uuid(vm_uuid), f"{MERGE_PREFIX}{check_point_id(point_id)}.json")


def pin_path(root: Path, vm_uuid: str, point_id: str, name: str) -> Path:
    """VAULT/<vm-uuid>/.pin-<point-id>-<name>.json: VM `name` (instant restore, boot-check) reads the point's chain."""
    if not PIN_NAME_RE.fullmatch(name):
        raise InvalidVaultId(f"not a usable pin name: {name!r}")
    return inside(root, check_uuid(vm_uuid), f"{PIN_PREFIX}{check_point_id(point_id)}-{name}.json")


def protect_path(root: Path, vm_uuid: str, point_id: str, holder: str = "user") -> Path:
    """VAULT/<vm-uuid>/.protect-<point-id>.json (user) or .protect-<point-id>-policy.json: the point is protected."""
    if holder not in PROTECT_HOLDERS:
        raise InvalidVaultId(f"not a protection holder: {holder!r} (expected one of {', '.join(PROTECT_HOLDERS)})")
    suffix = "" if holder == "user" else f"-{holder}"
    return inside(root, check_uuid(vm_uuid), f"{PROTECT_PREFIX}{check_point_id(point_id)}{suffix}.json")


def tombstone_path(root: Path, vm_uuid: str, point_id: str) -> Path:
    """VAULT/<vm-uuid>/.deleted-<point-id>.json: the point is soft-deleted, kept until it is purged (recycle.py)."""
    return inside(root, check_uuid(vm_uuid), f"{DELETED_PREFIX}{check_point_id(point_id)}.json")


def disk_file_name(target: str, fmt: str) -> str:
    """disks/<target>.<fmt> relative to the point directory (qcow2, or raw for raw sources)."""
    if fmt not in ("qcow2", "raw"):
        raise UnsupportedStoredFormat(f"unsupported stored disk format {fmt!r}")
    return f"{DISKS_DIR}/{check_target(target)}.{fmt}"


def disk_path(pdir: Path, file_name: str) -> Path:
    """The stored disk named by a manifest, refused unless it is disks/<target>.<fmt> inside pdir."""
    parts = file_name.split("/")
    if len(parts) != 2 or parts[0] != DISKS_DIR:
        raise PathEscape(f"manifest names a disk outside disks/: {file_name!r}")
    stem, _, fmt = parts[1].rpartition(".")
    disk_file_name(stem, fmt)
    return inside(pdir, DISKS_DIR, parts[1])
