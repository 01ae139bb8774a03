"""Protected points: a point that must not be deleted, merged or pruned until it is unprotected.

A protection is a durable record beside the points (``layout.protect_path``), like a pin (pins.py):
``VAULT/<vm>/.protect-<point>.json`` written by ``vmbackup vault protect POINT [--reason TEXT]``, and
``VAULT/<vm>/.protect-<point>-policy.json`` written for the newest N good points of a VM whose policy sets
``protect_newest: N`` (kept in step by every prune: :func:`sync_policy`). The file's name is what protects: a
record that cannot be read still protects the point it names, so damage never unprotects anything.

Every point a protected incremental is built on (its chain back to its full) is protected implicitly: deleting
one would merge it into its child, which rewrites the child's files. Every delete path (``vault delete``, prune,
``unprotect --delete-data``; merge.py's delete_or_merge and merge_into_child) calls :func:`refuse_if_protected`
(POINT_PROTECTED), and retention keeps protected points (``PointRecord.protected_by``). Usage::

    protect(vault, point, reason="before the upgrade")      # record written (durably)
    protectors(vault, vm_uuid, point_id)                     # ["protected (user): before the upgrade", ...]
    refuse_if_protected(vault, vm_uuid, point_id, "delete")  # POINT_PROTECTED when anything protects it
    unprotect(vault, point)                                  # every record of the point removed
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.locks import flocked
from controller.vault import layout
from controller.vault.exceptions import ManifestInvalid, PathEscape, PointNotFound, PointProtected, VaultError
from controller.vault.manifest import RecoveryPoint, fsync_dir, read_manifest, write_file_durable
from controller.vault.verdicts import boot_checked_ok, verified_ok

if TYPE_CHECKING:
    from controller.vault.vault import Vault

PROTECT_VERSION = 1
_ID_LEN = len("20261125T101500Z-3fa9c1")


@dataclass
class Protection:
    """One record: who protects which point, and why."""

    vm_uuid: str
    point_id: str
    holder: str = "user"  # user (`vault protect`) | policy (protect_newest)
    reason: str = ""
    policy: str | None = None  # the policy whose protect_newest wrote it (holder policy)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = PROTECT_VERSION

    def describe(self) -> str:
        """One line for people, e.g. 'protected (user): before the upgrade'."""
        if self.holder == "policy":
            return f"protected (policy {self.policy}): {self.reason}"
        return f"protected (user){': ' + self.reason if self.reason else ''}"

    def to_dict(self) -> dict[str, Any]:
        """JSON view (the record's content)."""
        return asdict(self)

    @classmethod
    def from_file(cls, path: Path) -> Protection:
        """Read a record; VAULT_ERROR if it cannot be read (it still protects: see records)."""
        try:
            d = json.loads(path.read_text())
            if d.get("version") != PROTECT_VERSION:
                raise ValueError(f"unknown protection record version {d.get('version')!r}")
            return cls(**d)
        except (OSError, ValueError, TypeError) as e:
            raise VaultError(f"cannot read the protection record {path}: {e}") from e


def _record_files(root: Path, vm_uuid: str) -> list[Path]:
    """The VM directory's .protect-*.json files (none when it has no directory)."""
    try:
        vd = layout.vm_dir(root, vm_uuid)
    except PathEscape:
        return []
    if not vd.is_dir():
        return []
    return sorted(p for p in vd.iterdir() if p.name.startswith(layout.PROTECT_PREFIX) and p.suffix == ".json")


def _parse_name(vm_uuid: str, path: Path) -> tuple[str, str] | None:
    """(point id, holder) named by a record's file name, or None for a foreign file."""
    rest = path.name[len(layout.PROTECT_PREFIX) : -len(".json")]
    point_id, holder = rest[:_ID_LEN], rest[_ID_LEN:].removeprefix("-") or "user"
    if not layout.POINT_ID_RE.fullmatch(point_id) or holder not in layout.PROTECT_HOLDERS:
        return None
    return point_id, holder


def records(root: Path, vm_uuid: str) -> dict[str, list[Protection]]:
    """point id -> the records that protect it directly; an unreadable record protects with reason 'unreadable'."""
    out: dict[str, list[Protection]] = {}
    for path in _record_files(root, vm_uuid):
        named = _parse_name(vm_uuid, path)
        if named is None:
            continue
        point_id, holder = named
        try:
            rec = Protection.from_file(path)
            rec.point_id, rec.holder = point_id, holder  # the name is what counts
        except VaultError as e:
            rec = Protection(vm_uuid, point_id, holder, f"unreadable protection record ({e.message})")
        out.setdefault(point_id, []).append(rec)
    return out


def _parents(root: Path, vm_uuid: str) -> dict[str, str | None]:
    """point id -> the point it is built on (None: a full), for every point directory of the VM: hidden ones too
    (being merged, soft-deleted), which Vault.list_points skips; an unreadable manifest counts as a full."""
    vd = layout.vm_dir(root, vm_uuid)
    out: dict[str, str | None] = {}
    for pd in sorted(vd.iterdir()) if vd.is_dir() else []:
        if layout.POINT_ID_RE.fullmatch(pd.name) and pd.is_dir() and not pd.is_symlink():
            try:
                out[pd.name] = read_manifest(pd).parent
            except ManifestInvalid:
                out[pd.name] = None
    return out


def implied(direct: dict[str, list[str]], parents: dict[str, str | None]) -> dict[str, list[str]]:
    """point id -> every reason it is protected: its own, and 'parent of protected point X' for each protected
    point built on it (directly or through others). Pure: ``direct`` maps point ids to their own reasons."""
    out: dict[str, list[str]] = {pid: list(why) for pid, why in direct.items() if why}
    for pid in sorted(p for p, why in direct.items() if why):
        cur, seen = parents.get(pid), {pid}
        while cur is not None and cur not in seen:
            seen.add(cur)
            out.setdefault(cur, []).append(f"protected: parent of protected point {pid}")
            cur = parents.get(cur)
    return out


def protectors(vault: Vault, vm_uuid: str, point_id: str | None = None) -> dict[str, list[str]]:
    """point id -> why it is protected (direct records and implicit chain parents), for one VM's points (or only
    point_id's entry)."""
    direct = {pid: [r.describe() for r in recs] for pid, recs in records(vault.root, vm_uuid).items()}
    if not direct:
        return {}
    allp = implied(direct, _parents(vault.root, vm_uuid))
    return allp if point_id is None else {point_id: allp[point_id]} if point_id in allp else {}


def refuse_if_protected(vault: Vault, vm_uuid: str, point_id: str | None, what: str) -> None:
    """POINT_PROTECTED when point_id is protected, directly or as a parent of a protected point (point_id None:
    when any point of the VM is, e.g. before `unprotect --delete-data` changes anything)."""
    found = protectors(vault, vm_uuid, point_id)
    if not found:
        return
    if point_id is not None:
        raise PointProtected(
            f"cannot {what} point {point_id}: {'; '.join(found[point_id])} (unprotect it first: "
            f"`vmbackup vault unprotect POINT`)",
            details={"point_id": point_id, "vm_uuid": vm_uuid, "protected_by": found[point_id]},
        )
    listed = "; ".join(f"{pid}: {', '.join(why)}" for pid, why in sorted(found.items()))
    raise PointProtected(
        f"cannot {what}: {len(found)} point(s) of VM {vm_uuid} are protected ({listed}); unprotect them first "
        "(`vmbackup vault unprotect POINT`); nothing was changed",
        details={"vm_uuid": vm_uuid, "protected": found},
    )


def protect(vault: Vault, point: RecoveryPoint, reason: str = "") -> Protection:
    """Protect a published point (the user's record; written durably). Protecting it again updates the reason.

    Holds the VM's vault lock (the one delete, merge and backups hold; it waits for them), so a delete that has
    already checked the point never removes it after this returns: a point deleted meanwhile is POINT_NOT_FOUND.
    """
    with flocked(layout.vm_dir(vault.root, point.vm_uuid), directory=True):
        if not vault.point_path(point).is_dir():
            raise PointNotFound(f"no recovery point {point.point_id} for VM {point.vm_uuid}")
        rec = Protection(point.vm_uuid, point.point_id, "user", reason)
        _write(vault.root, rec)
    return rec


def unprotect(vault: Vault, point: RecoveryPoint) -> list[Protection]:
    """Remove every record of the point (the user's and the policy's); the records removed. A policy's record
    comes back at the next prune while the point is still among the policy's newest N good points."""
    gone = records(vault.root, point.vm_uuid).get(point.point_id, [])
    for rec in gone:
        _remove(vault.root, point.vm_uuid, point.point_id, rec.holder)
    return gone


def _write(root: Path, rec: Protection) -> None:
    """Write a record durably."""
    path = layout.protect_path(root, rec.vm_uuid, rec.point_id, rec.holder)
    write_file_durable(path, (json.dumps(rec.to_dict(), indent=2, sort_keys=True) + "\n").encode())


def _remove(root: Path, vm_uuid: str, point_id: str, holder: str) -> None:
    """Remove one record durably (absent: nothing to do)."""
    path = layout.protect_path(root, vm_uuid, point_id, holder)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


def newest_good(points: Iterable[RecoveryPoint], n: int) -> list[RecoveryPoint]:
    """The newest n good points of one VM, newest first: not known bad (failed verify or boot-check), and not
    CRASH-consistent unless the VM has no sound non-CRASH point at all (a VM backed up shut off or without a
    quiescer: its CRASH points are its good ones)."""
    if n <= 0:
        return []
    ordered = sorted(points, key=lambda p: p.point_id, reverse=True)
    sound = [p for p in ordered if verified_ok(p.manifest) is not False and boot_checked_ok(p.manifest) is not False]
    better = [p for p in sound if p.manifest.consistency != "CRASH"]
    return (better or sound)[:n]


def policy_reason(n: int) -> str:
    """The reason a policy record gives."""
    return f"one of the newest {n} good points (protect_newest)"


def sync_policy(vault: Vault, vm_uuid: str, policy: str | None, n: int) -> tuple[list[str], list[str]]:
    """Make the VM's policy records protect exactly its newest n good points (none when n is 0 or policy None);
    returns (protected, unprotected) point ids. The user's records are never touched."""
    want = {p.point_id for p in newest_good(vault.list_points(vm_uuid), n)} if policy else set()
    have = {r.point_id: r for recs in records(vault.root, vm_uuid).values() for r in recs if r.holder == "policy"}
    for pid in sorted(want):
        old = have.get(pid)
        if old is None or (old.policy, old.reason) != (policy, policy_reason(n)):
            _write(vault.root, Protection(vm_uuid, pid, "policy", policy_reason(n), policy))
    for pid in sorted(set(have) - want):
        _remove(vault.root, vm_uuid, pid, "policy")
    return sorted(want - set(have)), sorted(set(have) - want)
