"""`vmbackup boot-check POINT`: boot a throwaway copy of a recovery point and record if it came up."""

from __future__ import annotations

import argparse

from controller.cli import output, phases
from controller.errors import VmBackupError
from controller.state import open_state


def run(args: argparse.Namespace) -> int:
    """Run the boot-check and print each check; a failure is reported as BOOT_CHECK_FAILED (exit 1)."""
    from controller.restore.bootcheck import BootChecker

    try:
        with open_state() as st, BootChecker(st) as checker, phases.shown(not args.json):
            res = checker.run(args.point, args.timeout, args.check_command, args.host)
    except VmBackupError as e:
        if e.code == "BOOT_CHECK_FAILED" and not args.json:
            _show(e.details)
        raise
    if args.json:
        output.print_json(res.to_dict())
    else:
        _show(res.to_dict())
    return 0


def _show(d: dict[str, object]) -> None:
    """The checks as a table, then the verdict (and the console tail on failure)."""
    checks = d.get("checks") or []
    rows = [(c["name"], "ok" if c["ok"] else "FAIL", c["detail"]) for c in checks]  # type: ignore[attr-defined]
    output.table(f"boot-check {d.get('point_id')} (job {d.get('job_id')})", ["check", "result", "detail"], rows)
    output.console.print(f"result: {d.get('result')}; boot {d.get('boot_seconds')} s; total {d.get('duration_s')} s")
    if d.get("result") != "passed" and d.get("console_tail"):
        output.console.print("console tail:", markup=False)
        output.console.print(str(d.get("console_tail")), markup=False, highlight=False)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `boot-check`."""
    p = sub.add_parser(
        "boot-check",
        help="boot a throwaway copy of a recovery point and check it came up",
        epilog=output.examples(
            "vmbackup boot-check 20261129T160102Z-3fa9c1",
            "vmbackup boot-check 20261129T160102Z-3fa9c1 --check-command 'systemctl is-active nginx' --json",
        ),
    )
    p.add_argument("point", metavar="POINT", help="recovery point id (see `vmbackup points`)")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S", help="seconds to reach a login prompt")
    p.add_argument("--check-command", metavar="CMD", help="a command to run in the guest over SSH (exit 0 = ok)")
    p.add_argument("--host", metavar="URI", help="libvirt URI of the host to boot it on (default VMBACKUP_URI)")
    output.add_json_flag(p)
    p.set_defaults(func=run)
