"""`vmbackup vms [--state S] [--host URI] [--json]`: the VM inventory as last discovered; a registered VM shows its
quiescer (agent, qga, none) in the registered column (--json: ``quiescer``, null when not registered)."""

from __future__ import annotations

import argparse

from controller.cli import output
from controller.inventory.store import DiskInfo, list_vms
from controller.registration.store import list_registrations
from controller.state import open_state


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `vms`."""
    p = sub.add_parser(
        "vms",
        help="list the VM inventory (run `vmbackup discover` to refresh it)",
        epilog=output.examples("vmbackup vms", "vmbackup vms --state running --host qemu:///system"),
    )
    p.add_argument("--state", help="only VMs in this state: running, shutoff, paused, gone, ... (default: all)")
    p.add_argument("--host", metavar="URI", help="only VMs of this libvirt URI")
    output.add_json_flag(p)
    p.set_defaults(func=run)


def size(n: int | None) -> str:
    """Bytes as a short human size ('?' when unknown)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def disk_summary(disks: list[DiskInfo]) -> str:
    """'vda 10.0 GiB (1.2 GiB used), vdb ...' for a table cell."""
    return ", ".join(f"{d.target} {size(d.virtual_size)} ({size(d.allocated)} used)" for d in disks) or "-"


def run(args: argparse.Namespace) -> int:
    """Print the inventory."""
    with open_state() as st:
        vms = list_vms(st.db, state=args.state, host_uri=args.host)
        quiescers = {r.vm_uuid: r.quiescer for r in list_registrations(st.db)}
    if args.json:
        output.print_json([{**v.to_dict(), "quiescer": quiescers.get(v.uuid)} for v in vms])
        return 0
    rows = [
        [
            v.name,
            v.uuid,
            v.host_uri,
            v.state,
            disk_summary(v.disks),
            quiescers.get(v.uuid, "yes") if v.registered else "no",
            (v.policy or "yes") if v.protected else "no",
            v.last_seen,
        ]
        for v in vms
    ]
    cols = ["name", "UUID", "host", "state", "disks", "registered (quiescer)", "protected", "last seen (UTC)"]
    if args.state or args.host:
        empty = "no VMs match these filters: vmbackup vms (no filter) lists them all"
    else:
        empty = "no VMs known: vmbackup discover, then vmbackup register VM"
    output.table("VMs", cols, rows, empty=empty)
    return 0
