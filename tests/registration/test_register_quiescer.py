"""Registration modes (--quiescer agent|qga|auto) without a guest: libvirt's in-process test driver (no qemu-ga
channel) and an SSH endpoint that refuses. The real qga registration is in tests/backup/test_qga_guest.py."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from controller import db, schema
from controller.cli.main import main
from controller.registration.precheck import EndpointOverrides
from controller.registration.register import RegisterOptions, Registrar
from controller.registration.store import get_registration, save
from controller.registration.unregister import Unregistrar
from controller.settings import Settings
from tests.helpers import made_up_registration

URI = "test:///default"
REFUSING = EndpointOverrides(ssh_host="127.0.0.1", ssh_port=1)  # nothing listens on port 1: SSH_UNREACHABLE


def test_qga_without_a_channel_is_refused_with_the_fix(private_settings: Settings) -> None:
    with Registrar(private_settings) as r, pytest.raises(Exception) as err:
        r.register("test", RegisterOptions(uri=URI, quiescer="qga"))
    e: Any = err.value
    assert e.code == "QGA_CHANNEL_MISSING" and "org.qemu.guest_agent.0" in e.remediation
    assert "--quiescer qga" in e.remediation
    with db.connect(private_settings.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0


def test_agent_mode_fails_where_auto_falls_back_to_none_with_warnings(private_settings: Settings) -> None:
    with Registrar(private_settings) as r:
        with pytest.raises(Exception) as err:
            r.register("test", RegisterOptions(uri=URI, endpoints=REFUSING))
        assert getattr(err.value, "code", None) == "SSH_UNREACHABLE"
        res = r.register("test", RegisterOptions(uri=URI, endpoints=REFUSING, quiescer="auto"))
    reg = res.registration
    assert reg.quiescer == "none" and reg.ssh_host == "" and reg.cert_serial == ""
    assert "SSH_UNREACHABLE" in res.warnings[0] and "QGA_CHANNEL_MISSING" in res.warnings[1]
    conn = db.connect(private_settings.db_path)
    try:
        assert get_registration(conn, reg.vm_uuid) == reg
        details = json.loads(conn.execute("SELECT details_json FROM jobs WHERE id = ?", (res.job_id,)).fetchone()[0])
    finally:
        conn.close()
    assert details["quiescer"] == "none" and len(details["warnings"]) == 2
    with Unregistrar(private_settings) as u:  # no SSH, no certificate: forgotten without touching the guest
        out = u.unregister("test", uri=URI)
    assert not out.guest_cleaned and out.revoked_serial == ""


def test_cli_lists_the_quiescer(private_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    conn = db.connect(private_settings.db_path)
    try:
        save(conn, made_up_registration("with-agent"))
        save(conn, _agentless(made_up_registration("with-qga")))
    finally:
        conn.close()
    assert main(["register", "--list", "--json"]) == 0
    rows = {r["vm_name"]: r["quiescer"] for r in json.loads(capsys.readouterr().out)}
    assert rows == {"with-agent": "agent", "with-qga": "qga"}
    with pytest.raises(SystemExit):
        main(["register", "x", "--quiescer", "bogus"])


def _agentless(reg: Any) -> Any:
    """The registration as a qga one."""
    import dataclasses

    return dataclasses.replace(reg, agent_host="", agent_port=0, ssh_host="", ssh_port=0, cert_serial="",
                               quiescer="qga")


def test_migration_3_gives_existing_registrations_the_agent(private_settings: Settings) -> None:
    """A version-2 database's registrations become quiescer 'agent' (they all had the vmbackup agent)."""
    raw = sqlite3.connect(private_settings.db_path)
    for m in schema.MIGRATIONS[:2]:
        for stmt in m.statements():
            raw.execute(stmt)
    raw.execute("PRAGMA user_version = 2")
    raw.execute("INSERT INTO registrations VALUES ('u1', 'old', 'qemu:///system', '127.0.0.1', 7470, '127.0.0.1', "
                "22, 'root', NULL, '0.1.0', '0a', 'now')")
    raw.commit()
    raw.close()
    conn = db.connect(private_settings.db_path)
    try:
        reg = get_registration(conn, "u1")
        assert db.user_version(conn) == schema.LATEST >= 3
    finally:
        conn.close()
    assert reg is not None and reg.quiescer == "agent" and reg.cert_serial == "0a"


def test_cli_default_is_auto(private_settings: Settings) -> None:
    """`register VM` without --quiescer asks for auto (the vmbackup agent where it can be installed)."""
    from controller.cli import register_cmd
    from controller.cli.main import build_parser

    args = build_parser().parse_args(["register", "vm1"])
    assert args.quiescer == "auto" and register_cmd._options(args).quiescer == "auto"


def test_auto_never_downgrades_a_vm_that_has_the_agent(private_settings: Settings) -> None:
    """auto on a VM registered with the vmbackup agent is an upgrade: SSH failing is an error, the row unchanged."""
    import dataclasses

    conn = db.connect(private_settings.db_path)
    try:
        import libvirt

        uuid = libvirt.open(URI).lookupByName("test").UUIDString()
        before = dataclasses.replace(made_up_registration("test", vm_uuid=uuid), host_uri=URI)
        save(conn, before)
    finally:
        conn.close()
    with Registrar(private_settings) as r, pytest.raises(Exception) as err:
        r.register("test", RegisterOptions(uri=URI, endpoints=REFUSING, quiescer="auto"))
    assert getattr(err.value, "code", None) == "SSH_UNREACHABLE"
    conn = db.connect(private_settings.db_path)
    try:
        assert get_registration(conn, uuid) == before
    finally:
        conn.close()
