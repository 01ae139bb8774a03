"""Errors of the controller's agent client."""

from __future__ import annotations

from typing import Any

from controller.errors import VmBackupError


class AgentClientError(VmBackupError):
    """Base of the agent client's errors."""

    code = "AGENT_CLIENT_ERROR"
    operation = "backup"


class AgentUnreachable(AgentClientError):
    """No answer from the agent: connection refused, no route, or the call's deadline passed."""

    code = "AGENT_UNREACHABLE"
    remediation = (
        "Check the VM is running and the agent is up (in the guest: systemctl status vmbackup-agent) "
        "and that its port is forwarded; then retry."
    )


class AgentRefused(AgentClientError):
    """The TLS handshake failed or the agent's certificate is not acceptable (wrong CA, wrong VM, revoked)."""

    code = "AGENT_TLS_REFUSED"
    remediation = "Re-register the VM (vmbackup register) to install a certificate signed by this controller."


class AgentTooOld(AgentClientError):
    """The agent does not speak the contract version the controller needs."""

    code = "AGENT_TOO_OLD"
    remediation = "Upgrade the agent: run `vmbackup register VM` again (it installs the current agent in place)."


class AgentCallError(AgentClientError):
    """The agent answered with an error; ``agent_code`` and the remediation are the agent's own."""

    code = "AGENT_CALL_FAILED"
    remediation = "See the agent's message; journalctl -u vmbackup-agent in the guest has details."

    def __init__(self, message: str, *, agent_code: str, grpc_status: str, remediation: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{agent_code}: {message}", remediation=remediation,
                         details={"agent_code": agent_code, "grpc_status": grpc_status, **(details or {})})
        self.agent_code = agent_code
        self.grpc_status = grpc_status
