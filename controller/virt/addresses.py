"""Where a guest can be reached on its network, as libvirt knows it (DHCP leases of libvirt networks, ARP).

    >>> pick_ipv4({"vnet0": {"hwaddr": "52:54:00:aa:bb:cc", "addrs": [{"type": 0, "addr": "192.168.121.7"}]}})
    '192.168.121.7'
"""

from __future__ import annotations

from typing import Any

import libvirt

_SOURCES = (
    ("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
    ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)


def pick_ipv4(ifaces: dict[str, Any]) -> str | None:
    """The first non-loopback IPv4 address in libvirt's interfaceAddresses() answer, interfaces in name order."""
    for name in sorted(ifaces):
        for a in (ifaces[name] or {}).get("addrs") or []:
            addr = str(a.get("addr") or "")
            if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and addr and not addr.startswith("127."):
                return addr
    return None


def guest_ipv4(dom: libvirt.virDomain) -> tuple[str, str] | None:
    """(address, source) from libvirt's DHCP leases, else the host's ARP table; None if neither knows."""
    for source, flag in _SOURCES:
        try:
            found = pick_ipv4(dom.interfaceAddresses(flag) or {})
        except libvirt.libvirtError:
            continue  # e.g. user-mode networking has no lease; a stopped domain has no interfaces
        if found:
            return found, source
    return None
