"""`vmbackup recover`: what every controller start does, on demand: put back VMs left by a dead controller.

For each backup whose controller died: thaw the guest if it may still be frozen, merge its overlays back into the
original disks, remove the partial recovery point, and mark the job failed (CONTROLLER_RESTARTED).
"""

from __future__ import annotations

import argparse
import dataclasses

from controller.backup.recovery import recover
from controller.cli import output
from controller.state import open_state


def run(args: argparse.Namespace) -> int:
    """Run one recovery pass and report what it did."""
    with open_state() as st:
        report = recover(st)
    if args.json:
        output.print_json(dataclasses.asdict(report))
    else:
        for field in dataclasses.fields(report):
            items = getattr(report, field.name)
            if items:
                output.console.print(f"{field.name.replace('_', ' ')}: {', '.join(items)}")
        if not any(dataclasses.astuple(report)):
            output.console.print("nothing to recover")
    return 1 if report.errors else 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `recover`."""
    p = sub.add_parser(
        "recover",
        help="finish or undo backups interrupted by a controller crash",
        epilog=output.examples("vmbackup recover", "vmbackup recover --json"),
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)
