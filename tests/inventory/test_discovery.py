"""Discovery against the real local libvirt: two tiny defined domains with real qcow2/raw disks (never booted)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import libvirt
import pytest

from controller import db
from controller.cli import output
from controller.cli.main import main
from controller.inventory.discovery import discover_host, lock_key
from controller.inventory.store import VmInfo, find_vm, list_vms
from controller.jobs.exceptions import DiscoveryInProgress
from controller.jobs.store import JobStore
from controller.settings import Settings
from controller.virt.exceptions import HypervisorUnreachable
from tests.inventory.helpers import URI, InvDomains, MiB

pytestmark = pytest.mark.libvirt  # needs the local libvirtd (make test-fast skips it)


def _mine(vms: list[VmInfo], prefix: str) -> dict[str, VmInfo]:
    """This module's VMs by short name."""
    return {v.name.removeprefix(prefix): v for v in vms if v.name.startswith(prefix)}


def test_discover_lists_domains_with_disks_and_flags(conn: sqlite3.Connection, domains: InvDomains) -> None:
    two = domains.two.UUIDString()
    conn.execute(
        "INSERT INTO registrations VALUES"
        " (?, ?, ?, '127.0.0.1', 7470, '127.0.0.1', 22, 'root', NULL, '1', 'ab', 'now', 'agent')",
        (two, domains.prefix + "two", URI),
    )
    conn.execute(
        "INSERT INTO protections (vm_uuid, policy, state, since) VALUES (?, 'gold', 'protected', 'now')", (two,)
    )

    res = discover_host(conn, URI)
    found = _mine(res.vms, domains.prefix)
    assert set(found) == {"one", "two"}
    a, b = found["one"], found["two"]
    assert a.uuid == domains.one.UUIDString() and b.uuid == two
    assert a.state == "shutoff" and b.state == "shutoff" and a.host_uri == URI and not a.gone
    assert {a.uuid, b.uuid} <= set(res.new)
    (d,) = a.disks
    assert (d.target, d.format) == ("vda", "qcow2") and d.path == str(domains.dir / f"{domains.prefix}one-vda.qcow2")
    assert d.virtual_size == 64 * MiB
    assert d.allocated is not None and 4 * MiB <= d.allocated < 64 * MiB  # the 4 MiB written, not the whole disk
    assert {x.target: (x.format, x.virtual_size) for x in b.disks} == {
        "vda": ("qcow2", 32 * MiB),
        "vdb": ("raw", 16 * MiB),
    }
    assert not a.registered and not a.protected
    assert b.registered and b.protected and b.policy == "gold"

    job = JobStore(conn).get(res.job_id)
    assert job.type == "discover" and job.state == "completed" and job.vm is None and job.host_uri == URI
    assert [p.name for p in job.phases] == ["list", "record"] and job.details["vms"] == len(res.vms)
    assert JobStore(conn).lock_holder(lock_key(URI)) is None

    conn.execute("UPDATE protections SET state = 'unprotected-retain' WHERE vm_uuid = ?", (two,))
    again = find_vm(conn, two)
    assert again is not None and again.registered and not again.protected


def test_second_discovery_of_same_host_is_refused(conn: sqlite3.Connection, cfg: Settings) -> None:
    held, release = threading.Event(), threading.Event()
    holder_ids: list[str] = []

    def hold() -> None:
        store = JobStore(db.connect(cfg.db_path))
        job = store.create("discover", host_uri=URI, lock_key=lock_key(URI))
        holder_ids.append(job.id)
        with store.run(job.id):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(DiscoveryInProgress) as ei:
            discover_host(conn, URI)
        assert ei.value.code == "DISCOVERY_IN_PROGRESS"
        assert "another discovery is already running" in ei.value.message
        assert ei.value.details["holder_job_id"] == holder_ids[0]
        refused = JobStore(conn).list(type="discover")
        assert [j.id for j in refused] == holder_ids  # the refused attempt left no job behind
    finally:
        release.set()
        t.join(30)
    assert discover_host(conn, URI).job_id != holder_ids[0]  # free again once the first ended


