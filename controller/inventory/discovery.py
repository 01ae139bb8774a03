"""Discovery: list every domain of a host through libvirt, with its disks and sizes, into the inventory.

Usage::

    result = discover_host(conn, "qemu:///system")   # one `discover` job, exclusive per host
    result.vms, result.new, result.gone, result.job_id

A second discovery of the same host while one runs raises DiscoveryInProgress (DISCOVERY_IN_PROGRESS).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import libvirt

from controller.inventory.store import DiskInfo, VmInfo, find_vm, record_host
from controller.jobs.run import JobRun
from controller.jobs.store import JobStore
from controller.virt.connection import connection, translate
from controller.virt.domain import STATE_NAMES, disks_from_xml


@dataclass
class DiscoveryResult:
    """What one discovery of one host found."""

    job_id: str
    host_uri: str
    vms: list[VmInfo] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # UUIDs seen for the first time
    gone: list[str] = field(default_factory=list)  # UUIDs no longer on the host
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what `vmbackup discover --json` prints per host)."""
        return {
            "job_id": self.job_id,
            "host_uri": self.host_uri,
            "vms": [v.to_dict() for v in self.vms],
            "new": self.new,
            "gone": self.gone,
            "warnings": self.warnings,
        }


def lock_key(uri: str) -> str:
    """The host-level lock that makes discoveries of one host exclusive."""
    return f"discover:{uri}"


def discover_host(conn: sqlite3.Connection, uri: str) -> DiscoveryResult:
    """Discover every domain of one host as a `discover` job and record them in the inventory."""
    jobs = JobStore(conn)
    job = jobs.create("discover", host_uri=uri, lock_key=lock_key(uri))
    with jobs.run(job.id) as run:
        result = DiscoveryResult(job.id, uri)
        with run.phase("list"), connection(uri) as lv:
            for dom, stats in _domains(lv):
                vm = _inspect(dom, stats, uri, result.warnings)
                if vm is not None:
                    result.vms.append(vm)
                run.check_cancelled()
        with run.phase("record"):
            result.new, result.gone = record_host(conn, uri, result.vms)
            result.vms = [_joined(conn, vm) for vm in result.vms]
        _summarise(run, result)
    return result


def _domains(lv: libvirt.virConnect) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
    """All domains of the host with their state and block stats, never waiting for a busy domain's job lock."""
    stats = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BLOCK
    try:
        return list(lv.getAllDomainStats(stats, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT))
    except libvirt.libvirtError as e:
        raise translate(e, "listing domains") from e


def _block_sizes(stats: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """target -> (capacity, allocation, physical) from the block.N.* stats."""
    out: dict[str, tuple[int, int, int]] = {}
    for i in range(int(stats.get("block.count", 0))):
        k = f"block.{i}."
        if f"{k}capacity" in stats:
            cap, alloc, phys = stats[f"{k}capacity"], stats.get(f"{k}allocation", 0), stats.get(f"{k}physical", 0)
            out[str(stats[f"{k}name"])] = (int(cap), int(alloc), int(phys))
    return out


def _inspect(dom: libvirt.virDomain, stats: dict[str, Any], uri: str, warnings: list[str]) -> VmInfo | None:
    """Name, UUID, state and disks (with sizes) of one domain; None if it vanished meanwhile."""
    try:
        name, uuid, xml = dom.name(), dom.UUIDString(), dom.XMLDesc(0)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(e, "reading a domain") from e
    state = STATE_NAMES.get(stats.get("state.state", -1), "unknown")
    sizes = _block_sizes(stats)
    disks = []
    for d in disks_from_xml(xml):
        info = DiskInfo(d.target, d.path, d.format)
        if d.target in sizes:
            info.virtual_size, info.allocated, info.physical = sizes[d.target]
        elif state == "shutoff":  # no monitor involved: blockInfo just reads the image
            _block_info(dom, info, name, warnings)
        else:
            warnings.append(f"{name} {d.target}: size unknown (the VM is busy; rediscover later)")
        disks.append(info)
    return VmInfo(uuid=uuid, name=name, host_uri=uri, state=state, disks=disks)


def _block_info(dom: libvirt.virDomain, info: DiskInfo, name: str, warnings: list[str]) -> None:
    """Fill a shut-off disk's sizes from dom.blockInfo, or record why not."""
    try:
        info.virtual_size, info.allocated, info.physical = (int(x) for x in dom.blockInfo(info.target))
    except libvirt.libvirtError as e:
        warnings.append(f"{name} {info.target}: size unknown ({e.get_error_message()})")


def _joined(conn: sqlite3.Connection, vm: VmInfo) -> VmInfo:
    """The recorded view of a VM (with first/last seen, registered, protected)."""
    return find_vm(conn, vm.uuid) or vm


def _summarise(run: JobRun, result: DiscoveryResult) -> None:
    """Store counts and warnings in the job's details."""
    run.detail("host_uri", result.host_uri)
    run.detail("vms", len(result.vms))
    run.detail("new", result.new)
    run.detail("gone", result.gone)
    for w in result.warnings:
        run.warn(w)
