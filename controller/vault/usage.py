"""`vault usage` broken down: per VM (Vault.usage), per chain (a full and the incrementals built on it), and the
soft-deleted points' bytes.

A chain is named by its full point; every point directory of the VM is placed by following its manifest's parent
up to a full (a point whose parent is not in the vault roots its own chain). Per chain: its
published points and their bytes, how many are protected (protect.py), and what its soft-deleted points hold.
Soft-deleted bytes come from Vault.usage's ``deleted_bytes`` / ``deleted_points`` (recycle.py's tombstones). Usage::

    u = breakdown(Vault())
    u["vms"][uuid]["chains"]   # [{"full", "newest", "points", "bytes", "deleted_points", "deleted_bytes", ...}]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.vault import layout, protect
from controller.vault.exceptions import ManifestInvalid, PathEscape
from controller.vault.manifest import read_manifest
from controller.vault.recycle import is_deleted
from controller.vault.vault import Vault, _du


@dataclass
class Chain:
    """One chain of a VM: its full and the incrementals built on it."""

    full: str  # the chain's full point (its root)
    newest: str  # its newest point
    points: int = 0  # published points (soft-deleted ones aside)
    bytes: int = 0  # bytes those hold
    deleted_points: int = 0  # soft-deleted points still in the chain (their files back later points)
    deleted_bytes: int = 0
    protected: int = 0  # published points that are protected (directly or as a parent)


def chains(vault: Vault, vm_uuid: str) -> list[Chain]:
    """The VM's chains, newest full first."""
    vd = layout.vm_dir(vault.root, vm_uuid)
    parent: dict[str, str | None] = {}
    dirs: dict[str, Path] = {}
    for pd in sorted(vd.iterdir()) if vd.is_dir() else []:
        if layout.POINT_ID_RE.fullmatch(pd.name) and pd.is_dir() and not pd.is_symlink():
            dirs[pd.name] = pd
            try:
                parent[pd.name] = read_manifest(pd).parent
            except ManifestInvalid:
                parent[pd.name] = None
    prot = protect.protectors(vault, vm_uuid)
    out: dict[str, Chain] = {}
    for pid in sorted(dirs):
        root, seen = pid, {pid}
        while (up := parent.get(root)) is not None and up in dirs and up not in seen:
            root = up
            seen.add(up)
        c = out.setdefault(root, Chain(full=root, newest=pid))
        c.newest = max(c.newest, pid)
        n = _du(dirs[pid])
        if is_deleted(vault.root, vm_uuid, pid):
            c.deleted_points, c.deleted_bytes = c.deleted_points + 1, c.deleted_bytes + n
        else:
            c.points, c.bytes = c.points + 1, c.bytes + n
            c.protected += pid in prot
    return sorted(out.values(), key=lambda c: c.full, reverse=True)


def breakdown(vault: Vault) -> dict[str, Any]:
    """Vault.usage() (per VM, soft-deleted bytes apart) plus, per VM, its chains."""
    u = vault.usage()
    for uuid, entry in u["vms"].items():
        try:
            entry["chains"] = [asdict(c) for c in chains(vault, uuid)]
        except PathEscape:
            entry["chains"] = []
    return u
