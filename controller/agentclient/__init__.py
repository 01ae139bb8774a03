"""The controller's gRPC client of the guest agent (mutual TLS, typed results and errors)."""

from controller.agentclient.client import MIN_API_VERSION, AgentClient
from controller.agentclient.exceptions import (
    AgentCallError,
    AgentClientError,
    AgentRefused,
    AgentTooOld,
    AgentUnreachable,
)
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
    "MIN_API_VERSION", "AgentCallError", "AgentClient", "AgentClientError", "AgentInfo", "AgentRefused",
    "AgentTooOld", "AgentUnreachable", "ClientTLS", "FilesystemInfo", "FreezeResult", "FreezeStatus",
    "HookResult", "ThawResult",
]
