"""Fixtures for serve tests without VMs: a private VMBACKUP_HOME, policies, protected made-up VMs."""

from __future__ import annotations

import sqlite3
import uuid as uuid_mod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller import db, settings
from controller.policies.model import Policy
from controller.policies.parse import parse_text, to_yaml
from controller.policies.store import bind, save_policy
from controller.registration.store import Registration, save


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> settings.Settings:
    """A private VMBACKUP_HOME and vault for this test; returns its settings."""
    monkeypatch.setenv("VMBACKUP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VMBACKUP_VAULT", str(tmp_path / "home" / "vault"))
    return settings.load()


@pytest.fixture
def conn(home: settings.Settings) -> sqlite3.Connection:
    """The test's state DB with every schema."""
    import controller.jobs.store
    import controller.policies.store  # noqa: F401

    return db.connect(home.db_path)


@pytest.fixture
def policy(conn: sqlite3.Connection) -> Callable[[str], Policy]:
    """policy(yaml_text) -> the parsed policy, saved."""

    def make(text: str) -> Policy:
        p = parse_text(text)[0]
        save_policy(conn, p, to_yaml(p), replace=True)
        return p

    return make


@pytest.fixture
def protect(conn: sqlite3.Connection) -> Callable[..., Registration]:
    """protect(name, policy, since=None, host=...) -> a registered made-up VM bound to the policy."""

    def make(name: str, policy: str, since: datetime | None = None, host: str = "qemu:///system") -> Registration:
        reg = Registration(
            vm_uuid=str(uuid_mod.uuid4()), vm_name=name, host_uri=host, agent_host="127.0.0.1",
            agent_port=17470, ssh_host="127.0.0.1", ssh_port=2222, ssh_user="root", ssh_key=None,
            agent_version="0.1.0", cert_serial="01", registered_at=datetime.now(UTC).isoformat(),
        )
        save(conn, reg)
        bind(conn, reg.vm_uuid, name, policy)
        if since is not None:
            conn.execute("UPDATE protections SET since = ? WHERE vm_uuid = ?", (since.isoformat(), reg.vm_uuid))
        return reg

    return make
