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
from controller.virt.domain import disks_from_xml, state_name


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
            for dom in _domains(lv):
                vm = _inspect(dom, uri, result.warnings)
                if vm is not None:
                    result.vms.append(vm)
                run.check_cancelled()
        with run.phase("record"):
            result.new, result.gone = record_host(conn, uri, result.vms)
            result.vms = [_joined(conn, vm) for vm in result.vms]
        _summarise(run, result)
    return result


def _domains(lv: libvirt.virConnect) -> list[libvirt.virDomain]:
    """All domains of the host, running or defined."""
    try:
        return list(lv.listAllDomains(0))
    except libvirt.libvirtError as e:
        raise translate(e, "listing domains") from e


def _inspect(dom: libvirt.virDomain, uri: str, warnings: list[str]) -> VmInfo | None:
    """Name, UUID, state and disks of one domain; None if it vanished meanwhile."""
    try:
        name, uuid, state = dom.name(), dom.UUIDString(), state_name(dom)
        xml = dom.XMLDesc(0)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(e, "reading a domain") from e
    disks = []
    for d in disks_from_xml(xml):
        info = DiskInfo(d.target, d.path, d.format)
        try:
            info.virtual_size, info.allocated, info.physical = (int(x) for x in dom.blockInfo(d.target))
        except libvirt.libvirtError as e:
            warnings.append(f"{name} {d.target}: size unknown ({e.get_error_message()})")
        disks.append(info)
    return VmInfo(uuid=uuid, name=name, host_uri=uri, state=state, disks=disks)


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
