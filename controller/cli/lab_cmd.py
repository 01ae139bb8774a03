"""`vmbackup lab image|create|list|destroy`: the lab image and lab VMs (real libvirt domains on this host)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from controller import settings as settings_mod
from controller.cli import output
from controller.errors import InvalidArgument
from controller.lab import host, image, sshexec, vms
from controller.lab.exceptions import LabError


def add_parser(sub: Any) -> None:
    """Register `lab` and its subcommands."""
    p = sub.add_parser(
        "lab",
        help="lab host, lab image and lab VMs",
        epilog=output.examples(
            "vmbackup lab image", "vmbackup lab create web1 --data-disks 2", "vmbackup lab ssh web1 -- uname -a"
        ),
    )
    lab = p.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    img = lab.add_parser(
        "image", help="build (or show the cached) lab guest image", epilog=output.examples("vmbackup lab image")
    )
    img.set_defaults(func=run_image)

    c = lab.add_parser(
        "create",
        help="create and start a lab VM",
        epilog=output.examples(
            "vmbackup lab create web1", "vmbackup lab create db1 --data-disks 2 --memory 1024 --no-wait"
        ),
    )
    c.add_argument("name", metavar="NAME", help="the VM's name (letters, digits, - and _)")
    c.add_argument("--data-disks", type=int, default=0, metavar="N", help="ext4 data disks /data1.. (0-8)")
    c.add_argument("--memory", type=int, default=768, metavar="MiB", help="guest memory in MiB")
    c.add_argument("--vcpus", type=int, default=1, metavar="N", help="virtual CPUs")
    c.add_argument(
        "--disk-size", type=float, default=None, metavar="G", help="root disk size (GiB, >= image; default: image's)"
    )
    c.add_argument("--data-disk-size", type=float, default=1.0, metavar="G", help="each data disk (GiB)")
    c.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for SSH")
    c.add_argument("--wait", dest="wait", action="store_true", help="wait until SSH answers (default)")
    c.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for SSH")
    c.set_defaults(func=run_create, wait=True)

    ls = lab.add_parser(
        "list", help="list lab VMs", epilog=output.examples("vmbackup lab list", "vmbackup lab list --names")
    )
    output.add_json_flag(ls)
    ls.add_argument("--names", action="store_true", help="only the names, one per line")
    ls.set_defaults(func=run_list)

    d = lab.add_parser(
        "destroy",
        help="destroy a lab VM and delete the files it owns",
        epilog=output.examples("vmbackup lab destroy web1"),
    )
    d.add_argument("name", metavar="NAME", help="a lab VM (see `vmbackup lab list`)")
    d.set_defaults(func=run_destroy)

    x = lab.add_parser(
        "ssh",
        help="run a command in a lab VM over SSH (endpoint and key from its metadata)",
        epilog=output.examples("vmbackup lab ssh web1 -- df -h /", "vmbackup lab ssh web1 --timeout 30 -- sync"),
    )
    x.add_argument("name", metavar="NAME", help="a lab VM (see `vmbackup lab list`)")
    x.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    x.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for SSH, then for the command")
    x.set_defaults(func=run_ssh)


def _progress_image(s: settings_mod.Settings) -> image.ImageInfo:
    """ensure_image with a rich spinner per build step."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=output.console
    ) as prog:
        task: list[Any] = []

        def step(msg: str) -> None:
            if task:
                prog.update(task[0], completed=1, total=1)
            task[:] = [prog.add_task(msg, total=None)]

        info = image.ensure_image(s, progress=step)
        if task:
            prog.update(task[0], completed=1, total=1)
    return info


def run_image(args: argparse.Namespace) -> int:
    """Build the image unless cached; print where it is and its size."""
    s = settings_mod.load()
    t0 = time.monotonic()
    info = _progress_image(s)
    how = f"built in {time.monotonic() - t0:.0f} s" if info.built_now else "cached"
    output.console.print(
        f"lab image ({how}): {info.path}\n  virtual {info.virtual_size / 2**30:.1f} GiB, "
        f"allocated {info.allocated / 2**20:.0f} MiB, recipe {info.recipe_hash}"
    )
    return 0


def run_create(args: argparse.Namespace) -> int:
    """Create a lab VM (building the image first if needed) and report its endpoints."""
    s = settings_mod.load()
    vms.validate_name(args.name)
    host.detect_virt_type(s.virt_type)
    host.ensure_daemons(s.uri)
    vms.preflight(s, args.name, args.data_disks, args.memory, args.vcpus, args.data_disk_size)
    _progress_image(s)
    with output.console.status(f"creating {args.name} and waiting for SSH" if args.wait else "creating"):
        vm = vms.create_lab_vm(
            s,
            args.name,
            data_disks=args.data_disks,
            memory_mib=args.memory,
            vcpus=args.vcpus,
            disk_size_gib=args.disk_size,
            data_disk_gib=args.data_disk_size,
            wait=args.wait,
            ssh_timeout=args.timeout,
        )
    m = vm.meta
    boot = f", SSH answered after {vm.boot_seconds:.1f} s" if vm.boot_seconds is not None else ""
    output.console.print(
        f"lab VM {vm.name} ({vm.uuid}) {vm.state} [{m.virt_type}]{boot}\n"
        f"  ssh -i {m.ssh_key} -p {m.ssh_port} {m.ssh_user}@{m.ssh_host}\n"
        f"  agent {m.agent_host}:{m.agent_port}   console {m.console_path}"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List lab VMs as a table, names, or JSON."""
    s = settings_mod.load()
    found = vms.list_lab_vms(s)
    if args.names:
        for v in found:
            print(v.name)
    elif args.json:
        output.print_json([_as_dict(v) for v in found])
    else:
        rows = [
            [v.name, v.state, f"{v.meta.ssh_port}", f"{v.meta.agent_port}", v.meta.virt_type, v.uuid] for v in found
        ]
        cols = ["name", "state", "ssh port", "agent port", "virt", "uuid"]
        output.table("lab VMs", cols, rows, empty="no lab VMs: vmbackup lab create NAME")
    return 0


def _as_dict(v: vms.LabVm) -> dict[str, Any]:
    """A lab VM as JSON."""
    m = v.meta
    return {
        "name": v.name,
        "uuid": v.uuid,
        "state": v.state,
        "virt_type": m.virt_type,
        "ssh": {"host": m.ssh_host, "port": m.ssh_port, "user": m.ssh_user, "key": m.ssh_key},
        "agent": {"host": m.agent_host, "port": m.agent_port},
        "console": m.console_path,
        "files": list(m.files),
    }


def run_destroy(args: argparse.Namespace) -> int:
    """Destroy one lab VM."""
    s = settings_mod.load()
    vms.validate_name(args.name)
    meta = vms.destroy_lab_vm(s, args.name)
    output.console.print(f"destroyed {args.name}; removed {len(meta.files)} files")
    return 0


def run_ssh(args: argparse.Namespace) -> int:
    """Run one command in the guest; its output is printed and its exit code returned."""
    s = settings_mod.load()
    vm = vms.get_lab_vm(s, args.name)
    words = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not words:
        raise InvalidArgument("give the command after --, e.g. vmbackup lab ssh NAME -- uname -a")
    sshexec.wait_for_ssh(vm.meta, timeout=args.timeout)  # a VM just started (e.g. by restore --start) may still boot
    rc, out, err = sshexec.run(vm.meta, shlex.join(words), timeout=args.timeout)
    print(out, end="")
    print(err, end="", file=sys.stderr)
    return rc


__all__ = ["LabError", "add_parser"]
