"""`vmbackup restore POINT`: as a new VM (--as [--instant]), disks only (--disks-only --to) or into a VM (--replace).

`vmbackup restore list` shows the VMs running on vault points (instant restores, boot-checks) and
`vmbackup restore finish NAME [--pool-dir DIR]` moves an instant VM's storage out of the vault.
Progress goes to stderr (so --json output stays clean).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from controller.cli import output, phases
from controller.errors import InvalidArgument
from controller.restore.exceptions import ConfirmationRequired
from controller.state import open_state


def run(args: argparse.Namespace) -> int:
    """Dispatch to the restore mode the flags ask for."""
    from controller.restore.restore import Restorer

    if args.point in ("list", "finish"):
        return _instant_admin(args)
    if args.name:
        raise InvalidArgument(f"unexpected argument {args.name!r} (only `restore finish NAME` takes a second one)")
    if args.instant and not args.as_name:
        raise InvalidArgument("--instant needs --as NEW_NAME (it restores a new VM that runs from the vault)")
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
    with open_state() as st, Restorer(st, progress=_progress(args)) as r, phases.shown(not args.json):
        if args.as_name:
            pool = Path(args.pool_dir) if args.pool_dir else None
            res = r.restore_as_new(args.point, args.as_name, args.host, pool, start=args.start, instant=args.instant)
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
    if res.mode in ("new-vm", "instant"):
        fwd = ", ".join(f"guest {g} -> 127.0.0.1:{h}" for g, h in sorted(res.ports.items())) or "none"
        state = "started" if res.started else "defined (not started)"
        output.console.print(f"VM {res.vm_name} ({res.vm_uuid}) {state}; forwards: {fwd}", markup=False)
        if res.ssh_command:
            output.console.print(f"SSH: {res.ssh_command}", markup=False, highlight=False)
        if res.agent_endpoint:
            output.console.print(f"agent: {res.agent_endpoint}", markup=False, highlight=False)
        output.console.print(f"console log: {res.console_log}", markup=False, highlight=False)
    if res.mode == "instant":
        output.console.print(
            f"runs from vault point {res.point_id} (pinned): `vmbackup restore finish {res.vm_name}` moves it out",
            markup=False,
            highlight=False,
        )
    for w in res.warnings:
        output.console.print(f"warning: {w}")
    output.console.print(f"{res.bytes_copied / 2**20:.1f} MiB in {res.duration_s:.1f} s")
    return 0


def _instant_admin(args: argparse.Namespace) -> int:
    """`restore list` and `restore finish NAME`."""
    from controller.restore import instant
    from controller.restore.restore import Restorer

    if args.point == "finish" and not args.name:
        raise InvalidArgument("restore finish needs the instant VM's NAME (see `vmbackup restore list`)")
    if args.point == "list" and args.name:
        raise InvalidArgument("restore list takes no NAME")
    with open_state() as st, Restorer(st, progress=_progress(args)) as r, phases.shown(not args.json):
        if args.point == "list":
            rows = instant.list_instant(r)
            if args.json:
                output.print_json(rows)
            else:
                cols = ["name", "purpose", "point", "state", "since", "overlays"]
                cells = [
                    (x["name"], x["purpose"], x["point_id"], x["state"], x["created"],
                     ", ".join(dict(x["overlays"]).values()))  # type: ignore[call-overload]
                    for x in rows
                ]  # fmt: skip
                empty = "no VMs run on vault points: vmbackup restore POINT --as NAME --instant starts one"
                output.table("VMs running on vault points", cols, cells, empty=empty)
            return 0
        pool = Path(args.pool_dir) if args.pool_dir else None
        res = instant.finish(r, args.name, pool)
    if args.json:
        output.print_json(res.to_dict())
        return 0
    what = {"none": "the VM is gone; its pin was dropped"}.get(res.method, f"{res.method} ({res.state})")
    output.console.print(f"{res.vm_name}: off the vault point {res.point_id}: {what}", markup=False)
    for t, f in res.disks.items():
        output.console.print(f"  {t}: {f}", markup=False, highlight=False)
    output.console.print(f"done in {res.duration_s:.1f} s")
    return 0


def _progress(args: argparse.Namespace) -> Callable[[str, int, int], None]:
    """A per-disk progress line on stderr (at most twice a second per disk, and at the end)."""
    last: dict[str, float] = {}

    def show(target: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last.get(target, 0.0) < 0.5:
            return
        last[target] = now
        pct = 100.0 * done / total if total else 100.0
        output.err_console.print(
            f"  {target}: {pct:5.1f} % ({done / 2**20:.0f}/{total / 2**20:.0f} MiB)", markup=False, highlight=False
        )

    return show


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
    p = sub.add_parser(
        "restore",
        help="restore a point as a new VM, as disk images, or into a VM; `restore list`, `restore finish NAME`",
        epilog=output.examples(
            "vmbackup restore 20261129T160102Z-3fa9c1 --as web1-copy --start",
            "vmbackup restore 20261129T160102Z-3fa9c1 --as web1-now --instant --start",
            "vmbackup restore finish web1-now",
            "vmbackup restore list",
            "vmbackup restore 20261129T160102Z-3fa9c1 --disks-only --to /srv/web1-disks",
            "vmbackup restore 20261129T160102Z-3fa9c1 --replace web1 --yes",
        ),
    )
    p.add_argument(
        "point", metavar="POINT", help="recovery point id (see `vmbackup points`), or `list`, or `finish NAME`"
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="with finish: the instant-restored VM")
    # the three modes exclude each other: argparse refuses two of them (a usage error, exit 2); none is checked in run()
    modes = p.add_argument_group("restore mode (exactly one, except for `restore list` and `restore finish NAME`)")
    mode = modes.add_mutually_exclusive_group()
    mode.add_argument("--as", dest="as_name", metavar="NEW_NAME", help="create a new VM with this name")
    mode.add_argument("--disks-only", action="store_true", help="only copy out the verified disk images (needs --to)")
    mode.add_argument("--replace", metavar="VM", help="put the point's disks back into this shut-off VM")
    p.add_argument(
        "--instant",
        action="store_true",
        help="with --as: no copy, the VM runs from the vault point through overlays (pinned until `restore finish`)",
    )
    p.add_argument("--host", metavar="URI", help="libvirt URI of the target host (default VMBACKUP_URI)")
    p.add_argument(
        "--pool-dir",
        metavar="DIR",
        help="where the new VM's disks go (default $VMBACKUP_HOME/restored/NAME); with finish: move a shut-off "
        "VM's disks here",
    )
    p.add_argument("--start", action="store_true", help="with --as: start the new VM after defining it")
    p.add_argument("--to", metavar="DIR", help="with --disks-only: the destination directory (new or empty)")
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
