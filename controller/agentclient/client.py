"""AgentClient: the controller's gRPC client of one VM's agent, over mutual TLS.

Every call has a deadline; gRPC failures become typed errors: AgentUnreachable (connect/timeout),
AgentRefused (TLS, revoked cert), AgentTooOld (contract too old), AgentCallError (the agent's own code and
remediation, read from trailing metadata ``vmbackup-error-code`` / ``vmbackup-remediation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vmbackup.agent.v1 import agent_pb2, agent_pb2_grpc

from controller.agentclient.exceptions import AgentCallError, AgentRefused, AgentTooOld, AgentUnreachable
from controller.agentclient.models import (
    AgentInfo,
    FilesystemInfo,
    FreezeResult,
    FreezeStatus,
    HookResult,
    ThawResult,
)
from controller.agentclient.tls import ClientTLS, fetch_server_cert
from controller.pki import agent_dns_name

T = TypeVar("T")
#: The lowest vmbackup.agent.v1 api_version this controller works with.
MIN_API_VERSION = 1
SERVICE_NAME = "vmbackup.agent.v1.Agent"
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate", "peer name")


def _consistency(value: int) -> str:
    """CONSISTENCY_FILE_SYSTEM -> FILE_SYSTEM."""
    return str(agent_pb2.Consistency.Name(value)).removeprefix("CONSISTENCY_")


def _hooks(msgs: Any) -> list[HookResult]:
    """HookResult messages -> dataclasses."""
    return [HookResult(h.name, h.action, h.exit_code, h.duration_ms, h.timed_out, h.output) for h in msgs]


class AgentClient:
    """A connection to the agent of VM ``vm_uuid`` at host:port."""

    def __init__(self, host: str, port: int, *, vm_uuid: str, tls: ClientTLS, call_timeout_s: float = 10.0,
                 freeze_timeout_s: float = 180.0, check_revocation: bool = True) -> None:
        self.host, self.port, self.vm_uuid = host, port, vm_uuid
        self.server_name = agent_dns_name(vm_uuid)
        self.tls = tls
        self.call_timeout_s = call_timeout_s
        self.freeze_timeout_s = freeze_timeout_s
        self._check_revocation = check_revocation
        creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
        self._channel = grpc.secure_channel(f"{host}:{port}", creds, options=[
            ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.enable_http_proxy", 0),
        ])
        self._stub = agent_pb2_grpc.AgentStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify_server_cert(self) -> int:
        """Handshake separately, refuse a revoked agent certificate; return its serial."""
        cert = fetch_server_cert(self.host, self.port, self.server_name, self.tls, self.call_timeout_s)
        if self.tls.is_revoked(cert.serial_number):
            raise AgentRefused(f"the agent at {self.host}:{self.port} presents revoked certificate "
                               f"serial {cert.serial_number:x}")
        return int(cert.serial_number)

    def _call(self, fn: Callable[..., T], request: Any, timeout_s: float, what: str) -> T:
        """Invoke one RPC with a deadline and translate its failure."""
        if self._check_revocation:
            self.verify_server_cert()
            self._check_revocation = False
        try:
            return fn(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._translate(exc, what) from exc

    def _translate(self, exc: grpc.RpcError, what: str) -> Exception:
        """gRPC error -> typed error."""
        call: Any = exc  # a grpc.Call too: code(), details(), trailing_metadata()
        code: grpc.StatusCode = call.code()
        details = str(call.details() or "")
        meta = {str(k): str(v) for k, v in (call.trailing_metadata() or ())}
        where = f"{what} on agent {self.host}:{self.port} ({self.vm_uuid})"
        if "vmbackup-error-code" in meta:
            return AgentCallError(f"{where}: {details}", agent_code=str(meta["vmbackup-error-code"]),
                                  grpc_status=code.name, remediation=meta.get("vmbackup-remediation"))
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return AgentTooOld(f"{where}: the agent does not implement it ({details})")
        if code == grpc.StatusCode.UNAVAILABLE and any(w in details.lower() for w in _TLS_WORDS):
            return AgentRefused(f"{where}: TLS refused: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return AgentUnreachable(f"{where}: {code.name}: {details}")
        return AgentCallError(f"{where}: {details}", agent_code=f"GRPC_{code.name}", grpc_status=code.name)

    def get_info(self) -> AgentInfo:
        """What the agent is and what it can freeze; AgentTooOld when its contract is older than needed."""
        r = self._call(self._stub.GetInfo, agent_pb2.GetInfoRequest(), self.call_timeout_s, "GetInfo")
        if r.api_version < MIN_API_VERSION:
            raise AgentTooOld(f"agent {r.agent_version} speaks api {r.api_version}, need {MIN_API_VERSION}+")
        return AgentInfo(
            agent_version=r.agent_version, api_version=r.api_version, os=r.os, os_release=r.os_release,
            kernel=r.kernel, hostname=r.hostname,
            filesystems=[FilesystemInfo(f.mount_point, f.device, f.fs_type, f.frozen, f.eligible, f.reason)
                         for f in r.filesystems],
            hooks=list(r.hooks), capabilities=list(r.capabilities), quiescer=r.quiescer,
            max_freeze_timeout_s=r.max_freeze_timeout_ms / 1000,
        )

    def freeze(
        self, mountpoints: Sequence[str] | None = None, timeout_s: float = 0.0, job_id: str = ""
    ) -> FreezeResult:
        """Freeze (empty/None mountpoints: every eligible filesystem); timeout_s 0 = the agent's default."""
        req = agent_pb2.FreezeRequest(mount_points=list(mountpoints or []), timeout_ms=int(timeout_s * 1000),
                                      job_id=job_id)
        r = self._call(self._stub.Freeze, req, self.freeze_timeout_s, "Freeze")
        return FreezeResult(
            token=r.token, frozen=list(r.frozen), skipped=[(s.mount_point, s.reason) for s in r.skipped],
            consistency=_consistency(r.consistency), hooks=_hooks(r.hooks), timeout_s=r.timeout_ms / 1000,
            freeze_ms=r.freeze_duration_ms,
        )

    def thaw(self, token: str) -> ThawResult:
        """Thaw; ``held`` False means the watchdog thawed first (record the point as CRASH)."""
        r = self._call(self._stub.Thaw, agent_pb2.ThawRequest(token=token), self.freeze_timeout_s, "Thaw")
        return ThawResult(
            thawed=list(r.thawed), frozen_ms=r.frozen_ms, held=r.held, auto_thawed=r.auto_thawed,
            consistency=_consistency(r.consistency), hooks=_hooks(r.hooks), errors=list(r.thaw_errors),
            guest_frozen_ms=r.guest_frozen_ms, freeze_hooks_ms=r.freeze_hooks_ms, thaw_hooks_ms=r.thaw_hooks_ms,
        )

    def freeze_status(self) -> FreezeStatus:
        """Whether a freeze is held and how the last one ended."""
        r = self._call(self._stub.FreezeStatus, agent_pb2.FreezeStatusRequest(), self.call_timeout_s,
                       "FreezeStatus")
        return FreezeStatus(r.frozen, r.job_id, list(r.frozen_mount_points), r.frozen_for_ms, r.timeout_ms,
                            r.last_end, r.last_job_id)

    def health(self) -> str:
        """grpc.health.v1 status of the Agent service: SERVING, NOT_SERVING, ..."""
        req = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        r = self._call(self._health.Check, req, self.call_timeout_s, "Health.Check")
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
