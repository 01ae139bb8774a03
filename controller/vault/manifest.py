"""manifest.json of a recovery point: what was backed up, its consistency, each stored disk's checksum."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.contract import CONSISTENCY_LEVELS
from controller.vault.exceptions import ManifestIdMismatch, ManifestInvalid

#: 2: "digest" ("sha256-4m:<hex>") replaced format 1's whole-file "sha256";
#: 3: the point always has a SHA256SUMS covering manifest.json and domain.xml (see sums.py);
#: 4: incremental points (type, parent, checkpoint, chain_depth, full_reason; per disk kind, backing, changed_bytes)
#: 5: stored images may be compressed (per disk "compression") and encrypted (per disk "key_id", never the key)
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
#: how a stored qcow2's clusters are compressed: none, or qcow2's own zstd compression (compression_type=zstd)
COMPRESSIONS = ("none", "zstd")
POINT_TYPES = ("full", "incremental")


@dataclass
class DiskRecord:
    """One stored disk: where it came from, what it holds, and how to check it."""

    target: str
    file: str  # relative to the point dir: disks/<target>.qcow2
    format: str  # qcow2 | raw
    virtual_size: int  # guest-visible size
    logical_size: int  # apparent size of the stored file (what digest covers)
    stored_bytes: int  # bytes allocated on the vault filesystem
    digest: str  # "<algo>:<hex>", see controller/vault/digest.py
    source_path: str
    method: str = ""  # sparse-copy | qemu-img-convert | qsd-blockdev-backup (how it got here)
    kind: str = "full"  # full: self-contained | incremental: only the changed clusters, over `backing`
    #: an incremental's backing file as written in its qcow2 header, relative to the file's own directory:
    #: ../../<parent point>/disks/<target>.qcow2 (None for a full)
    backing: str | None = None
    changed_bytes: int | None = None  # dirty bytes the checkpoint's bitmap marked (incremental only)
    full_reason: str | None = None  # why this disk was copied in full inside an incremental point
    compression: str = "none"  # one of COMPRESSIONS: how the stored qcow2's clusters are compressed
    #: id of the vault key the stored qcow2 is LUKS-encrypted with (controller/vault/keys.py); None: plain
    key_id: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiskRecord:
        """Parse one entry of manifest['disks'] (format 1 kept a plain "sha256" of the whole file)."""
        if "digest" not in d and "sha256" in d:
            d = {**d, "digest": f"sha256:{d['sha256']}"}
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Manifest:
    """The whole manifest; ``to_dict``/``from_dict`` give the JSON form (vm fields nested under "vm")."""

    point_id: str
    vm_uuid: str
    vm_name: str
    host: str
    created: str  # UTC ISO 8601
    consistency: str
    consistency_reason: str = ""
    freeze_window_ms: float | None = None  # the controller's: Freeze reply received to Thaw reply received
    #: The agent's first FIFREEZE to last FITHAW (None: older points, CRASH without a confirmed thaw, older agents).
    guest_frozen_ms: float | None = None
    freeze_hooks_ms: int | None = None  # the agent's freeze hooks, before the first FIFREEZE
    thaw_hooks_ms: int | None = None  # the agent's thaw hooks, after the last FITHAW
    disks: list[DiskRecord] = field(default_factory=list)
    agent_version: str | None = None
    quiescer: str | None = None  # who froze the guest: agent | qga | none (None: older points, or a shut-off VM)
    controller_version: str | None = None
    policy: str | None = None
    job_id: str | None = None
    boot_check: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None  # the last verify: {"ok", "at", "errors"} (controller.vault.verdicts)
    #: devices not copied, with why: [{"target": "sdb", "device": "cdrom", "type": ..., "source": ..., "reason": ...}]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    type: str = "full"  # full | incremental (incremental when any disk is)
    parent: str | None = None  # the point an incremental's disks are backed by
    checkpoint: str | None = None  # the libvirt checkpoint this backup created (vmb-<job id>); None: none made
    chain_depth: int = 0  # 0 for a full, parent's + 1 for an incremental
    full_reason: str | None = None  # why a full was taken where an incremental was expected
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to manifest.json."""
        d = asdict(self)
        d["vm"] = {"uuid": d.pop("vm_uuid"), "name": d.pop("vm_name"), "host": d.pop("host")}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """Parse the JSON form; raises MANIFEST_INVALID on a missing field or unknown version."""
        try:
            if d.get("format_version") not in READABLE_VERSIONS:
                raise ManifestInvalid(
                    f"unknown manifest format_version {d.get('format_version')!r} (this vmbackup reads "
                    f"{', '.join(map(str, READABLE_VERSIONS))}; a newer vmbackup wrote it)"
                )
            vm = d["vm"]
            # format 1 is read as format 2 (its disks' "sha256" becomes "digest"), so a rewrite stays consistent
            skip = ("disks", "format_version")
            simple = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in skip}
            m = cls(
                **simple,
                vm_uuid=vm["uuid"],
                vm_name=vm.get("name") or "",
                host=vm.get("host") or "",
                disks=[DiskRecord.from_dict(x) for x in d.get("disks", [])],
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestInvalid(f"manifest is missing or has a bad field: {e}") from e
        if m.consistency not in CONSISTENCY_LEVELS:
            raise ManifestInvalid(
                f"bad consistency {m.consistency!r} (expected one of {', '.join(CONSISTENCY_LEVELS)})"
            )
        return m

    def disk(self, target: str) -> DiskRecord | None:
        """The record of one target, if stored."""
        return next((x for x in self.disks if x.target == target), None)


@dataclass
class RecoveryPoint:
    """A published point: its directory and its manifest."""

    path: Path
    manifest: Manifest
    error: str = (
        ""  # set only for a listed point whose manifest cannot be read (list_points(include_broken=True))
    )

    @property
    def point_id(self) -> str:
        """The point's id (also its directory name)."""
        return self.manifest.point_id

    @property
    def vm_uuid(self) -> str:
        """The backed-up VM's uuid."""
        return self.manifest.vm_uuid

    @property
    def vm_name(self) -> str:
        """The VM's name at backup time."""
        return self.manifest.vm_name

    @property
    def stored_bytes(self) -> int:
        """Bytes the point's disks occupy in the vault."""
        return sum(d.stored_bytes for d in self.manifest.disks)

    def to_dict(self) -> dict[str, Any]:
        """JSON view for `--json` output: the manifest plus the path."""
        out = {**self.manifest.to_dict(), "path": str(self.path), "stored_bytes": self.stored_bytes}
        if self.error:
            out["error"] = self.error
        return out


def read_manifest(point_path: Path) -> Manifest:
    """Load <point>/manifest.json; MANIFEST_ID_MISMATCH unless its ids are the point's and VM's directory names."""
    p = point_path / "manifest.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ManifestInvalid(f"cannot read {p}: {e}") from e
    if not isinstance(data, dict):
        raise ManifestInvalid(f"{p} is not a JSON object")
    m = Manifest.from_dict(data)
    if (m.point_id, m.vm_uuid) != (point_path.name, point_path.parent.name):
        raise ManifestIdMismatch(
            f"{p} names point {m.point_id!r} of VM {m.vm_uuid!r}, which does not match its directory "
            f"{point_path.parent.name}/{point_path.name}",
            details={"path": str(point_path), "point_id": m.point_id, "vm_uuid": m.vm_uuid},
        )
    return m


def fsync_dir(path: Path) -> None:
    """fsync a directory so renames and new entries in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durable(path: Path, data: bytes) -> None:
    """Write path via a temporary sibling, fsync it, rename over path, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def manifest_bytes(m: Manifest) -> bytes:
    """The exact bytes of manifest.json for m."""
    return (json.dumps(m.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def write_manifest(point_path: Path, m: Manifest) -> None:
    """Atomically write <point>/manifest.json (publish; a published point is rewritten by sums.rewrite_manifest)."""
    write_file_durable(point_path / "manifest.json", manifest_bytes(m))
