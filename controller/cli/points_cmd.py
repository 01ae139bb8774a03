"""`vmbackup points [VM] [--json]`: the recovery points in the vault, newest first.

The consistency column names the quiescer that froze the guest: "FILE_SYSTEM (qga)", "APPLICATION (agent)"
(none named: a shut-off VM, or a point older than the manifest's ``quiescer`` field).

The type column is "full", or for an incremental "incr", its chain depth and the bytes that changed since its
parent (its disks' ``changed_bytes``): "incr 2, +160.0 MiB"; the parent column names the point it is built on.
--json adds ``changed_bytes`` (null for a full) to the manifest's own ``type``, ``parent`` and ``chain_depth``.
The protected column is "yes" for a protected point (`vault protect`, the policy's protect_newest) and "chain" for
a point a protected one is built on; --json adds ``protected`` (bool) and ``protected_by`` (the reasons).
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import output
from controller.vault import RecoveryPoint, Vault, protect


def human_size(n: int) -> str:
    """Bytes as a short human size."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _boot_check(p: RecoveryPoint) -> str:
    """The boot-check column: its result, or '-' when none ran yet."""
    bc = p.manifest.boot_check
    if not bc:
        return "-"
    return str(bc.get("result") or bc.get("status") or bc)


def matches(p: RecoveryPoint, vm: str | None) -> bool:
    """True when vm is None or names the point's VM (by uuid, case-insensitive, or by name)."""
    return vm is None or vm.lower() == p.vm_uuid or vm == p.vm_name


def changed_bytes(p: RecoveryPoint) -> int | None:
    """Bytes the point's incremental disks changed since the parent (None for a full point)."""
    incr = [d.changed_bytes or 0 for d in p.manifest.disks if d.kind == "incremental"]
    return sum(incr) if incr else None


def _chain(p: RecoveryPoint) -> list[str]:
    """The type ("full" | "incr <depth>, +<changed>") and parent columns."""
    m = p.manifest
    if m.type != "incremental":
        return ["full", "-"]
    return [f"incr {m.chain_depth}, +{human_size(changed_bytes(p) or 0)}", m.parent or "?"]


def protected_by(v: Vault, points: list[RecoveryPoint]) -> dict[str, list[str]]:
    """point id -> why it is protected (empty: not protected), for the VMs of the points listed."""
    out: dict[str, list[str]] = {}
    for vm_uuid in sorted({p.vm_uuid for p in points}):
        out.update(protect.protectors(v, vm_uuid))
    return out


def _marker(why: list[str]) -> str:
    """The protected column: yes (its own protection), chain (a protected point is built on it) or -."""
    if not why:
        return "-"
    return "chain" if all("parent of protected point" in w for w in why) else "yes"


def _row(p: RecoveryPoint) -> list[Any]:
    """One table row."""
    m = p.manifest
    freeze = "-" if m.freeze_window_ms is None else f"{m.freeze_window_ms:.0f}"
    guest = "-" if m.guest_frozen_ms is None else f"{m.guest_frozen_ms:.0f}"
    disks = ",".join(d.target for d in m.disks)
    return [
        p.point_id,
        m.vm_name or m.vm_uuid,
        m.created,
        f"{m.consistency} ({m.quiescer})" if m.quiescer else m.consistency,
        *_chain(p),
        freeze,
        guest,
        disks,
        human_size(p.stored_bytes),
        _boot_check(p),
    ]


def run(args: argparse.Namespace) -> int:
    """List points, optionally only one VM's (--deleted: the soft-deleted ones, vault_recycle.py)."""
    if args.deleted:
        from controller.cli.vault_recycle import run_deleted

        return run_deleted(args)
    v = Vault()
    points = [p for p in v.list_points() if matches(p, args.vm)]
    if args.vm and not points:
        require_known_vm(args.vm)
    prot = protected_by(v, points)
    if args.json:
        output.print_json([
            {**p.to_dict(), "changed_bytes": changed_bytes(p), "protected": bool(prot.get(p.point_id)),
             "protected_by": prot.get(p.point_id, [])}
            for p in points
        ])  # fmt: skip
        return 0
    columns = ["point", "VM", "time (UTC)", "consistency", "type", "parent", "freeze ms", "guest frozen ms",
               "disks", "size", "boot-check", "protected"]
    rows = [[*_row(p), _marker(prot.get(p.point_id, []))] for p in points]
    empty = f"no points of {args.vm} yet: vmbackup backup {args.vm}" if args.vm else "no points yet: vmbackup backup VM"
    output.table(f"recovery points{f' of {args.vm}' if args.vm else ''}", columns, rows, empty=empty)
    return 0


def require_known_vm(vm: str) -> None:
    """Raise UnknownVm unless the inventory knows vm (name or UUID); a VM with points in the vault is known too
    (callers check the vault first: a deleted VM's points stay listable)."""
    from controller.inventory.exceptions import UnknownVm
    from controller.inventory.store import find_vm
    from controller.state import open_state

    with open_state() as st:
        if find_vm(st.db, vm) is None:
            raise UnknownVm(f"no VM {vm!r} in the inventory or the vault")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `points`."""
    p = sub.add_parser(
        "points",
        help="list recovery points in the vault (newest first)",
        epilog=output.examples("vmbackup points", "vmbackup points web1 --json", "vmbackup points --deleted"),
    )
    p.add_argument("vm", nargs="?", metavar="VM", help="only this VM (name or uuid; default: every VM)")
    p.add_argument("--deleted", action="store_true", help="list the soft-deleted points (`vmbackup vault undelete`)")
    output.add_json_flag(p)
    p.set_defaults(func=run)
