"""`vmbackup discover [--host URI] [--json]`: list every domain of each host into the inventory (a job per host)."""

from __future__ import annotations

import argparse
import sys

from controller.cli import exitcodes, output
from controller.cli.vms_cmd import disk_summary
from controller.errors import VmBackupError
from controller.inventory.discovery import DiscoveryResult, discover_host
from controller.inventory.hosts import list_hosts, validate_uri
from controller.state import open_state


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `discover`."""
    p = sub.add_parser(
        "discover",
        help="discover the VMs of every host (or one) and update the inventory",
        epilog=output.examples("vmbackup discover", "vmbackup discover --host qemu+ssh://root@hv2/system"),
    )
    p.add_argument("--host", metavar="URI", help="only this libvirt URI (default: every host)")
    output.add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Discover each host; report per host; exit 1 (exitcodes.FAILED) if a host failed."""
    results: list[DiscoveryResult] = []
    errors: list[tuple[str, VmBackupError]] = []
    with open_state() as st:
        uris = [validate_uri(args.host)] if args.host else [h.uri for h in list_hosts(st.db, st.settings.uri)]
        for uri in uris:
            try:
                results.append(discover_host(st.db, uri))
            except VmBackupError as e:
                if len(uris) == 1:
                    raise
                errors.append((uri, e))
    if args.json:
        out = {"hosts": [r.to_dict() for r in results], "errors": [{"host_uri": u, **x.to_dict()} for u, x in errors]}
        output.print_json(out)
    else:
        for r in results:
            _print(r)
        for uri, err in errors:
            print(f"error {err.code} on {uri}: {err.message}", file=sys.stderr)
    return exitcodes.FAILED if errors else exitcodes.OK


def _print(r: DiscoveryResult) -> None:
    """One host's result as a table plus a summary line."""
    rows = [
        [
            v.name,
            v.uuid,
            v.state,
            disk_summary(v.disks),
            "yes" if v.registered else "no",
            "yes" if v.protected else "no",
            "new" if v.uuid in r.new else "",
        ]
        for v in r.vms
    ]
    cols = ["name", "UUID", "state", "disks", "registered", "protected", ""]
    output.table(f"{r.host_uri} (job {r.job_id})", cols, rows)
    print(f"{len(r.vms)} VMs, {len(r.new)} new, {len(r.gone)} gone")
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
