"""`vmbackup backup VM...`: an on-demand backup (one job per VM), with progress on a terminal."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from agent.contract import CONSISTENCY_LEVELS
from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.cli import exitcodes, output, phases
from controller.errors import VmBackupError
from controller.state import open_state
from controller.vault import compress
from controller.vault.manifest import COMPRESSIONS


def chain_line(r: BackupResult) -> str:
    """The point's place in its chain: type, parent, changed bytes, and why a full replaced an incremental."""
    parts = [r.point_type]
    if r.parent:
        parts.append(f"parent {r.parent}")
    if r.changed_bytes is not None:
        parts.append(f"{r.changed_bytes / 2**20:.1f} MiB changed")
    if r.full_reason:
        parts.append(f"full because: {r.full_reason}")
    return ", ".join(parts)


def _print_result(r: BackupResult) -> None:
    """One line per backup, its chain line, plus warnings."""
    window = f"{r.freeze_window_ms:.0f} ms" if r.freeze_window_ms is not None else "-"
    mib = r.bytes_copied / 2**20
    output.console.print(
        f"[green]backed up[/] {r.vm_name}: point {r.point_id}, {r.consistency}, freeze window {window}, "
        f"{mib:.1f} MiB in {r.duration_s:.1f} s (job {r.job_id})"
    )
    output.console.print(f"  {chain_line(r)}", markup=False, highlight=False)
    for w in r.warnings:
        output.console.print(f"  [yellow]warning[/]: {w}")


def run(args: argparse.Namespace) -> int:
    """Back up each VM in turn; exit 1 (exitcodes.FAILED) if any failed."""
    show = sys.stdout.isatty() and not args.json
    results: list[dict[str, object]] = []
    failed = 0
    with phases.shown(not args.json), open_state() as st, Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), disable=not show
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(target: str, done: int, total: int) -> None:
            if target not in tasks:
                tasks[target] = bar.add_task(f"copy {target}", total=total)
            bar.update(tasks[target], completed=done)

        with BackupEngine(st, progress=progress) as engine:
            for vm in args.vms:
                tasks.clear()
                req = BackupRequest(
                    vm=vm,
                    host_uri=args.host,
                    min_consistency=args.require,
                    exclude_disks=tuple(args.exclude_disk),
                    full=args.full,
                    **({"compression": args.compression} if args.compression else {}),
                )
                try:
                    r = engine.run(req)
                except VmBackupError as e:
                    failed += 1
                    results.append({"vm": vm, "error": e.to_dict()})
                    if not args.json:
                        output.error(e)
                    continue
                results.append(dataclasses.asdict(r))
                if not args.json:
                    _print_result(r)
    if args.json:
        output.print_json(results)
    return exitcodes.FAILED if failed else exitcodes.OK


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `backup`."""
    p = sub.add_parser(
        "backup",
        help="back up VMs now (one job per VM)",
        epilog=output.examples(
            "vmbackup backup web1",
            "vmbackup backup web1 db1 --require FILE_SYSTEM",
            "vmbackup backup web1 --full --exclude-disk vdc",
        ),
    )
    p.add_argument("vms", nargs="+", metavar="VM", help="VM name or UUID")
    p.add_argument("--host", help="libvirt URI of the VM's host (default: VMBACKUP_URI or qemu:///system)")
    p.add_argument(
        "--require",
        choices=CONSISTENCY_LEVELS,
        help="fail the job below this consistency (default: accept what the quiescer gives; a CRASH point warns)",
    )
    p.add_argument(
        "--exclude-disk",
        action="append",
        default=[],
        metavar="TARGET",
        help="a device not to copy (disk target, filesystem tag, hostdev alias); listed in the manifest; repeatable",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="copy every disk in full and start a new chain, even when an incremental is possible",
    )
    p.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        help=f"how the stored images are compressed (default {compress.DEFAULT}: zstd where it pays, decided per "
        "disk by sampling; an incremental follows its chain's full)",
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)
