"""SSH edges of registration: SFTP has a deadline, and a user without root or passwordless sudo is refused early.

The SFTP tests run a real paramiko SSH server in-process on 127.0.0.1 whose SFTP subsystem stops answering
(before or after the version handshake), so the client's channel timeout is exercised end to end in ~1 s.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from controller.registration import guest
from controller.registration.exceptions import SshTransferTimeout, SshUserNotPrivileged
from controller.registration.ssh import Result, SshEndpoint, connect

STALL_S = 0.5


class _Server(paramiko.ServerInterface):
    """Accepts any public key, opens session channels."""

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


def _stalling_sftp(answer_version: bool) -> type[paramiko.SubsystemHandler]:
    """An SFTP subsystem that (optionally) completes the version handshake, then never answers again."""

    class Stall(paramiko.SubsystemHandler):
        def start_subsystem(self, name: str, transport: paramiko.Transport, channel: paramiko.Channel) -> None:
            channel.settimeout(0.1)
            answered = False
            while not channel.closed and transport.is_active():
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                if answer_version and not answered:  # SSH_FXP_VERSION (2), version 3, no extensions
                    channel.sendall(struct.pack(">IBI", 5, 2, 3))
                    answered = True

    return Stall


@pytest.fixture(params=[False, True], ids=["stall-at-init", "stall-after-init"])
def stalling_sshd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """(port on 127.0.0.1, client key path) of a one-connection SSH server with a stalling SFTP subsystem."""
    host_key = paramiko.ECDSAKey.generate()
    client_key = paramiko.ECDSAKey.generate()
    key_path = tmp_path / "id_ecdsa"
    client_key.write_private_key_file(str(key_path))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = listener.accept()
        t = paramiko.Transport(conn)
        transports.append(t)
        t.add_server_key(host_key)
        t.set_subsystem_handler("sftp", _stalling_sftp(answer_version=request.param))
        t.start_server(server=_Server())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, str(key_path)
    for t in transports:
        t.close()
    listener.close()


@pytest.mark.timeout(30)
def test_stalled_sftp_is_a_typed_timeout(stalling_sshd: tuple[int, str]) -> None:
    """write() over a guest that stops answering raises SSH_TRANSFER_TIMEOUT after about the stall limit."""
    port, key = stalling_sshd
    session = connect(SshEndpoint("127.0.0.1", port, "root", key), timeout=10)
    session.sftp_stall_s = STALL_S
    with session:
        t0 = time.monotonic()
        with pytest.raises(SshTransferTimeout) as ei:
            session.write("/etc/vmbackup-agent/tls/agent.key", b"secret", mode=0o600)
        took = time.monotonic() - t0
    assert ei.value.code == "SSH_TRANSFER_TIMEOUT" and "agent.key" in ei.value.message
    assert took < STALL_S + 3.0, took


def _res(rc: int, out: str = "", err: str = "") -> Result:
    return Result(rc, out, err, 0.01)


def test_privilege_decision() -> None:
    """uid 0 is root as is; otherwise passwordless sudo must give uid 0; anything else is refused, saying why."""
    assert guest.privilege_of("root", _res(0, "0\n"), None) == "root"
    assert guest.privilege_of("admin", _res(0, "0\n"), None) == "root"  # a uid-0 user not named root
    assert guest.privilege_of("debian", _res(0, "1000\n"), _res(0, "0\n")) == "sudo"
    for sudo, why in [
        (_res(1, err="sudo: a password is required\n"), "sudo: a password is required"),
        (_res(127, err="sh: 1: sudo: not found\n"), "sh: 1: sudo: not found"),
        (_res(0, "1000\n"), "1000"),  # sudo "works" but not as root (a runas default): still not privileged
    ]:
        with pytest.raises(SshUserNotPrivileged) as ei:
            guest.privilege_of("debian", _res(0, "1000\n"), sudo)
        assert ei.value.code == "SSH_USER_NOT_PRIVILEGED"
        assert "'debian' is not root (uid 1000)" in ei.value.message and why in ei.value.message
        assert "--ssh-user root" in ei.value.remediation and "NOPASSWD" in ei.value.remediation


class _FakeSession:
    """What check_privilege uses of an SshSession, answering like a guest where the user has no sudo."""

    def __init__(self, user: str, uid: str, sudo_ok: bool) -> None:
        self.endpoint = SshEndpoint("127.0.0.1", 22, user)
        self.as_root = user == "root"
        self.uid, self.sudo_ok = uid, sudo_ok
        self.commands: list[tuple[str, bool]] = []

    def run(self, cmd: str, timeout: float = 60.0, *, as_user: bool = False) -> Result:
        self.commands.append((cmd, as_user))
        if as_user:
            return _res(0, self.uid + "\n")
        return _res(0, "0\n") if self.sudo_ok else _res(1, err="sudo: a password is required\n")


def test_check_privilege_asks_the_guest_only_for_non_root() -> None:
    """root runs nothing; a sudo user is kept on sudo; a uid-0 user drops sudo; no sudo is refused."""
    root = _FakeSession("root", "0", sudo_ok=False)
    assert guest.check_privilege(root) == "root" and root.commands == []  # type: ignore[arg-type]
    sudoer = _FakeSession("debian", "1000", sudo_ok=True)
    assert guest.check_privilege(sudoer) == "sudo" and not sudoer.as_root  # type: ignore[arg-type]
    assert sudoer.commands == [("id -u", True), ("id -u", False)]
    uid0 = _FakeSession("toor", "0", sudo_ok=False)
    assert guest.check_privilege(uid0) == "root" and uid0.as_root  # type: ignore[arg-type]
    with pytest.raises(SshUserNotPrivileged):
        guest.check_privilege(_FakeSession("debian", "1000", sudo_ok=False))  # type: ignore[arg-type]
