"""Chain resets from restore --replace, unprotect and unregister: the reset is recorded and vmb-* checkpoints go.

Host-only: the domains live in libvirt's in-process test driver (``test:///default``: no libvirtd, no QEMU), which
keeps checkpoint metadata like the QEMU driver (creating one needs a running domain; deleting works shut off too).
Its state is shared by every connection of the process while one stays open, so the fixture holds one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller import settings
from controller.backup import cbt
from controller.backup.chainreset import reset_vm_chain
from controller.errors import VmBackupError
from controller.jobs.store import JobStore
from controller.policies import store
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import UNPROTECT_REASON, ProtectionService
from controller.registration.store import get_registration, save
from controller.registration.unregister import UNREGISTER_REASON, Unregistrar
from controller.restore.replace import replaced_reason
from controller.restore.restore import Restorer
from tests import domain_xml as dx
from tests import fixtures_state
from tests.helpers import made_up_registration

# the state fixtures of tests/fixtures_state.py: a private home (autouse), its state DB, real vault points
_private_home = fixtures_state._private_home
conn = fixtures_state.conn
add_point = fixtures_state.add_point

TEST_URI = "test:///default"
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/vmbackup-test.sock"


@dataclass
class DriverDomain:
    """A domain of the test driver with checkpoints vmb-* (ours) and one of someone else."""

    dom: libvirt.virDomain
    name: str
    uuid: str
    disk: Path

    def checkpoints(self) -> list[str]:
        """Every checkpoint name, sorted."""
        return sorted(c.getName() for c in self.dom.listAllCheckpoints(0))


@pytest.fixture
def test_driver() -> Iterator[libvirt.virConnect]:
    """A connection to the test driver, open for the whole test (it keeps the driver's state alive)."""
    lv = libvirt.open(TEST_URI)
    yield lv
    lv.close()


@pytest.fixture
def make_domain(test_driver: libvirt.virConnect, tmp_path: Path) -> Iterator[Callable[..., DriverDomain]]:
    """make_domain(running) -> a defined domain with a raw disk file, checkpoints vmb-1, vmb-2 and 'theirs'."""
    made: list[DriverDomain] = []

    def make(running: bool = True) -> DriverDomain:
        name = f"cr-{uuidlib.uuid4().hex[:8]}"
        disk = tmp_path / f"{name}-vda.raw"
        disk.write_bytes(b"\x07" * 8192)
        u = str(uuidlib.uuid4())
        xml = dx.domain(name, dx.file_disk(str(disk), "vda", "raw"), uuid=u).replace("type='qemu'", "type='test'", 1)
        dom = test_driver.defineXML(xml)
        dom.create()
        for cp in ("vmb-20260101-000000-aaaaaa", "vmb-20260102-000000-bbbbbb", "theirs"):
            dom.checkpointCreateXML(f"<domaincheckpoint><name>{cp}</name></domaincheckpoint>", 0)
        if not running:
            dom.destroy()
        t = DriverDomain(dom, name, u, disk)
        made.append(t)
        return t

    yield make
    for t in made:
        with contextlib.suppress(libvirt.libvirtError):
            if t.dom.isActive():
                t.dom.destroy()
            t.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


@pytest.mark.parametrize("running", [True, False])
def test_reset_vm_chain_records_and_deletes_ours_only(
    conn: sqlite3.Connection, make_domain: Callable[..., DriverDomain], running: bool
) -> None:
    t = make_domain(running=running)
    other = make_domain()
    assert cbt.last_reset(conn, t.uuid) is None
    deleted = reset_vm_chain(conn, TEST_URI, t.uuid, "because")
    assert sorted(deleted) == ["vmb-20260101-000000-aaaaaa", "vmb-20260102-000000-bbbbbb"]
    assert t.checkpoints() == ["theirs"]  # someone else's checkpoint is never touched
    assert len(other.checkpoints()) == 3  # nor another VM's
    reset = cbt.last_reset(conn, t.uuid)
    assert reset is not None and reset[1] == "because"
    assert cbt.last_reset(conn, other.uuid) is None


def test_reset_vm_chain_of_a_gone_vm_or_unreachable_host_still_records(
    conn: sqlite3.Connection, test_driver: libvirt.virConnect
) -> None:
    gone, far = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    assert reset_vm_chain(conn, TEST_URI, gone, "VM gone") == []
    assert reset_vm_chain(conn, UNREACHABLE_URI, far, "host down") == []
    assert cbt.last_reset(conn, gone) is not None and cbt.last_reset(conn, gone)[1] == "VM gone"  # type: ignore[index]
    assert cbt.last_reset(conn, far) is not None and cbt.last_reset(conn, far)[1] == "host down"  # type: ignore[index]


def _protected(conn: sqlite3.Connection, t: DriverDomain) -> ProtectionService:
    """Register t (on the test driver) and protect it with a daily policy."""
    save(conn, made_up_registration(t.name, vm_uuid=t.uuid, host_uri=TEST_URI))
    p = parse_text("name: gold\nschedule: {daily: '22:00'}\n")[0]
    store.save_policy(conn, p, to_yaml(p))
    svc = ProtectionService(settings.load(), conn=conn)
    svc.protect([t.name], "gold")
    return svc


@pytest.mark.parametrize("delete_data", [False, True])
def test_unprotect_resets_the_chain(
    conn: sqlite3.Connection, make_domain: Callable[..., DriverDomain], add_point: Callable[..., Any],
    delete_data: bool,
) -> None:
    t = make_domain()
    svc = _protected(conn, t)
    add_point(t.uuid, t.name, datetime.now(UTC) - timedelta(hours=1))
    out = svc.unprotect(t.name, delete_data=delete_data)
    reset = cbt.last_reset(conn, t.uuid)
    assert reset is not None and reset[1] == UNPROTECT_REASON == "VM unprotected"
    assert t.checkpoints() == ["theirs"]
    job = JobStore(conn).get(out.job_id)
    assert job.state == "completed"
    assert job.details["chain_reset"]["reason"] == UNPROTECT_REASON
    assert len(job.details["chain_reset"]["checkpoints_deleted"]) == 2
    assert "reset-chain" in [ph.name for ph in job.phases]


def test_unregister_resets_the_chain(conn: sqlite3.Connection, make_domain: Callable[..., DriverDomain]) -> None:
    t = make_domain(running=False)
    save(conn, made_up_registration(t.name, vm_uuid=t.uuid, host_uri=TEST_URI, ssh_port=1))
    with Unregistrar(settings.load()) as r:
        with pytest.raises(VmBackupError):  # the guest (127.0.0.1:1) cannot be reached: nothing is reset
            r.unregister(t.name, uri=TEST_URI)
        assert cbt.last_reset(conn, t.uuid) is None and len(t.checkpoints()) == 3
        res = r.unregister(t.name, uri=TEST_URI, force=True)
    assert not res.guest_cleaned and get_registration(conn, t.uuid) is None
    reset = cbt.last_reset(conn, t.uuid)
    assert reset is not None and reset[1] == UNREGISTER_REASON == "VM unregistered"
    assert t.checkpoints() == ["theirs"]
    job = JobStore(conn).get(res.job_id)
    assert sorted(job.details["chain_reset"]["checkpoints_deleted"]) == [
        "vmb-20260101-000000-aaaaaa", "vmb-20260102-000000-bbbbbb",
    ]


def test_replace_restore_resets_the_chain(
    conn: sqlite3.Connection, make_domain: Callable[..., DriverDomain], add_point: Callable[..., Any]
) -> None:
    t = make_domain(running=False)
    point = add_point(t.uuid, t.name, datetime.now(UTC) - timedelta(hours=1))
    before = t.disk.read_bytes()
    with Restorer(settings.load()) as r:
        with pytest.raises(VmBackupError):  # declined: nothing changes, no reset
            r.restore_replace(point.point_id, t.name, host_uri=TEST_URI, confirm=lambda _s: False)
        assert cbt.last_reset(conn, t.uuid) is None and len(t.checkpoints()) == 3
        res = r.restore_replace(point.point_id, t.name, host_uri=TEST_URI, discard_old=True, confirm=lambda _s: True)
    assert t.disk.read_bytes() != before  # the point's disk is in place
    reset = cbt.last_reset(conn, t.uuid)
    assert reset is not None and reset[1] == replaced_reason(point)
    assert reset[1] == f"VM restored or replaced from point {point.point_id}"
    assert t.checkpoints() == ["theirs"]
    job = JobStore(conn).get(res.job_id)
    assert job.details["chain_reset"]["reason"] == reset[1]
