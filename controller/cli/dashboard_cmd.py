"""`vmbackup dashboard [--json]`: protection health at a glance (VM counts, jobs in 24 h, points, vault)."""

from __future__ import annotations

import argparse
import sys

from controller.cli import output
from controller.dashboard import Dashboard, build
from controller.dashboard.model import age_text
from controller.state import open_state


def _mib(n: int | None) -> str:
    """Bytes as MiB/GiB text."""
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _render(d: Dashboard) -> None:
    """Rich tables: summary, per-VM rows, attention list."""
    v, j, vault = d.vms, d.jobs_24h, d.vault
    output.table(
        f"vmbackup dashboard ({d.generated_at})",
        ["VMs known", "registered", "protected", "unprotected", "jobs 24h ok", "failed", "in progress",
         "cancelled", "vault used", "vault free", "points"],
        [[v["known"], v["registered"], v["protected"], v["unprotected"], j["succeeded"], j["failed"],
          j["in_progress"], j["cancelled"], _mib(vault["total_bytes"]), _mib(vault["free_bytes"]), vault["points"]]],
    )
    rows = []
    for r in d.rows:
        lp, lb = r.last_point, r.last_backup
        bc = (lp or {}).get("boot_check")
        rows.append([
            r.vm_name,
            r.protection or ("registered" if r.registered else "-"),
            r.policy or "-",
            lp["point_id"] if lp else "-",
            lp["consistency"] if lp else "-",
            age_text(lp["age_s"]) if lp else "-",
            "-" if not bc else ("passed" if bc["passed"] else f"FAILED {bc['reason']}"),
            "-" if not lb else lb["state"] + (f" {lb['error_code']}" if lb["error_code"] else ""),
            r.next_run or "-",
        ])
    output.table("VMs", ["VM", "protection", "policy", "last point", "consistency", "age", "boot-check",
                         "last backup", "next run"], rows)
    if d.attention:
        output.table("needs attention", ["VM", "why"],
                     [[a["vm_name"], "; ".join(a["reasons"])] for a in d.attention])
    else:
        output.console.print("[green]nothing needs attention[/]")


def run(args: argparse.Namespace) -> int:
    """Build the dashboard and print it."""
    with open_state() as st:
        d = build(st)
    if args.json:
        output.print_json(d.to_dict(), indent=2 if sys.stdout.isatty() else None)  # 10,000 VMs: one line is fast
    else:
        _render(d)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `dashboard`."""
    p = sub.add_parser(
        "dashboard",
        help="protection health: VM counts, jobs in 24 h, newest points, vault usage",
        epilog=output.examples("vmbackup dashboard", "vmbackup dashboard --json | jq '.attention'"),
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)
