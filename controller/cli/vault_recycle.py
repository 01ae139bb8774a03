"""Soft-deleted points on the command line (controller/vault/recycle.py): `vmbackup points --deleted`,
`vmbackup vault undelete POINT` and `vmbackup vault purge [--now]`; registered by points_cmd.py and vault_cmd.py."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from controller.cli import output
from controller.cli.points_cmd import human_size
from controller.vault import Vault, recycle


def run_deleted(args: argparse.Namespace) -> int:
    """`points --deleted [VM]`: the soft-deleted points, newest first, with when and by whom, and when purged."""
    vm = args.vm
    rows = [
        d for d in recycle.list_deleted(Vault())
        if vm is None or vm.lower() == d.vm_uuid or (d.point is not None and vm == d.point.vm_name)
    ]  # fmt: skip
    if args.json:
        output.print_json([d.to_dict() for d in rows])
        return 0
    table = []
    for d in rows:
        t = d.tombstone
        name = d.point.vm_name if d.point is not None else d.vm_uuid
        when = [t.deleted_at, t.by, t.purge_after] if t else ["?", "?", "?"]
        table.append([d.point_id, name, *when, human_size(d.stored_bytes), d.error or "-"])
    columns = ["point", "VM", "deleted at (UTC)", "by", "purged after (UTC)", "size", "problem"]
    output.table(f"soft-deleted points{f' of {vm}' if vm else ''}", columns, table)
    print(f"{len(rows)} soft-deleted point(s), {human_size(sum(d.stored_bytes for d in rows))}; "
          "`vmbackup vault undelete POINT` brings one back")  # fmt: skip
    return 0


def run_undelete(args: argparse.Namespace) -> int:
    """`vault undelete POINT`: bring a soft-deleted point back (UNDELETE_REFUSED when it was purged)."""
    p = recycle.undelete(Vault(), args.point)
    if args.json:
        output.print_json({"point_id": p.point_id, "vm_uuid": p.vm_uuid, "vm_name": p.vm_name, "undeleted": True})
    else:
        print(f"point {p.point_id} of {p.vm_name or p.vm_uuid} is back (listed and restorable again)")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    """`vault purge [--now]`: delete for real the soft-deleted points that are due (every one with --now)."""
    report = recycle.purge(Vault(), now=datetime.now(UTC), everything=args.now)
    if args.json:
        output.print_json(report.to_dict())
        return 1 if report.skipped else 0
    for pid in report.purged:
        into = report.merged.get(pid)
        print(f"purged point {pid}" + (f" (merged into its child {into})" if into else ""))
    for pid, why in report.skipped.items():
        print(f"not purged: {pid}: {why}")
    print(f"{len(report.purged)} purged, {len(report.skipped)} not purged, {report.waiting} not due yet")
    return 1 if report.skipped else 0


def add_subparsers(vs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `vault undelete` and `vault purge` on the `vault` subparsers."""
    und = vs.add_parser(
        "undelete",
        help="bring back a soft-deleted point (`vmbackup points --deleted`)",
        epilog=output.examples("vmbackup points --deleted", "vmbackup vault undelete 20261129T160102Z-3fa9c1"),
    )
    und.add_argument("point", metavar="POINT", help="the point id (`vmbackup points --deleted`)")
    output.add_json_flag(und)
    und.set_defaults(func=run_undelete)
    pur = vs.add_parser(
        "purge",
        help="delete for real the soft-deleted points past their purge time",
        epilog=output.examples("vmbackup vault purge", "vmbackup vault purge --now"),
    )
    pur.add_argument("--now", action="store_true", help="purge every soft-deleted point, due or not")
    output.add_json_flag(pur)
    pur.set_defaults(func=run_purge)
