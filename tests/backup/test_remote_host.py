"""A VM whose libvirt host is another machine is refused in the precheck (its disk paths are not ours to read).

Host-only: the engine gets a stub connection whose capabilities report a host UUID; the stub records every call,
so the test proves nothing was touched (no XML read, no snapshot) before the refusal.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup import engine as engine_mod
from controller.backup.engine import BackupEngine, BackupRequest
from controller.backup.exceptions import RemoteDataPathUnsupported
from controller.backup.intent import IntentStore
from controller.jobs.store import JobStore
from controller.virt.connection import is_this_host, local_host_uuid

CAPS = "<capabilities><host><uuid>{uuid}</uuid><cpu><arch>x86_64</arch></cpu></host></capabilities>"


class StubConn:
    """Just enough of virConnect: capabilities with a chosen host UUID."""

    def __init__(self, host_uuid: str):
        self.host_uuid = host_uuid

    def getCapabilities(self) -> str:
        return CAPS.format(uuid=self.host_uuid)

    def storagePoolCreateXML(self, xml: str, flags: int) -> Any:
        """What a remote libvirtd answers for a directory that exists only on our machine."""
        raise libvirt.libvirtError("cannot open directory: No such file or directory")


class StubDomain:
    """A domain that answers identity questions and records any other call (none may happen before the refusal)."""

    def __init__(self, conn: StubConn):
        self._conn = conn
        self._uuid = str(uuidlib.uuid4())
        self.touched: list[str] = []

    def UUIDString(self) -> str:
        return self._uuid

    def name(self) -> str:
        return "remote-vm"

    def connect(self) -> StubConn:
        return self._conn

    def __getattr__(self, attr: str) -> Any:
        self.touched.append(attr)
        raise AssertionError(f"the engine touched the remote VM ({attr}) before refusing it")


def _engine_on(monkeypatch: pytest.MonkeyPatch, settings: Any, host_uuid: str) -> tuple[BackupEngine, StubDomain]:
    conn = StubConn(host_uuid)
    dom = StubDomain(conn)

    @contextlib.contextmanager
    def fake_connection(uri: str) -> Iterator[StubConn]:
        yield conn

    monkeypatch.setattr(engine_mod, "connection", fake_connection)
    monkeypatch.setattr(engine_mod, "lookup", lambda _conn, _name: dom)
    eng = BackupEngine(settings)
    eng._recovered = True  # no recovery pass against the stub
    return eng, dom


@pytest.mark.libvirt
def test_a_vm_on_another_host_is_refused_before_anything_is_touched(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Another host UUID -> REMOTE_DATA_PATH_UNSUPPORTED in precheck; no intent, no point, nothing touched."""
    other = str(uuidlib.uuid4())
    assert other != local_host_uuid()
    eng, dom = _engine_on(monkeypatch, settings, other)
    with pytest.raises(RemoteDataPathUnsupported) as ei:
        eng.run(BackupRequest(vm="remote-vm", host_uri="qemu+ssh://other/system"))
    assert ei.value.code == "REMOTE_DATA_PATH_UNSUPPORTED"
    assert dom.touched == []
    job = JobStore(eng.conn).list(type="backup", vm=dom.UUIDString(), limit=1)[0]
    assert job.state == "failed" and (job.error or {}).get("code") == "REMOTE_DATA_PATH_UNSUPPORTED"
    assert [p.name for p in job.phases] == ["precheck"]
    assert dom.UUIDString() not in [i.vm_uuid for i in IntentStore(eng.conn).pending()]
    assert not (settings.vault / dom.UUIDString()).exists()
    eng.close()


def test_the_local_host_passes_the_check(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """The same host UUID passes the check (the engine goes on to the registration check)."""
    local = local_host_uuid()
    assert local, "this machine's libvirt host UUID must be readable"
    assert is_this_host(StubConn(local.upper()))  # compared case-insensitively
    eng, _dom = _engine_on(monkeypatch, settings, local)
    with pytest.raises(Exception) as ei:
        eng.run(BackupRequest(vm="remote-vm"))
    assert getattr(ei.value, "code", None) == "VM_NOT_REGISTERED"  # the next precheck step, not the host check
    eng.close()


@pytest.mark.libvirt
def test_a_real_local_connection_is_this_host(settings: Any) -> None:
    """The real connection of the configured URI (this machine's libvirtd) is recognised as local."""
    conn = libvirt.open(settings.uri)
    try:
        assert is_this_host(conn)
    finally:
        conn.close()


@pytest.mark.libvirt
def test_a_second_libvirtd_here_with_another_host_uuid_is_this_host(
    monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path
) -> None:
    """Without SMBIOS every libvirtd start makes up a host UUID (the e2e's namespaced libvirtd differs from the
    system one): the nonce-file probe through a transient dir pool proves the daemon sees our files."""
    from controller.virt import connection as conn_mod

    monkeypatch.setattr(conn_mod, "local_host_uuid", lambda: str(uuidlib.uuid4()))  # the UUIDs now differ
    conn = libvirt.open(settings.uri)
    try:
        assert conn_mod.sees_our_files(conn, tmp_path)
        assert is_this_host(conn, tmp_path)
        assert not is_this_host(conn)  # without a probe directory the differing UUIDs decide
        assert not is_this_host(StubConn(str(uuidlib.uuid4())), tmp_path)  # a daemon that cannot see the nonce
        assert list(tmp_path.iterdir()) == []  # the probe directory is removed
        assert not [n for n in conn.listStoragePools() if n.startswith("vmbackup-probe-")]  # and the pool
    finally:
        conn.close()
