"""Fixtures for policy and protection tests: a private VMBACKUP_HOME, a state DB, registered VMs, vault points."""

from __future__ import annotations

import sqlite3
import uuid as uuid_mod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller import db, settings
from controller.registration.store import Registration, save
from controller.vault import RecoveryPoint, Vault


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own VMBACKUP_HOME and vault."""
    monkeypatch.setenv("VMBACKUP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VMBACKUP_VAULT", str(tmp_path / "home" / "vault"))


@pytest.fixture
def conn() -> sqlite3.Connection:
    """The test's state DB (every registered schema, including policies and protections)."""
    import controller.jobs.store
    import controller.policies.store  # noqa: F401

    return db.connect(settings.load().db_path)


@pytest.fixture
def register(conn: sqlite3.Connection) -> Callable[[str], Registration]:
    """register(name) -> a registrations row (as the registration layer writes it) for a made-up VM."""

    def make(name: str) -> Registration:
        reg = Registration(
            vm_uuid=str(uuid_mod.uuid4()), vm_name=name, host_uri="qemu:///system", agent_host="127.0.0.1",
            agent_port=17470, ssh_host="127.0.0.1", ssh_port=2222, ssh_user="root", ssh_key=None,
            agent_version="0.1.0", cert_serial="01", registered_at=datetime.now(UTC).isoformat(),
        )
        save(conn, reg)
        return reg

    return make


@pytest.fixture
def add_point(tmp_path: Path) -> Callable[..., RecoveryPoint]:
    """add_point(vm_uuid, name, created, consistency) -> a real published vault point with a tiny raw disk."""
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\x01" * 4096 + b"\x00" * 4096)

    def make(vm_uuid: str, name: str, created: datetime, consistency: str = "FILE_SYSTEM") -> RecoveryPoint:
        vault = Vault(settings.load().vault)
        from controller.vault import new_point_id

        w = vault.new_point(vm_uuid, new_point_id(created))
        w.copy_disk("vda", src, fmt="raw")
        w.write_domain_xml(f"<domain><name>{name}</name></domain>")
        return w.publish({"vm": {"uuid": vm_uuid, "name": name, "host": "qemu:///system"},
                          "consistency": consistency, "created": created.isoformat()})

    return make
