"""`vmbackup protect VM... --policy NAME [--now]` and `vmbackup protect --list`: bind VMs to a policy."""

from __future__ import annotations

import argparse

from controller.cli import output
from controller.errors import InvalidArgument
from controller.policies import store
from controller.state import open_state


def run_list(args: argparse.Namespace) -> int:
    """Every protection row with its status."""
    rows = []
    with open_state() as st:
        for p in store.list_protections(st.db):
            n = len(st.vault.list_points(p.vm_uuid))
            rows.append({**p.to_dict(), "points": n, "status": store.status_text(p, n)})
    if args.json:
        output.print_json(rows)
        return 0
    output.table(
        "protections",
        ["VM", "uuid", "policy", "status", "points", "since"],
        [[r["vm_name"], r["vm_uuid"], r["policy"], r["status"], r["points"], r["since"]] for r in rows],
        empty="no VMs protected yet: vmbackup protect VM --policy NAME (vmbackup policy list shows the policies)",
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Protect the VMs (one configure-protection job each), optionally backing them up now."""
    if args.list:
        return run_list(args)
    if not args.vms or not args.policy:
        raise InvalidArgument("give one or more VMs and --policy NAME (or --list)")
    from controller.policies.protect import ProtectionService  # imports the job store only when needed

    with open_state() as st, ProtectionService(st) as svc:
        outcomes = svc.protect(args.vms, args.policy, now=args.now)
    if args.json:
        output.print_json([o.to_dict() for o in outcomes])
    else:
        for o in outcomes:
            change = "" if o.change == "new" else f" ({o.change})"
            print(f"{o.vm_name}: protected by {o.policy}{change}; {o.status}  [job {o.job_id}]")
            if o.backup_point:
                print(f"  initial backup: point {o.backup_point}")
            if o.backup_error:
                print(f"  initial backup FAILED: {o.backup_error['code']}: {o.backup_error['message']}")
    return 1 if any(o.backup_error for o in outcomes) else 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `protect`."""
    p = sub.add_parser(
        "protect",
        help="protect registered VMs with a policy (a VM has at most one policy)",
        epilog=output.examples("vmbackup protect web1 db1 --policy gold --now", "vmbackup protect --list"),
    )
    p.add_argument("vms", nargs="*", metavar="VM", help="VM names or uuids (must be registered)")
    p.add_argument("--policy", help="policy name (rebinding a protected VM replaces its policy)")
    p.add_argument("--now", action="store_true", help="start the initial backup right away")
    p.add_argument("--list", action="store_true", help="list protected VMs and their status")
    output.add_json_flag(p)
    p.set_defaults(func=run)
