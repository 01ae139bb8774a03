"""The one way the controller opens a client to a VM's agent: an endpoint plus the controller's PKI.

Every caller (backup's freeze/thaw, recovery's thaw, registration's final check, boot-check's probe) goes through
:func:`open_agent`, and closes what it opened::

    with open_agent(settings, registration) as client:      # a Registration: agent_host, agent_port, vm_uuid
        info = client.get_info()
    with open_agent(settings, AgentAddress("127.0.0.1", port, vm_uuid)) as client:   # not a registration
        ...

The endpoint is a structural type, so this layer does not import the registration package (which imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.agentclient.client import AgentClient
from controller.agentclient.tls import ClientTLS
from controller.pki import CertificateAuthority
from controller.settings import Settings


class AgentEndpoint(Protocol):
    """Where a VM's agent listens (as seen from the controller) and which VM its certificate must name."""

    @property
    def agent_host(self) -> str: ...

    @property
    def agent_port(self) -> int: ...

    @property
    def vm_uuid(self) -> str: ...


@dataclass(frozen=True)
class AgentAddress:
    """An endpoint that is not a stored registration (a boot-check clone's forwarded port, a VM being registered)."""

    agent_host: str
    agent_port: int
    vm_uuid: str


def controller_tls(settings: Settings) -> ClientTLS:
    """The controller's client certificate, the CA and its revocation list, from ``settings.pki_dir``."""
    return ClientTLS.from_pki(CertificateAuthority.load_or_create(settings.pki_dir))


def open_agent(
    settings: Settings,
    endpoint: AgentEndpoint,
    *,
    tls: ClientTLS | None = None,
    call_timeout_s: float = 10.0,
    check_revocation: bool = True,
) -> AgentClient:
    """An mTLS client of ``endpoint``'s agent (a context manager: the channel closes on exit).

    ``tls`` reuses material a caller already loaded (a retry loop); by default it is read from the settings' PKI.
    """
    return AgentClient(
        endpoint.agent_host,
        int(endpoint.agent_port),
        vm_uuid=endpoint.vm_uuid,
        tls=tls if tls is not None else controller_tls(settings),
        call_timeout_s=call_timeout_s,
        check_revocation=check_revocation,
    )
