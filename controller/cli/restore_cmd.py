"""`vmbackup restore POINT`: as a new VM (--as), disks only (--disks-only --to) or into a VM (--replace)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from controller.cli import output
from controller.errors import InvalidArgument
from controller.restore.exceptions import ConfirmationRequired
from controller.state import open_state


def run(args: argparse.Namespace) -> int:
    """Dispatch to the restore mode the flags ask for."""
    from controller.restore.restore import Restorer

    modes = [bool(args.as_name), bool(args.disks_only), bool(args.replace)]
    if sum(modes) != 1:
        raise InvalidArgument("choose exactly one of --as NEW_NAME, --disks-only --to DIR, --replace VM")
    if args.replace and args.keep_old and args.discard_old:
        raise InvalidArgument("--keep-old and --discard-old contradict each other (replaced files are kept by default)")
    if args.replace and not args.yes and not sys.stdin.isatty():
        raise ConfirmationRequired(
            f"restore --replace {args.replace} overwrites that VM's disks and needs a confirmation, "
            "but there is no terminal to ask on; add --yes"
        )
    with open_state() as st, Restorer(st) as r:
        if args.as_name:
            pool = Path(args.pool_dir) if args.pool_dir else None
            res = r.restore_as_new(args.point, args.as_name, args.host, pool, start=args.start)
        elif args.disks_only:
            if not args.to:
                raise InvalidArgument("--disks-only needs --to DIR")
            res = r.restore_disks(args.point, Path(args.to))
        else:
            res = r.restore_replace(
                args.point,
                args.replace,
                args.host,
                discard_old=args.discard_old,
                from_other_vm=args.from_other_vm,
                confirm=_confirmer(args),
            )
    if args.json:
        output.print_json(res.to_dict())
        return 0
    rows = [(t, p) for t, p in res.disks.items()]
    output.table(f"restore {res.point_id} ({res.mode}) job {res.job_id}", ["disk", "file"], rows)
    if res.mode == "new-vm":
        fwd = ", ".join(f"guest {g} -> 127.0.0.1:{h}" for g, h in sorted(res.ports.items())) or "none"
        state = "started" if res.started else "defined (not started)"
        output.console.print(f"VM {res.vm_name} ({res.vm_uuid}) {state}; forwards: {fwd}", markup=False)
        if res.ssh_command:
            output.console.print(f"SSH: {res.ssh_command}", markup=False, highlight=False)
        output.console.print(f"console log: {res.console_log}", markup=False, highlight=False)
    for w in res.warnings:
        output.console.print(f"warning: {w}")
    output.console.print(f"{res.bytes_copied / 2**20:.1f} MiB in {res.duration_s:.1f} s")
    return 0


def _confirmer(args: argparse.Namespace) -> Callable[[str], bool] | None:
    """None with --yes; else a question on the terminal (stderr; only an answer of y/yes goes ahead)."""
    if args.yes:
        return None

    def ask(summary: str) -> bool:
        output.err_console.print(summary, markup=False, highlight=False)  # stderr: keeps --json output clean
        output.err_console.print("Go ahead? [y/N] ", end="", markup=False)
        try:
            answer = input()
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `restore`."""
    p = sub.add_parser("restore", help="restore a recovery point as a new VM, as disk images, or into a VM")
    p.add_argument("point", metavar="POINT", help="recovery point id (see `vmbackup points`)")
    p.add_argument("--as", dest="as_name", metavar="NEW_NAME", help="create a new VM with this name")
    p.add_argument("--host", metavar="URI", help="libvirt URI of the target host (default VMBACKUP_URI)")
    p.add_argument("--pool-dir", metavar="DIR", help="where the new VM's disks go ($VMBACKUP_HOME/restored/NAME)")
    p.add_argument("--start", action="store_true", help="start the new VM after defining it")
    p.add_argument("--disks-only", action="store_true", help="only copy out the verified disk images")
    p.add_argument("--to", metavar="DIR", help="destination directory for --disks-only")
    p.add_argument("--replace", metavar="VM", help="put the point's disks back into this shut-off VM")
    p.add_argument(
        "--discard-old", action="store_true", help="with --replace: delete the replaced disk files (kept by default)"
    )
    p.add_argument("--keep-old", action="store_true", help=argparse.SUPPRESS)  # the default now; still accepted
    p.add_argument(
        "--from-other-vm", action="store_true", help="with --replace: accept a point taken of a different VM"
    )
    p.add_argument("--yes", "-y", action="store_true", help="with --replace: do not ask for confirmation")
    output.add_json_flag(p)
    p.set_defaults(func=run)
