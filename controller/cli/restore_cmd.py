"""`vmbackup restore POINT`: as a new VM (--as), disks only (--disks-only --to) or into a VM (--replace)."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller import settings as settings_mod
from controller.cli import output
from controller.errors import InvalidArgument


def run(args: argparse.Namespace) -> int:
    """Dispatch to the restore mode the flags ask for."""
    from controller.restore.restore import Restorer

    modes = [bool(args.as_name), bool(args.disks_only), bool(args.replace)]
    if sum(modes) != 1:
        raise InvalidArgument("choose exactly one of --as NEW_NAME, --disks-only --to DIR, --replace VM")
    r = Restorer(settings_mod.load())
    if args.as_name:
        pool = Path(args.pool_dir) if args.pool_dir else None
        res = r.restore_as_new(args.point, args.as_name, args.host, pool, start=args.start)
    elif args.disks_only:
        if not args.to:
            raise InvalidArgument("--disks-only needs --to DIR")
        res = r.restore_disks(args.point, Path(args.to))
    else:
        res = r.restore_replace(args.point, args.replace, args.host, keep_old=args.keep_old)
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
    p.add_argument("--keep-old", action="store_true", help="with --replace: keep the previous disk files")
    output.add_json_flag(p)
    p.set_defaults(func=run)
