"""Protection bindings: registration required, one policy per VM, POLICY_IN_USE, unprotect retain/delete, jobs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller import settings
from controller.jobs.store import JobStore
from controller.policies import store
from controller.policies.exceptions import (
    NotProtected,
    PolicyInUse,
    PolicyNotFound,
    ProtectRequiresRegistration,
)
from controller.policies.model import Policy
from controller.policies.parse import parse_text, to_yaml
from controller.policies.protect import ProtectionService
from controller.registration.store import Registration
from controller.vault import Vault


def _policy(conn: sqlite3.Connection, name: str, extra: str = "") -> Policy:
    """Store a simple daily policy."""
    p = parse_text(f"name: {name}\nschedule: {{daily: '22:00'}}\nretention: {{keep_last: 2}}\n{extra}")[0]
    store.save_policy(conn, p, to_yaml(p))
    return p


def _svc(conn: sqlite3.Connection, runner: Any = None) -> ProtectionService:
    """The service on the test's DB."""
    return ProtectionService(settings.load(), conn=conn, backup_runner=runner)


def test_unregistered_vm_refused_and_nothing_changes(conn: sqlite3.Connection, register: Any) -> None:
    """One unregistered VM in a bulk protect refuses the whole command before any binding."""
    _policy(conn, "gold")
    web = register("web1")
    with pytest.raises(ProtectRequiresRegistration, match="not registered: ghost"):
        _svc(conn).protect(["web1", "ghost"], "gold")
    assert store.get_protection(conn, web.vm_uuid) is None
    assert JobStore(conn).list(type="configure-protection") == []


def test_unknown_policy_refused(conn: sqlite3.Connection, register: Any) -> None:
    """Protecting with a policy that does not exist is POLICY_NOT_FOUND."""
    register("web1")
    with pytest.raises(PolicyNotFound):
        _svc(conn).protect(["web1"], "nope")


def test_bulk_protect_one_job_per_vm_and_pending_status(conn: sqlite3.Connection, register: Any) -> None:
    """Each VM gets a completed configure-protection job and 'initial backup pending' until a point exists."""
    _policy(conn, "gold")
    regs = [register("web1"), register("db1")]
    outs = _svc(conn).protect(["web1", regs[1].vm_uuid.upper()], "gold")
    assert [o.vm_name for o in outs] == ["web1", "db1"]
    jobs = JobStore(conn).list(type="configure-protection")
    assert sorted(j.vm.uuid if j.vm else "" for j in jobs) == sorted(r.vm_uuid for r in regs)
    assert {j.state for j in jobs} == {"completed"}
    assert {o.status for o in outs} == {"Protected (initial backup pending)"}
    assert {o.change for o in outs} == {"new"}


def test_one_policy_per_vm_rebinding_replaces(conn: sqlite3.Connection, register: Any) -> None:
    """Protecting with another policy replaces the binding (shown as 'rebound from')."""
    _policy(conn, "gold")
    _policy(conn, "silver")
    web = register("web1")
    svc = _svc(conn)
    svc.protect(["web1"], "gold")
    (out,) = svc.protect(["web1"], "silver")
    assert out.change == "rebound from gold"
    rows = store.list_protections(conn)
    assert [(r.vm_uuid, r.policy) for r in rows] == [(web.vm_uuid, "silver")]
    (again,) = svc.protect(["web1"], "silver")
    assert again.change == "unchanged"


def test_delete_policy_in_use_refused(conn: sqlite3.Connection, register: Any) -> None:
    """POLICY_IN_USE while a VM is protected by it; allowed once the VM moved away or is retain-only."""
    _policy(conn, "gold")
    _policy(conn, "silver")
    register("web1")
    svc = _svc(conn)
    svc.protect(["web1"], "gold")
    with pytest.raises(PolicyInUse, match="web1") as ei:
        store.delete_policy(conn, "gold")
    assert ei.value.code == "POLICY_IN_USE"
    assert store.get_policy(conn, "gold").policy.name == "gold"
    svc.unprotect("web1", delete_data=False)
    store.delete_policy(conn, "gold")
    with pytest.raises(PolicyNotFound):
        store.get_policy(conn, "gold")


