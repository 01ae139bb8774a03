"""The one paramiko client setup: host-key policy, key loading and timeouts, for every SSH session into a guest.

    client = open_client("127.0.0.1", 22345, "root", key_path, timeout=15.0)   # connected, or paramiko's error
    try: ... finally: client.close()

Host keys: any key is accepted during the handshake. Callers that must trust the guest check the presented key
themselves before sending anything (registration: ``controller/registration/hostkeys.py``, trust on first use
bound to the VM's UUID); a boot-check VM or a lab VM is a throwaway guest on 127.0.0.1 whose key is new by design.
Errors are paramiko's and the socket's (``paramiko.AuthenticationException``, ``paramiko.SSHException``,
``OSError``, ``EOFError``); each caller translates them into its own typed errors.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import paramiko

#: sshd's port inside a guest (what a boot-check or restored lab VM forwards a host port to).
GUEST_SSH_PORT = 22


def open_client(host: str, port: int, user: str, key: str | Path | None, timeout: float) -> paramiko.SSHClient:
    """A connected SSH client: with ``key`` only (none: the SSH agent and ~/.ssh keys), ``timeout`` s per step.

    ``timeout`` bounds the TCP connect, the banner and the authentication each. The client is closed again when
    connecting fails.
    """
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            host,
            port=port,
            username=user,
            key_filename=None if key is None else str(key),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=key is None,
            look_for_keys=key is None,
        )
    except BaseException:
        client.close()
        raise
    return client


def fingerprint(pubkey_line: str) -> str:
    """The OpenSSH SHA256 fingerprint of a public key line (`ssh-ed25519 AAAA... comment`)."""
    blob = base64.b64decode(pubkey_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@contextlib.contextmanager
def quiet_transport() -> Iterator[None]:
    """Silence paramiko's transport errors (banner timeouts are expected while a guest boots)."""
    log = logging.getLogger("paramiko.transport")
    old = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(old)
