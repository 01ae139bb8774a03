"""Fixtures for serve tests without VMs: a state DB in the shared ``private_settings`` home, policies, protected
made-up VMs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime

import pytest

from controller import db, settings
from controller.policies.model import Policy
from controller.policies.parse import parse_text, to_yaml
from controller.policies.store import bind, save_policy
from controller.registration.store import Registration, save
from tests.helpers import made_up_registration


@pytest.fixture
def conn(private_settings: settings.Settings) -> sqlite3.Connection:
    """The test's state DB with every schema."""
    import controller.jobs.store
    import controller.policies.store  # noqa: F401

    return db.connect(private_settings.db_path)


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
        reg = made_up_registration(name, host_uri=host)
        save(conn, reg)
        bind(conn, reg.vm_uuid, name, policy)
        if since is not None:
            conn.execute("UPDATE protections SET since = ? WHERE vm_uuid = ?", (since.isoformat(), reg.vm_uuid))
        return reg

    return make
