"""`vmbackup unprotect VM (--retain-data | --delete-data [--yes])`: stop protecting a VM."""

from __future__ import annotations

import argparse
import sys

from controller import settings
from controller.cli import output
from controller.policies.exceptions import ConfirmationRequired
from controller.state import open_state


def _confirm(vm: str, days: int) -> bool:
    """Ask on a terminal before deleting a VM's points."""
    if not sys.stdin.isatty():
        return False
    undo = f"They are kept {days} day(s) (`vmbackup vault undelete`), then purged" if days else "This cannot be undone"
    answer = input(f"Delete ALL recovery points of {vm}? {undo}. Type 'yes': ")
    return answer.strip().lower() == "yes"


def run(args: argparse.Namespace) -> int:
    """Stop the schedule; keep the points (retain) or delete them (after confirmation)."""
    from controller.policies.protect import ProtectionService  # imports the job store only when needed

    days = settings.load().soft_delete_days  # soft delete (controller/vault/recycle.py); 0: deleted at once
    if args.delete_data and not args.yes and not _confirm(args.vm, days):
        raise ConfirmationRequired(f"not deleting the recovery points of {args.vm} without confirmation")
    with open_state() as st, ProtectionService(st) as svc:
        out = svc.unprotect(args.vm, delete_data=args.delete_data)
    if args.json:
        output.print_json(out.to_dict())
    elif out.mode == "retain":
        print(f"{out.vm_name}: unprotected; its points are retained and never pruned  [job {out.job_id}]")
    else:
        n = len(out.deleted_points)
        soft = f"soft-deleted {n} recovery point(s), purged after {days} day(s)" if days else f"deleted {n} point(s)"
        print(f"{out.vm_name}: unprotected; {soft}  [job {out.job_id}]")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `unprotect`."""
    p = sub.add_parser(
        "unprotect",
        help="stop protecting a VM, retaining or deleting its recovery points",
        epilog=output.examples("vmbackup unprotect web1 --retain-data", "vmbackup unprotect web1 --delete-data --yes"),
    )
    p.add_argument("vm", metavar="VM", help="VM name or uuid")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--retain-data", action="store_true", help="keep the points (retention never deletes them)"
    )
    mode.add_argument("--delete-data", action="store_true", help="delete every recovery point of the VM")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting")
    output.add_json_flag(p)
    p.set_defaults(func=run)
