"""Helpers shared by several test areas (fixtures live in conftest.py files and tests/fixtures_*.py)."""

from __future__ import annotations

import uuid as uuid_mod
from datetime import UTC, datetime
from typing import Any

from controller import db
from controller.registration.store import Registration, save


def made_up_registration(
    name: str, *, vm_uuid: str | None = None, host_uri: str = "qemu:///system", agent_port: int = 17470,
    ssh_port: int = 2222, agent_version: str = "0.1.0", cert_serial: str = "01",
) -> Registration:
    """A registrations row (as the registration layer writes it) for a VM no agent answers for."""
    return Registration(
        vm_uuid=vm_uuid or str(uuid_mod.uuid4()), vm_name=name, host_uri=host_uri, agent_host="127.0.0.1",
        agent_port=agent_port, ssh_host="127.0.0.1", ssh_port=ssh_port, ssh_user="root", ssh_key=None,
        agent_version=agent_version, cert_serial=cert_serial, registered_at=datetime.now(UTC).isoformat(),
    )


def register_without_agent(settings: Any, vm_uuid: str, name: str) -> None:
    """Save a registration whose agent is unreachable (port 1): a backup of that VM runs without asking it."""
    conn = db.connect(settings.db_path)
    try:
        save(conn, made_up_registration(name, vm_uuid=vm_uuid, host_uri=settings.uri, agent_port=1, ssh_port=1,
                                        agent_version="0", cert_serial="0"))
    finally:
        conn.close()
