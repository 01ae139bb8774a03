"""`vmbackup register VM... [--concurrency N] [--quiescer auto|agent|qga]`: install or upgrade the guest agent over
SSH (agent), or register the QEMU guest agent through libvirt with no SSH (qga), or whichever works (auto, the
default: a fallback is printed as a warning); `--list`."""

from __future__ import annotations

import argparse
from typing import Any

from agent.contract import AGENT_PORT
from controller.cli import output, phases
from controller.errors import InvalidArgument, VmBackupError
from controller.registration.agentless import MODES
from controller.registration.precheck import DEFAULT_MAX_DATA_DISKS, EndpointOverrides
from controller.registration.register import RegisterOptions, RegisterResult, Registrar
from controller.registration.store import list_registrations
from controller.state import open_state


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Define `vmbackup register`."""
    p = sub.add_parser(
        "register",
        help="install or upgrade the guest agent in VMs over SSH (else use qemu-ga)",
        epilog=output.examples(
            "vmbackup register web1",
            "vmbackup register web1 db1 --ssh-user debian --ssh-key ~/.ssh/id_ed25519",
            "vmbackup register win1 --quiescer qga",
            "vmbackup register --list",
        ),
    )
    p.add_argument("vms", nargs="*", metavar="VM", help="VM names or UUIDs")
    p.add_argument("--list", action="store_true", help="list registered VMs instead")
    p.add_argument("--host", dest="uri", help="libvirt URI (default: VMBACKUP_URI or qemu:///system)")
    p.add_argument("--concurrency", type=int, default=2, help="VMs registered at once (default 2)")
    p.add_argument(
        "--ssh-host", help="guest SSH host (default: lab metadata, else the address libvirt leased to the VM)"
    )
    p.add_argument("--ssh-port", type=int, help="guest SSH port (default: lab metadata, else 22)")
    p.add_argument("--ssh-user", help="guest SSH user (default root)")
    p.add_argument(
        "--ssh-key", help="private key file (default: the lab VM's key, else your SSH agent and ~/.ssh keys)"
    )
    p.add_argument("--agent-host", help="where the controller reaches the agent (default: the SSH host)")
    p.add_argument("--agent-port", type=int, help=f"default: from lab metadata, else {AGENT_PORT}")
    p.add_argument(
        "--max-data-disks",
        type=int,
        default=DEFAULT_MAX_DATA_DISKS,
        metavar="N",
        help="refuse a VM with more data disks than this (the pre-check)",
    )
    p.add_argument(
        "--exclude-disk",
        action="append",
        default=[],
        metavar="TARGET",
        help="a device the backups will not copy (its policy must exclude it too, `exclude_disks`); repeatable",
    )
    p.add_argument(
        "--install-timeout", type=float, default=900.0, help="seconds for the pip install (TCG: slow)"
    )
    p.add_argument(
        "--ready-timeout", type=float, default=180.0, help="seconds for the agent to answer GetInfo"
    )
    p.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="the VM's SSH host key changed and you verified the new one (default: refuse, SSH_HOST_KEY_CHANGED)",
    )
    p.add_argument("--ssh-wait", type=float, default=0.0, help="keep retrying SSH this long (guest booting)")
    p.add_argument(
        "--quiescer",
        choices=MODES,
        default="auto",
        help="how backups freeze the guest: auto (default: the vmbackup agent where it can be installed, else qga "
        "if it answers, else crash-consistent, with a warning; a VM that has the agent keeps it), agent (install "
        "the vmbackup agent over SSH; an SSH failure is an error), qga (the QEMU guest agent through libvirt: "
        "nothing installed, no SSH)",
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> RegisterOptions:
    """Flags -> RegisterOptions."""
    if args.concurrency < 1 or args.max_data_disks < 0:
        raise InvalidArgument("--concurrency must be >= 1 and --max-data-disks >= 0")
    ends = EndpointOverrides(
        args.ssh_host, args.ssh_port, args.ssh_user, args.ssh_key, args.agent_host, args.agent_port
    )
    return RegisterOptions(
        endpoints=ends,
        uri=args.uri,
        max_data_disks=args.max_data_disks,
        install_timeout_s=args.install_timeout,
        ready_timeout_s=args.ready_timeout,
        ssh_wait_s=args.ssh_wait,
        accept_new_host_key=args.accept_new_host_key,
        exclude_disks=tuple(args.exclude_disk),
        quiescer=args.quiescer,
    )


def _row(vm: str, r: RegisterResult | VmBackupError) -> dict[str, Any]:
    """One VM's outcome as a dict."""
    if isinstance(r, VmBackupError):
        return {"vm": vm, "ok": False, "error": r.to_dict()}
    return {
        "vm": vm,
        "ok": True,
        "job_id": r.job_id,
        "upgraded": r.upgraded,
        "config_written": r.config_written,
        "agent_version": r.info.agent_version,
        "hostname": r.info.hostname,
        "kernel": r.info.kernel,
        "timings": {k: round(v, 2) for k, v in r.timings.items()},
        "quiescer": r.registration.quiescer,
        "warnings": list(r.warnings),
        "registration": r.registration.to_dict(),
    }


def _list(args: argparse.Namespace) -> int:
    """Print the registrations table."""
    with open_state() as st:
        regs = list_registrations(st.db)
    if args.json:
        output.print_json([r.to_dict() for r in regs])
        return 0
    output.table(
        "registered VMs",
        ["VM", "UUID", "quiescer", "agent", "version", "ssh", "registered"],
        [
            (
                r.vm_name,
                r.vm_uuid,
                r.quiescer,
                f"{r.agent_host}:{r.agent_port}" if r.agent_host else "-",
                r.agent_version or "-",
                f"{r.ssh_user}@{r.ssh_host}:{r.ssh_port}" if r.ssh_host else "-",
                r.registered_at,
            )
            for r in regs
        ],
        empty="no VMs registered: vmbackup vms lists the VMs, vmbackup register VM registers one",
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Register each VM; exit 0 when all succeeded, the single error when one VM was asked, else 1."""
    if args.list:
        return _list(args)
    if not args.vms:
        raise InvalidArgument("name at least one VM (or use --list)")
    opts = _options(args)
    with open_state() as st, Registrar(st) as registrar, phases.shown(not args.json):
        if len(args.vms) == 1:
            results: list[RegisterResult | VmBackupError] = [registrar.register(args.vms[0], opts)]
        else:
            results = registrar.register_many(args.vms, opts, args.concurrency)
    rows = [_row(vm, r) for vm, r in zip(args.vms, results, strict=True)]
    if args.json:
        output.print_json(rows)
    else:
        output.table(
            "register",
            ["VM", "result", "quiescer", "agent", "guest", "install s", "total s", "job"],
            [
                (
                    r["vm"],
                    "upgraded" if r.get("upgraded") else "registered",
                    r["quiescer"],
                    r["agent_version"] or "-",
                    f"{r['hostname']} {r['kernel']}",
                    r["timings"].get("install_s"),
                    r["timings"].get("total_s"),
                    r["job_id"],
                )
                if r["ok"]
                else (r["vm"], f"error {r['error']['code']}", "", "", r["error"]["message"], "", "", "")
                for r in rows
            ],
        )
        for r in rows:
            for w in r.get("warnings", []):
                print(f"warning: {r['vm']}: {w}")
    return 0 if all(r["ok"] for r in rows) else 1
