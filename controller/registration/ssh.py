"""A small SSH session over paramiko: run a command with a deadline, push files over SFTP.

Errors are translated at the edge: unreachable -> SshUnreachable, refused key -> SshAuthFailed, a command over
its deadline -> CommandTimeout (the caller names what timed out), an SFTP transfer during which the guest sends
nothing for ``sftp_stall_s`` -> SshTransferTimeout. Commands run as root; a non-root user gets ``sudo -n`` in front
(:func:`controller.registration.guest.check_privilege` refuses a user without passwordless sudo up front), and its
files are uploaded to a private temporary name, then moved into place as root.

Host keys: the client (:func:`controller.ssh.client.open_client`) accepts any key during the handshake; callers
check it against the key recorded for the VM (trust on first use, bound to the VM's UUID: ``hostkeys.py``) before
sending anything. Trust in the agent
afterwards rests on mutual TLS.
"""

from __future__ import annotations

import base64
import io
import secrets
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import paramiko

from controller.registration.exceptions import GuestCommandFailed, SshAuthFailed, SshTransferTimeout, SshUnreachable
from controller.ssh.client import GUEST_SSH_PORT, open_client

#: Seconds an SFTP request may go without an answer from the guest before the transfer is abandoned.
SFTP_STALL_S = 60.0
#: Where a non-root user's uploads wait (private name, O_EXCL) before ``sudo mv`` puts them in place.
UPLOAD_PREFIX = "/var/tmp/.vmbackup-upload-"


@dataclass(frozen=True)
class SshEndpoint:
    """Where and as whom to SSH into a guest."""

    host: str
    port: int = GUEST_SSH_PORT
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

    def __init__(self, endpoint: SshEndpoint, client: paramiko.SSHClient, sftp_stall_s: float = SFTP_STALL_S):
        self.endpoint = endpoint
        self.client = client
        self.sftp_stall_s = sftp_stall_s
        self._sftp: paramiko.SFTPClient | None = None
        #: Whether the SSH user is uid 0 itself (else commands run under ``sudo -n``); guest.check_privilege
        #: sets it from ``id -u`` for a user not named root.
        self.as_root = endpoint.user == "root"

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
        """The (lazily opened) SFTP channel; every read on it waits at most ``sftp_stall_s``."""
        if self._sftp is None:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise SshUnreachable(f"SSH connection to {self.endpoint.host}:{self.endpoint.port} was lost")
            chan = transport.open_session(timeout=self.sftp_stall_s)
            chan.settimeout(self.sftp_stall_s)
            chan.invoke_subsystem("sftp")
            self._sftp = paramiko.SFTPClient(chan)
        return self._sftp

    @contextmanager
    def _transfer(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """The SFTP client for one operation; a stalled guest becomes SshTransferTimeout (the channel is dropped)."""
        try:
            yield self.sftp
        except TimeoutError as exc:  # socket.timeout: the channel timeout of a read or a full send window
            sftp, self._sftp = self._sftp, None
            if sftp is not None:
                sftp.close()
            raise SshTransferTimeout(
                f"{what}: the guest did not answer over SFTP for {self.sftp_stall_s:g} s",
                details={"endpoint": f"{self.endpoint.host}:{self.endpoint.port}", "stall_s": self.sftp_stall_s},
            ) from exc

    def run(self, cmd: str, timeout: float = 60.0, *, as_user: bool = False) -> Result:
        """Run ``cmd`` under /bin/sh as root (``as_user``: as the SSH user); CommandTimeout after ``timeout`` s."""
        if not self.as_root and not as_user:
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
        """Copy a local file to ``remote`` with ``mode`` (the mode is set before the data is written)."""
        with open(local, "rb") as f:
            self._upload(f, remote, mode)

    def write(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote`` with ``mode`` (the mode is set before the data is written)."""
        self._upload(io.BytesIO(data), remote, mode)

    def _upload(self, src: BinaryIO, remote: str, mode: int) -> None:
        """Stream ``src`` to ``remote`` over SFTP (pipelined).

        As root the file is written in place. Otherwise it is uploaded to a fresh private name under /var/tmp
        (created exclusively) and moved into place by root (owner root:root): the user cannot write root's
        directories itself.
        """
        target = remote if self.as_root else f"{UPLOAD_PREFIX}{secrets.token_hex(8)}"
        with self._transfer(f"writing {remote}") as sftp, sftp.open(target, "wb" if self.as_root else "wbx") as f:
            f.chmod(mode)
            f.set_pipelined(True)
            shutil.copyfileobj(src, f, 32768)
        if not self.as_root:
            t, r = shlex.quote(target), shlex.quote(remote)
            self.check(f"chown root:root {t} && mv -f {t} {r} || {{ rc=$?; rm -f {t}; exit $rc; }}",
                       what=f"moving {remote} into place")

    def read(self, remote: str) -> bytes:
        """The contents of a remote file."""
        if not self.as_root:
            res = self.check(f"base64 < {shlex.quote(remote)}", what=f"reading {remote}")
            return base64.b64decode(res.out)
        with self._transfer(f"reading {remote}") as sftp, sftp.open(remote, "rb") as f:
            return f.read()

    def exists(self, remote: str) -> bool:
        """Whether a remote path exists (as root sees it)."""
        if not self.as_root:
            return self.run(f"test -e {shlex.quote(remote)}", timeout=60).rc == 0
        with self._transfer(f"checking {remote}") as sftp:
            try:
                sftp.stat(remote)
            except FileNotFoundError:
                return False
        return True


def connect(endpoint: SshEndpoint, timeout: float = 20.0) -> SshSession:
    """Open an SSH session with the endpoint's key (agent/default keys when none), or raise a typed error."""
    where = f"{endpoint.user}@{endpoint.host}:{endpoint.port}"
    if endpoint.key is not None and not Path(endpoint.key).is_file():
        raise SshAuthFailed(f"SSH key {endpoint.key} does not exist", details={"endpoint": where})
    try:
        client = open_client(endpoint.host, endpoint.port, endpoint.user, endpoint.key, timeout)
    except paramiko.AuthenticationException as exc:
        raise SshAuthFailed(f"SSH to {where} refused the key: {exc}", details={"endpoint": where}) from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
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
