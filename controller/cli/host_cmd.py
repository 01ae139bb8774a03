"""`vmbackup host add URI [--name N] [--no-check] | host list [--json] | host remove URI`: managed libvirt hosts."""

from __future__ import annotations

import argparse

from controller.cli import output
from controller.inventory.hosts import add_host, list_hosts, remove_host, validate_uri
from controller.inventory.store import list_vms
from controller.state import open_state
from controller.virt.connection import connection


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `host` and its subcommands."""
    p = sub.add_parser(
        "host",
        help="manage the libvirt hosts vmbackup discovers (URIs)",
        epilog=output.examples(
            "vmbackup host add qemu+ssh://root@hv2/system --name hv2",
            "vmbackup host list",
            "vmbackup host remove qemu+ssh://root@hv2/system",
        ),
    )
    hs = p.add_subparsers(dest="host_command", metavar="SUBCOMMAND", required=True)
    a = hs.add_parser(
        "add",
        help="add a host by libvirt URI, e.g. qemu+ssh://root@hv2/system",
        epilog=output.examples("vmbackup host add qemu+ssh://root@hv2/system", "vmbackup host add qemu:///system"),
    )
    a.add_argument("uri", metavar="URI", help="libvirt URI of the host, e.g. qemu+ssh://root@hv2/system")
    a.add_argument("--name", help="display name (default: the URI's host part, or 'local')")
    a.add_argument("--no-check", action="store_true", help="do not try to connect to the host first")
    output.add_json_flag(a)
    a.set_defaults(func=run_add)
    ls = hs.add_parser(
        "list",
        help="list hosts (the default URI is the implicit host when none was added)",
        epilog=output.examples("vmbackup host list", "vmbackup host list --json"),
    )
    output.add_json_flag(ls)
    ls.set_defaults(func=run_list)
    rm = hs.add_parser(
        "remove",
        help="forget a host (its VMs and recovery points stay)",
        epilog=output.examples("vmbackup host remove qemu+ssh://root@hv2/system"),
    )
    rm.add_argument("uri", metavar="URI", help="the host's URI as `vmbackup host list` shows it")
    output.add_json_flag(rm)
    rm.set_defaults(func=run_remove)


def run_add(args: argparse.Namespace) -> int:
    """Add a host after checking libvirt answers there (unless --no-check)."""
    validate_uri(args.uri)
    if not args.no_check:
        with connection(args.uri) as lv:
            lv.getLibVersion()
    with open_state() as st:
        host = add_host(st.db, args.uri, args.name)
    if args.json:
        output.print_json(host.to_dict())
    else:
        print(f"host {host.name} added: {host.uri}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Show the hosts with how many VMs each has in the inventory."""
    with open_state() as st:
        hosts = list_hosts(st.db, st.settings.uri)
        counts = {h.uri: len(list_vms(st.db, host_uri=h.uri, include_gone=False)) for h in hosts}
    if args.json:
        output.print_json([{**h.to_dict(), "vms": counts[h.uri]} for h in hosts])
        return 0
    rows = [[h.name, h.uri, counts[h.uri], "implicit default" if h.implicit else h.added_at] for h in hosts]
    output.table("hosts", ["name", "URI", "VMs", "added (UTC)"], rows)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove a host."""
    with open_state() as st:
        remove_host(st.db, args.uri)
    if args.json:
        output.print_json({"removed": args.uri})
    else:
        print(f"host removed: {args.uri} (its VMs stay in the inventory as they were last seen)")
    return 0
