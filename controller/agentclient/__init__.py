"""The controller's gRPC client of the guest agent (mutual TLS, typed results and errors)."""

from controller.agentclient.client import MIN_API_VERSION, AgentClient
from controller.agentclient.exceptions import (
    AgentCallError,
    AgentClientError,
    AgentRefused,
    AgentTooOld,
    AgentUnreachable,
)
from controller.agentclient.factory import AgentAddress, AgentEndpoint, controller_tls, open_agent
from controller.agentclient.models import (
    AgentInfo,
    FilesystemInfo,
    FreezeResult,
    FreezeStatus,
    HookResult,
    ThawResult,
)
from controller.agentclient.tls import ClientTLS

__all__ = [
    "MIN_API_VERSION", "AgentAddress", "AgentCallError", "AgentClient", "AgentClientError", "AgentEndpoint",
    "AgentInfo", "AgentRefused", "AgentTooOld", "AgentUnreachable", "ClientTLS", "FilesystemInfo", "FreezeResult",
    "FreezeStatus", "HookResult", "ThawResult", "controller_tls", "open_agent",
]
