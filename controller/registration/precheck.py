"""Pre-checks before anything is installed, and where to reach the guest (SSH and agent endpoints).

Order matters: the data-disk limit is read from the persistent domain XML first, so a shut-off VM with too
many disks reports TOO_MANY_DATA_DISKS; then devices no backup can copy (UNSUPPORTED_DISK: network disks,
filesystem shares, passthrough; unless excluded by target); then the state (VM_NOT_RUNNING); SSH and python3 once
connected.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

import libvirt

from agent.contract import AGENT_PORT
from controller.backup.disksource import check_xml
from controller.registration.exceptions import SshEndpointUnknown, TooManyDataDisks, VmNotRunning
from controller.registration.ssh import SshEndpoint
from controller.ssh.client import GUEST_SSH_PORT
from controller.virt import metadata as lab_metadata
from controller.virt.addresses import guest_ipv4
from controller.virt.domain import state_name

DEFAULT_MAX_DATA_DISKS = 5


@dataclass(frozen=True)
class EndpointOverrides:
    """Endpoint values given on the command line; None means "from lab metadata, libvirt's DHCP lease, default"."""

    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    agent_host: str | None = None
    agent_port: int | None = None


@dataclass(frozen=True)
class Endpoints:
    """Resolved endpoints of one guest."""

    ssh: SshEndpoint
    agent_host: str
    agent_port: int


def count_data_disks(domain_xml: str) -> int:
    """Disks (device='disk', any source type) beyond the first, which is the OS disk."""
    root = ET.fromstring(domain_xml)
    disks = [d for d in root.findall("./devices/disk") if d.get("device", "disk") == "disk"]
    return max(0, len(disks) - 1)


def check_data_disks(dom: libvirt.virDomain, limit: int) -> int:
    """Raise TooManyDataDisks when the persistent definition has more than ``limit`` data disks."""
    n = count_data_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    if n > limit:
        raise TooManyDataDisks(
            f"VM {dom.name()!r} has {n} data disks; the limit is {limit}",
            details={"data_disks": n, "limit": limit},
        )
    return n


def check_devices(dom: libvirt.virDomain, exclude: Iterable[str] = ()) -> None:
    """Raise UnsupportedDisk naming every device of the persistent definition a backup could not copy.

    Devices whose target is in ``exclude`` (``--exclude-disk``; the policy's ``exclude_disks`` at backup) pass.
    """
    check_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), dom.name(), exclude)


def check_running(dom: libvirt.virDomain) -> None:
    """Raise VmNotRunning unless the domain is running."""
    state = state_name(dom)
    if state != "running":
        raise VmNotRunning(
            f"VM {dom.name()!r} is {state}; the agent is installed into a running guest",
            details={"state": state},
        )


def resolve_endpoints(dom: libvirt.virDomain, o: EndpointOverrides) -> Endpoints:
    """Flags first, then lab metadata, then the guest's address from libvirt; the agent defaults to the SSH host:7470.

    The libvirt lookup is what makes bulk registration work for VMs on a libvirt network (Vagrant, virt-install):
    each VM is reached at its own DHCP-leased address, with one set of flags for all of them.
    """
    lab = lab_metadata.read(dom)
    ssh_host = o.ssh_host or (lab.ssh_host if lab else None)
    if not ssh_host:
        found = guest_ipv4(dom)
        ssh_host = found[0] if found else None
    if not ssh_host:
        raise SshEndpointUnknown(
            f"no SSH endpoint for VM {dom.name()!r}: no --ssh-host, no lab metadata, and libvirt knows no address "
            "for it (no DHCP lease on a libvirt network, nothing in the ARP table)"
        )
    ssh_key = o.ssh_key or (lab.ssh_key if lab else None)
    ssh = SshEndpoint(
        host=ssh_host,
        port=o.ssh_port or (lab.ssh_port if lab else GUEST_SSH_PORT),
        user=o.ssh_user or (lab.ssh_user if lab else "root"),
        key=ssh_key or None,
    )
    agent_host = o.agent_host or (lab.agent_host if lab else ssh.host)
    agent_port = o.agent_port or (lab.agent_port if lab else AGENT_PORT)
    return Endpoints(ssh=ssh, agent_host=agent_host, agent_port=agent_port)
