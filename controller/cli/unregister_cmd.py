"""`vmbackup unregister VM`: remove the guest agent, revoke its certificate and forget the registration."""

from __future__ import annotations

import argparse

from controller.cli import output
from controller.registration.unregister import Unregistrar
from controller.state import open_state


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Define `vmbackup unregister`."""
    p = sub.add_parser(
        "unregister",
        help="remove the guest agent from a VM and revoke its certificate",
        epilog=output.examples("vmbackup unregister web1", "vmbackup unregister web1 --force"),
    )
    p.add_argument("vm", metavar="VM", help="VM name or UUID")
    p.add_argument("--host", dest="uri", help="libvirt URI (default: VMBACKUP_URI or qemu:///system)")
    p.add_argument(
        "--force",
        action="store_true",
        help="guest unreachable: still revoke the certificate and forget the registration",
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Unregister one VM and say what was done."""
    with open_state() as st, Unregistrar(st) as unregistrar:
        res = unregistrar.unregister(args.vm, uri=args.uri, force=args.force)
    if args.json:
        output.print_json(res.__dict__)
    else:
        where = "agent removed from the guest" if res.guest_cleaned else "guest NOT cleaned (unreachable)"
        print(
            f"unregistered {res.vm_name} ({res.vm_uuid}): {where}; certificate {res.revoked_serial} revoked; "
            f"job {res.job_id}"
        )
    return 0
