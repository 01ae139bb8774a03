"""Host ports on 127.0.0.1 for the forwarded SSH and agent ports of lab, restored and boot-check VMs.

A port is handed out only if nothing listens on it (bind check) and no libvirt domain forwards it (lab
metadata or a ``hostfwd`` in its qemu:commandline). Callers hold :func:`port_lock` from allocation until the
domain is defined, so two concurrent ``lab create`` or restore runs (even from different VMBACKUP_HOMEs) never
get the same port.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import libvirt

from controller.locks import flocked
from controller.virt.exceptions import NoFreePort

LOCK_PATH = Path("/run/lock/vmbackup-lab-ports.lock")
PORT_RANGE = (20000, 29999)  # below Linux's ephemeral range, so outgoing connections do not take them
HOSTFWD_RE = re.compile(r"hostfwd=(?:tcp|udp):[0-9.]*:(\d+)-")


def bind_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP socket can bind host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_ports(
    count: int,
    avoid: Iterable[int] = (),
    port_range: tuple[int, int] = PORT_RANGE,
    is_free: Callable[[int], bool] = bind_free,
    rng: random.Random | None = None,
) -> list[int]:
    """`count` distinct ports from port_range, none in avoid, each passing is_free; or NoFreePort."""
    lo, hi = port_range
    taken = set(avoid)
    start = (rng or random.Random()).randrange(lo, hi + 1)
    out: list[int] = []
    for i in range(hi - lo + 1):
        port = lo + (start - lo + i) % (hi - lo + 1)
        if port in taken or not is_free(port):
            continue
        out.append(port)
        taken.add(port)
        if len(out) == count:
            return out
    raise NoFreePort(f"only {len(out)} of {count} free ports in {lo}-{hi} on 127.0.0.1")


def ports_of_domains(conn: libvirt.virConnect) -> set[int]:
    """Every host port a defined domain forwards (hostfwd in its XML; lab metadata ports are in it too)."""
    used: set[int] = set()
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            used.update(int(p) for p in HOSTFWD_RE.findall(xml))
            used.update(int(p) for p in re.findall(r"<vmblab:(?:ssh|agent)[^>]*\bport=['\"](\d+)", xml))
    return used


@contextlib.contextmanager
def port_lock(path: Path = LOCK_PATH) -> Iterator[None]:
    """A host-wide exclusive lock for port allocation (held until the domain using the ports is defined)."""
    if not path.parent.is_dir():
        path = Path("/tmp") / path.name
    with flocked(path):
        yield