def test_status_becomes_protected_after_first_point(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]
) -> None:
    """--now runs the backup seam; once a point exists the status is 'Protected'.

    The seam stands in for controller.backup.engine (a real backup needs a booted VM): it publishes a real point.
    """
    _policy(conn, "gold", "consistency: FILE_SYSTEM\n")
    register("web1")
    calls: list[tuple[str, str | None]] = []

    def runner(_s: settings.Settings, reg: Registration, pol: Policy) -> str:
        calls.append((reg.vm_name, pol.min_consistency))
        return str(add_point(reg.vm_uuid, reg.vm_name, datetime.now(UTC)).point_id)

    (out,) = _svc(conn, runner).protect(["web1"], "gold", now=True)
    assert calls == [("web1", "FILE_SYSTEM")]
    assert out.backup_point and out.status == "Protected"


def test_now_backup_failure_is_reported_binding_stays(conn: sqlite3.Connection, register: Any) -> None:
    """A failing initial backup is recorded on the outcome; the VM stays protected (pending)."""
    from controller.backup.exceptions import ConsistencyNotMet

    _policy(conn, "gold")
    reg = register("web1")

    def runner(_s: settings.Settings, _r: Registration, _p: Policy) -> str:
        raise ConsistencyNotMet("only CRASH reached")

    (out,) = _svc(conn, runner).protect(["web1"], "gold", now=True)
    assert out.backup_error and out.backup_error["code"] == "CONSISTENCY_NOT_MET"
    assert out.status == "Protected (initial backup pending)"
    assert store.get_protection(conn, reg.vm_uuid) is not None


def test_unprotect_retain_keeps_row_and_points(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]
) -> None:
    """--retain-data: state unprotected-retain, points untouched, a stop-protection job recorded."""
    _policy(conn, "gold")
    reg = register("web1")
    svc = _svc(conn)
    svc.protect(["web1"], "gold")
    add_point(reg.vm_uuid, "web1", datetime.now(UTC) - timedelta(days=1))
    out = svc.unprotect("web1", delete_data=False)
    prot = store.get_protection(conn, reg.vm_uuid)
    assert prot is not None and prot.state == "unprotected-retain" and not prot.active
    assert svc.status(reg.vm_uuid) == "Unprotected (data retained)"
    assert len(Vault(settings.load().vault).list_points(reg.vm_uuid)) == 1
    assert JobStore(conn).get(out.job_id).state == "completed"


def test_unprotect_delete_removes_points_and_row(
    conn: sqlite3.Connection, register: Any, add_point: Callable[..., Any]
) -> None:
    """--delete-data: every point of that VM goes (through Vault.delete_point), other VMs' points stay."""
    _policy(conn, "gold")
    web, db1 = register("web1"), register("db1")
    svc = _svc(conn)
    svc.protect(["web1", "db1"], "gold")
    now = datetime.now(UTC)
    made = {add_point(web.vm_uuid, "web1", now - timedelta(hours=h)).point_id for h in (1, 2, 3)}
    add_point(db1.vm_uuid, "db1", now)
    out = svc.unprotect(web.vm_uuid, delete_data=True)
    vault = Vault(settings.load().vault)
    assert set(out.deleted_points) == made
    assert vault.list_points(web.vm_uuid) == []
    assert len(vault.list_points(db1.vm_uuid)) == 1
    assert store.get_protection(conn, web.vm_uuid) is None
    job = JobStore(conn).get(out.job_id)
    assert job.type == "stop-protection" and job.state == "completed"


def test_unprotect_unknown_vm(conn: sqlite3.Connection) -> None:
    """Unprotecting a VM without protection is NOT_PROTECTED."""
    with pytest.raises(NotProtected):
        _svc(conn).unprotect("web1", delete_data=False)
