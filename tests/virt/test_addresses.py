"""Choosing a guest's address from libvirt's interfaceAddresses() answer (the lease lookup itself runs in the e2e)."""

from __future__ import annotations

from typing import Any

import libvirt

from controller.virt.addresses import pick_ipv4

V4, V6 = libvirt.VIR_IP_ADDR_TYPE_IPV4, libvirt.VIR_IP_ADDR_TYPE_IPV6


def _iface(*addrs: tuple[int, str]) -> dict[str, Any]:
    """One interface entry as libvirt-python returns it."""
    return {"hwaddr": "52:54:00:00:00:01", "addrs": [{"type": t, "addr": a, "prefix": 24} for t, a in addrs]}


def test_first_ipv4_of_the_first_interface_by_name() -> None:
    ifaces = {"vnet3": _iface((V4, "192.168.121.9")), "vnet1": _iface((V6, "fe80::1"), (V4, "192.168.121.5"))}
    assert pick_ipv4(ifaces) == "192.168.121.5"


def test_ipv6_only_loopback_and_empty_give_none() -> None:
    assert pick_ipv4({}) is None
    assert pick_ipv4({"lo": _iface((V4, "127.0.0.1")), "vnet0": _iface((V6, "fe80::2"))}) is None
    assert pick_ipv4({"vnet0": {"hwaddr": "52:54:00:00:00:02", "addrs": None}}) is None