def test_no_registration_or_protection_rows_mean_no(tmp_path: Path) -> None:
    c = db.connect(tmp_path / "state.db")
    c.execute("INSERT INTO vms VALUES ('u1', 'x', ?, 'running', '[]', 'now', 'now', 0)", (URI,))
    (vm,) = list_vms(c)
    assert vm.name == "x" and not vm.registered and not vm.protected and vm.policy is None


def test_unreachable_host_fails_the_job(conn: sqlite3.Connection) -> None:
    uri = "test:///nonexistent/definition.xml"  # libvirt's test driver on a missing file: no network traffic
    with pytest.raises(HypervisorUnreachable):
        discover_host(conn, uri)
    (job,) = JobStore(conn).list(type="discover", host_uri=uri)
    assert job.state == "failed" and job.error and job.error["code"] == "HYPERVISOR_UNREACHABLE"
    assert JobStore(conn).lock_holder(lock_key(uri)) is None


def test_cli_discover_vms_jobs_json(
    cfg: Settings, domains: InvDomains, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["discover", "--host", URI, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (host,) = out["hosts"]
    assert out["errors"] == [] and host["host_uri"] == URI
    vms = {v["name"]: v for v in host["vms"] if v["name"].startswith(domains.prefix)}
    assert set(vms) == {domains.prefix + "one", domains.prefix + "two"}
    assert vms[domains.prefix + "one"]["disks"][0]["virtual_size"] == 64 * MiB

    assert main(["vms", "--state", "shutoff", "--host", URI, "--json"]) == 0
    listed = {v["uuid"] for v in json.loads(capsys.readouterr().out)}
    assert {domains.one.UUIDString(), domains.two.UUIDString()} <= listed
    assert main(["vms", "--state", "running", "--json"]) == 0
    assert not {domains.one.UUIDString(), domains.two.UUIDString()} & {
        v["uuid"] for v in json.loads(capsys.readouterr().out)
    }

    assert main(["jobs", "--type", "discover", "--since", "1h", "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)
    assert job["id"] == host["job_id"] and job["state"] == "completed"
    assert main(["job", "show", job["id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in shown["phases"]] == ["list", "record"] and shown["details"]["vms"] == len(host["vms"])
    monkeypatch.setattr(output.console, "width", 240)  # a wide terminal: the table does not wrap names
    assert main(["vms"]) == 0
    assert domains.prefix + "two" in capsys.readouterr().out  # the rich table


def test_cli_discover_refused_while_one_runs(cfg: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store = JobStore(db.connect(cfg.db_path))
    job = store.create("discover", host_uri=URI, lock_key=lock_key(URI))
    assert main(["discover", "--host", URI, "--json"]) == 1
    err = json.loads(capsys.readouterr().err)["error"]
    assert err["code"] == "DISCOVERY_IN_PROGRESS" and "another discovery is already running" in err["message"]
    assert main(["job", "cancel", job.id]) == 0
    assert "cancelled now" in capsys.readouterr().out
    assert main(["discover", "--host", URI]) == 0  # the lock went with the cancelled job


def test_undefined_domain_is_marked_gone(
    conn: sqlite3.Connection, domains: InvDomains, doomed: libvirt.virDomain
) -> None:
    """A domain undefined between two discoveries is marked gone; the shared ones stay."""
    first = _mine(discover_host(conn, URI).vms, domains.prefix)
    a, b = first["doomed"], first["two"]
    doomed.undefine()
    res = discover_host(conn, URI)
    assert a.uuid in res.gone and a.uuid not in {v.uuid for v in res.vms}
    assert not (set(res.new) & {a.uuid, b.uuid})
    gone = find_vm(conn, a.uuid)
    assert gone is not None and gone.gone and gone.state == "gone" and gone.disks[0].virtual_size == 64 * MiB
    assert [v.uuid for v in list_vms(conn, state="gone") if v.name.startswith(domains.prefix)] == [a.uuid]
    still = find_vm(conn, b.uuid)
    assert still is not None and not still.gone and still.first_seen == b.first_seen
    assert still.last_seen is not None and b.last_seen is not None and still.last_seen > b.last_seen
    assert JobStore(conn).get(res.job_id).details["gone"] == [a.uuid]
