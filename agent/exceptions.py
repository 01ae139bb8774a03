"""Typed errors of the guest agent, each with a stable code, a gRPC status and a remediation.

The agent cannot import ``controller.errors``, so this is its own small equivalent. The gRPC service turns an
:class:`AgentError` into the call's status code plus trailing metadata ``vmbackup-error-code`` and
``vmbackup-remediation`` (see protos/vmbackup/agent/v1/agent.proto).
"""

from __future__ import annotations

from typing import ClassVar


class AgentError(Exception):
    """Base of every error the agent reports."""

    code: ClassVar[str] = "AGENT_INTERNAL"
    #: Name of the grpc.StatusCode member the service answers with.
    grpc_status: ClassVar[str] = "INTERNAL"
    operation: ClassVar[str] = "backup"
    remediation: ClassVar[str] = "Unexpected agent failure; see `journalctl -u vmbackup-agent` in the guest."

    def __init__(self, message: str, *, remediation: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if remediation is not None:
            self.remediation = remediation  # type: ignore[misc]  # per-instance override

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigInvalid(AgentError):
    """The agent's YAML config or a file it names is not acceptable."""

    code = "AGENT_CONFIG_INVALID"
    grpc_status = "FAILED_PRECONDITION"
    operation = "register"
    remediation = "Fix the file and field named in the message, then restart vmbackup-agent."


class AlreadyFrozen(AgentError):
    """A Freeze arrived while a freeze is held."""

    code = "ALREADY_FROZEN"
    grpc_status = "FAILED_PRECONDITION"
    remediation = "Thaw the current freeze (its token) or wait for the watchdog to thaw it, then retry."


class NotFrozen(AgentError):
    """A Thaw arrived while nothing is frozen."""

    code = "NOT_FROZEN"
    grpc_status = "FAILED_PRECONDITION"
    remediation = "Nothing to thaw; the freeze already ended (check FreezeStatus)."


class InvalidToken(AgentError):
    """A Thaw carried a token that does not match the current freeze."""

    code = "INVALID_TOKEN"
    grpc_status = "PERMISSION_DENIED"
    remediation = "Use the token the Freeze call returned; the watchdog thaws a lost freeze automatically."


class InvalidRequest(AgentError):
    """A request field is out of range or names something unknown."""

    code = "INVALID_REQUEST"
    grpc_status = "INVALID_ARGUMENT"
    remediation = "Correct the request as the message says (see GetInfo for mount points and limits)."


class MountNotAllowed(AgentError):
    """A Freeze named a mount point outside the config's allowed_mount_points."""

    code = "MOUNT_NOT_ALLOWED"
    grpc_status = "PERMISSION_DENIED"
    remediation = "Add it to allowed_mount_points in the agent config, or do not request it."


class FreezeFailed(AgentError):
    """Freezing a filesystem failed; everything frozen before it was thawed again."""

    code = "FREEZE_FAILED"
    grpc_status = "ABORTED"
    remediation = (
        "Nothing is left frozen. Check the filesystem named in the message (dmesg in the guest); "
        "the backup can proceed crash-consistent or be retried."
    )


class ShuttingDown(AgentError):
    """The agent is stopping and accepts no new freeze."""

    code = "AGENT_SHUTTING_DOWN"
    grpc_status = "UNAVAILABLE"
    remediation = "Retry once vmbackup-agent has restarted (systemctl status vmbackup-agent)."


class QuiesceUnavailable(AgentError):
    """No quiescing mechanism works on this platform."""

    code = "QUIESCE_UNAVAILABLE"
    grpc_status = "UNIMPLEMENTED"
    remediation = "This OS is not supported for consistent backups; back up crash-consistent instead."


class VssFailed(AgentError):
    """The Windows Volume Shadow Copy service refused or aborted the snapshot set."""

    code = "VSS_FAILED"
    grpc_status = "ABORTED"
    remediation = "Check `vssadmin list writers` in the guest for failed writers, then retry."
