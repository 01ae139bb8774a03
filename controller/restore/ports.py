"""Fresh 127.0.0.1 ports for a restored VM's user-mode port forwards.

A port is taken only if nothing listens on it now and no libvirt domain on the connection (running or not)
forwards it already, so a restored VM never clashes with its original even while that one is shut off.
"""

from __future__ import annotations

import contextlib
import socket

import libvirt

from controller.restore.domainxml import hostfwds


def ports_in_domains(conn: libvirt.virConnect) -> set[int]:
    """Host ports every defined domain forwards (from its inactive XML)."""
    used: set[int] = set()
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            used.update(hostfwds(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).values())
    return used


def free_port(avoid: set[int]) -> int:
    """A port on 127.0.0.1 that the kernel says is free and that is not in avoid."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError("no free TCP port on 127.0.0.1")


def allocate(conn: libvirt.virConnect, guest_ports: list[int]) -> dict[int, int]:
    """guest port -> a fresh host port on 127.0.0.1, all distinct and unused by any domain."""
    avoid = ports_in_domains(conn)
    out: dict[int, int] = {}
    for g in guest_ports:
        p = free_port(avoid)
        avoid.add(p)
        out[g] = p
    return out
