"""The registrations table: save/get/list/delete against a real SQLite state DB."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from controller import db
from controller.registration.store import (
    Registration,
    delete,
    get_registration,
    list_registrations,
    now_iso,
    save,
)


def _reg(uuid: str, name: str) -> Registration:
    """A registration with plausible values."""
    return Registration(
        vm_uuid=uuid,
        vm_name=name,
        host_uri="qemu:///system",
        agent_host="127.0.0.1",
        agent_port=17470,
        ssh_host="127.0.0.1",
        ssh_port=12222,
        ssh_user="root",
        ssh_key="/k",
        agent_version="0.1.0",
        cert_serial="abc123",
        registered_at=now_iso(),
    )


def test_save_get_list_delete(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    a = _reg("00000000-0000-0000-0000-00000000000a", "web")
    b = _reg("00000000-0000-0000-0000-00000000000b", "db")
    assert get_registration(conn, a.vm_uuid) is None
    save(conn, a)
    save(conn, b)
    assert get_registration(conn, a.vm_uuid) == a
    assert [r.vm_name for r in list_registrations(conn)] == ["db", "web"]
    upgraded = replace(a, agent_version="0.2.0", cert_serial="def456")
    save(conn, upgraded)  # re-register replaces in place
    assert get_registration(conn, a.vm_uuid) == upgraded
    assert len(list_registrations(conn)) == 2
    assert delete(conn, a.vm_uuid) is True
    assert delete(conn, a.vm_uuid) is False
    assert get_registration(conn, a.vm_uuid) is None
    # another connection (another process) sees the same rows
    assert [r.vm_uuid for r in list_registrations(db.connect(tmp_path / "state.db"))] == [b.vm_uuid]
