"""`vmbackup unprotect VM (--retain-data | --delete-data [--yes])`: stop protecting a VM."""

from __future__ import annotations

import argparse
import sys

from controller.cli import output
from controller.policies.exceptions import ConfirmationRequired
from controller.state import open_state


def _confirm(vm: str) -> bool:
    """Ask on a terminal before deleting a VM's points."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"Delete ALL recovery points of {vm}? This cannot be undone. Type 'yes': ")
    return answer.strip().lower() == "yes"


def run(args: argparse.Namespace) -> int:
    """Stop the schedule; keep the points (retain) or delete them (after confirmation)."""
    from controller.policies.protect import ProtectionService  # imports the job store only when needed

    if args.delete_data and not args.yes and not _confirm(args.vm):
        raise ConfirmationRequired(f"not deleting the recovery points of {args.vm} without confirmation")
    with open_state() as st, ProtectionService(st) as svc:
        out = svc.unprotect(args.vm, delete_data=args.delete_data)
    if args.json:
        output.print_json(out.to_dict())
    elif out.mode == "retain":
        print(f"{out.vm_name}: unprotected; its points are retained and never pruned  [job {out.job_id}]")
    else:
        n = len(out.deleted_points)
        print(f"{out.vm_name}: unprotected; deleted {n} recovery point(s)  [job {out.job_id}]")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `unprotect`."""
    p = sub.add_parser("unprotect", help="stop protecting a VM, retaining or deleting its recovery points")
    p.add_argument("vm", metavar="VM", help="VM name or uuid")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--retain-data", action="store_true", help="keep the points (retention never deletes them)"
    )
    mode.add_argument("--delete-data", action="store_true", help="delete every recovery point of the VM")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting")
    output.add_json_flag(p)
    p.set_defaults(func=run)
