"""State fixtures of the policy and scheduling tests: a private home (autouse where imported), a state DB,
registered made-up VMs and real vault points.

A conftest opts in with ``from tests.fixtures_state import _private_home, add_point, conn, register``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from controller import db, settings
from controller.registration.store import Registration, save
from controller.vault import RecoveryPoint, Vault, new_point_id
from tests.helpers import made_up_registration


@pytest.fixture(autouse=True)
def _private_home(private_home: Path) -> None:
    """Every test gets its own VMBACKUP_HOME and vault (the shared ``private_home`` fixture)."""


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
        reg = made_up_registration(name)
        save(conn, reg)
        return reg

    return make


@pytest.fixture
def add_point(tmp_path: Path) -> Callable[..., RecoveryPoint]:
    """add_point(vm_uuid, name, created, consistency) -> a real published vault point with a tiny raw disk."""
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\x01" * 4096 + b"\x00" * 4096)

    def make(vm_uuid: str, name: str, created: datetime, consistency: str = "FILE_SYSTEM") -> RecoveryPoint:
        w = Vault(settings.load().vault).new_point(vm_uuid, new_point_id(created))
        w.copy_disk("vda", src, fmt="raw")
        w.write_domain_xml(f"<domain><name>{name}</name></domain>")
        return w.publish({"vm": {"uuid": vm_uuid, "name": name, "host": "qemu:///system"},
                          "consistency": consistency, "created": created.isoformat()})

    return make
