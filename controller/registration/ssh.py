"""A small SSH session over paramiko: run a command with a deadline, push files over SFTP.

Errors are translated at the edge: unreachable -> SshUnreachable, refused key -> SshAuthFailed, a command over
its deadline -> CommandTimeout (the caller names what timed out). Commands run as root; a non-root user gets
``sudo -n`` in front.

Host keys: this module accepts any key during the handshake; callers check it against the key recorded for the
VM (trust on first use, bound to the VM's UUID: ``hostkeys.py``) before sending anything. Trust in the agent
afterwards rests on mutual TLS.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko

from controller.registration.exceptions import GuestCommandFailed, SshAuthFailed, SshUnreachable


@dataclass(frozen=True)
class SshEndpoint:
    """Where and as whom to SSH into a guest."""

    host: str
    port: int = 22
    user: str = "root"
    key: str | None = None


@dataclass(frozen=True)
class Result:
    """What a remote command returned."""

    rc: int
    out: str
    err: str
    seconds: float


class CommandTimeout(Exception):
    """A remote command ran past its deadline (internal: callers map it to a typed error)."""

    def __init__(self, cmd: str, timeout: float):
        super().__init__(f"{cmd!r} did not finish in {timeout:g} s")
        self.cmd = cmd
        self.timeout = timeout


class SshSession:
    """An open SSH connection to one guest."""

    def __init__(self, endpoint: SshEndpoint, client: paramiko.SSHClient):
        self.endpoint = endpoint
        self.client = client
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> SshSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close SFTP and the connection."""
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()

    def host_key(self) -> paramiko.PKey:
        """The host key the guest's sshd presented in this session's handshake."""
        transport = self.client.get_transport()
        if transport is None:
            raise SshUnreachable(f"SSH connection to {self.endpoint.host}:{self.endpoint.port} was lost")
        return transport.get_remote_server_key()

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The (lazily opened) SFTP channel."""
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def run(self, cmd: str, timeout: float = 60.0) -> Result:
        """Run ``cmd`` under /bin/sh as root; raise CommandTimeout after ``timeout`` seconds."""
        if self.endpoint.user != "root":
            cmd = f"sudo -n sh -c {shlex.quote(cmd)}"
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SshUnreachable(f"SSH connection to {self.endpoint.host}:{self.endpoint.port} was lost")
        start = time.monotonic()
        chan = transport.open_session()
        chan.settimeout(1.0)
        chan.exec_command(cmd)
        out, err = bytearray(), bytearray()
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() - start > timeout:
                chan.close()
                raise CommandTimeout(cmd, timeout)
            time.sleep(0.05)
        rc = chan.recv_exit_status()
        chan.close()
        return Result(
            rc, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - start
        )

    def check(self, cmd: str, timeout: float = 60.0, what: str = "") -> Result:
        """Run ``cmd`` and raise GuestCommandFailed (with its output) when it exits non-zero."""
        res = self.run(cmd, timeout)
        if res.rc != 0:
            tail = "\n".join((res.err or res.out).strip().splitlines()[-20:])
            raise GuestCommandFailed(
                f"{what or cmd} failed in the guest (exit {res.rc}): {tail.splitlines()[-1] if tail else ''}",
                details={"command": cmd, "exit_code": res.rc, "output": tail},
            )
        return res

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a local file to ``remote`` and set its mode."""
        self.sftp.put(str(local), remote)
        self.sftp.chmod(remote, mode)

    def write(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote`` with ``mode`` (the mode is set before the data is written)."""
        with self.sftp.open(remote, "wb") as f:
            f.chmod(mode)
            f.write(data)

    def read(self, remote: str) -> bytes:
        """The contents of a remote file."""
        with self.sftp.open(remote, "rb") as f:
            return f.read()

    def exists(self, remote: str) -> bool:
        """Whether a remote path exists."""
        try:
            self.sftp.stat(remote)
        except FileNotFoundError:
            return False
        return True


def connect(endpoint: SshEndpoint, timeout: float = 20.0) -> SshSession:
    """Open an SSH session with the endpoint's key (agent/default keys when none), or raise a typed error."""
    where = f"{endpoint.user}@{endpoint.host}:{endpoint.port}"
    if endpoint.key is not None and not Path(endpoint.key).is_file():
        raise SshAuthFailed(f"SSH key {endpoint.key} does not exist", details={"endpoint": where})
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.user,
            key_filename=endpoint.key,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=endpoint.key is None,
            allow_agent=endpoint.key is None,
        )
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SshAuthFailed(f"SSH to {where} refused the key: {exc}", details={"endpoint": where}) from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        client.close()
        msg = str(exc) or type(exc).__name__
        raise SshUnreachable(f"cannot SSH to {where}: {msg}", details={"endpoint": where}) from exc
    return SshSession(endpoint, client)


def wait_connect(endpoint: SshEndpoint, wait_s: float, timeout: float = 20.0) -> SshSession:
    """connect(), retrying SSH_UNREACHABLE for up to ``wait_s`` seconds (a guest still booting)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return connect(endpoint, timeout)
        except SshUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(2.0)
