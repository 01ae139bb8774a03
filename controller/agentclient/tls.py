"""The controller's side of mTLS: CA bundle + controller client cert, and a revocation check of the agent."""

from __future__ import annotations

import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from controller.agentclient.exceptions import AgentRefused, AgentUnreachable
from controller.pki import CertificateAuthority


@dataclass(frozen=True)
class ClientTLS:
    """PEM material the controller presents and trusts; ``is_revoked`` checks agent cert serials."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    is_revoked: Callable[[int], bool] = field(default=lambda _serial: False)

    @classmethod
    def from_pki(cls, ca: CertificateAuthority) -> ClientTLS:
        """The controller's client cert (CN vmbackup-controller) and the CA, with the CA's revocation list."""
        issued = ca.controller_client_cert()
        return cls(ca.ca_pem, issued.cert_pem, issued.key_pem, ca.is_revoked)


def fetch_server_cert(
    host: str, port: int, server_name: str, tls: ClientTLS, timeout_s: float
) -> x509.Certificate:
    """Handshake once (same CA, same client cert, same name check as gRPC) and return the agent's cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=tls.ca_pem.decode("ascii"))
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="vmbackup-tls-") as tmp:
        cert, key = Path(tmp) / "c.crt", Path(tmp) / "c.key"
        cert.write_bytes(tls.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(tls.key_pem)
        ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
    except ssl.SSLEOFError as exc:
        # closed before any TLS answer: nothing listens behind the port yet (QEMU's user-mode port forwarding
        # accepts the connection and then drops it while the guest's agent is down or still starting)
        raise AgentUnreachable(f"the agent at {host}:{port} closed the connection before TLS: {exc}") from exc
    except ssl.SSLError as exc:
        raise AgentRefused(f"TLS handshake with {host}:{port} as {server_name} failed: {exc}") from exc
    except OSError as exc:
        raise AgentUnreachable(f"cannot connect to the agent at {host}:{port}: {exc}") from exc
    if der is None:
        raise AgentRefused(f"the agent at {host}:{port} presented no certificate")
    return x509.load_der_x509_certificate(der)
