"""`vmbackup prune [VM] [--dry-run] [--json]`: apply retention to the vault (a prune job per VM).

A pruned point that a kept incremental is built on is merged into its child: the action says "merge into C"."""

from __future__ import annotations

import argparse

from controller.cli import output
from controller.cli.points_cmd import require_known_vm
from controller.state import open_state


def run(args: argparse.Namespace) -> int:
    """Prune (or with --dry-run, show what would be pruned)."""
    from controller.scheduling.prune import prune  # imports the job store only when needed

    with open_state() as st:
        reports = prune(st, vm=args.vm, dry_run=args.dry_run)
    if args.vm and not reports:
        require_known_vm(args.vm)
    if args.json:
        output.print_json([r.to_dict() for r in reports])
        return 0
    rows = []
    for r in reports:
        if r.skipped:
            rows.append([r.vm_name, r.policy or "-", "", "", "skipped: " + r.skipped])
            continue
        assert r.selection is not None
        for v in r.selection.keep:
            rows.append([r.vm_name, r.policy or "-", v.point.id, "keep", ", ".join(v.reasons)])
        for v in r.selection.prune:
            into = v.merge_into if args.dry_run else r.merged.get(v.point.id)
            if into:
                action = f"{'would merge' if args.dry_run else 'merged'} into {into}"
            else:
                action = "would prune" if args.dry_run else "pruned"
            rows.append([r.vm_name, r.policy or "-", v.point.id, action, ", ".join(v.reasons)])
    title = "prune (dry run: nothing deleted or merged)" if args.dry_run else "prune"
    empty = "nothing to prune: no VM has points in the vault"
    output.table(title, ["VM", "policy", "point", "action", "why"], rows, empty=empty)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `prune`."""
    p = sub.add_parser(
        "prune",
        help="delete recovery points that the VMs' retention no longer keeps",
        epilog=output.examples("vmbackup prune --dry-run", "vmbackup prune web1"),
    )
    p.add_argument("vm", nargs="?", metavar="VM", help="only this VM (name or uuid)")
    p.add_argument("--dry-run", "-n", action="store_true", help="show what would be deleted or merged, change nothing")
    output.add_json_flag(p)
    p.set_defaults(func=run)
