"""The gRPC servicer: protobuf in, FreezeManager calls, protobuf out; AgentError -> status + metadata."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from vmbackup.agent.v1 import agent_pb2, agent_pb2_grpc

from agent import API_VERSION, __version__
from agent.exceptions import AgentError
from agent.freeze import FreezeManager
from agent.info import HostFacts, hostname
from agent.quiesce.base import Consistency, HookRun

log = logging.getLogger("vmbackup.agent.service")
T = TypeVar("T")

ERROR_CODE_KEY = "vmbackup-error-code"
REMEDIATION_KEY = "vmbackup-remediation"

_CONSISTENCY = {
    Consistency.APPLICATION: agent_pb2.CONSISTENCY_APPLICATION,
    Consistency.FILE_SYSTEM: agent_pb2.CONSISTENCY_FILE_SYSTEM,
    Consistency.CRASH: agent_pb2.CONSISTENCY_CRASH,
}


def _hooks_pb(runs: list[HookRun]) -> list[Any]:
    """HookRun -> HookResult messages."""
    return [
        agent_pb2.HookResult(name=h.name, action=h.action, exit_code=h.exit_code, duration_ms=h.duration_ms,
                             timed_out=h.timed_out, output=h.output)
        for h in runs
    ]


class AgentService(agent_pb2_grpc.AgentServicer):  # type: ignore[misc]  # generated, untyped
    """Implements vmbackup.agent.v1.Agent."""

    def __init__(self, manager: FreezeManager, facts: HostFacts) -> None:
        self.manager = manager
        self.facts = facts

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        """Run ``fn``; turn an AgentError into its status code and the two metadata entries."""
        try:
            return fn()
        except AgentError as exc:
            log.warning("refused: %s", exc)
            context.set_trailing_metadata(((ERROR_CODE_KEY, exc.code), (REMEDIATION_KEY, exc.remediation)))
            context.abort(getattr(grpc.StatusCode, exc.grpc_status), exc.message)
        except Exception as exc:
            log.exception("internal error")
            context.set_trailing_metadata(
                ((ERROR_CODE_KEY, AgentError.code), (REMEDIATION_KEY, AgentError.remediation))
            )
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        """What the agent is and what it can freeze."""
        return self._call(context, self._info)

    def _info(self) -> Any:
        """Build GetInfoResponse (reads /proc and the hooks dir only)."""
        q = self.manager.quiescer
        frozen = self.manager.frozen_mount_points()
        fss = [
            agent_pb2.Filesystem(mount_point=f.mount_point, device=f.device, fs_type=f.fs_type,
                                 frozen=f.mount_point in frozen, eligible=f.eligible, reason=f.reason)
            for f in q.filesystems()
        ]
        return agent_pb2.GetInfoResponse(
            agent_version=__version__, api_version=API_VERSION, os=self.facts.os,
            os_release=self.facts.os_release,
            kernel=self.facts.kernel, hostname=hostname(), filesystems=fss, hooks=q.hooks(),
            capabilities=list(q.capabilities), quiescer=q.name,
            max_freeze_timeout_ms=int(self.manager.max_timeout_s * 1000),
        )

    def Freeze(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Freeze (hooks first), arm the watchdog, return the token."""
        def run() -> Any:
            mps = list(request.mount_points)
            # the watchdog's start and the log line run once the reply has left (add_callback: on RPC termination)
            token, s = self.manager.freeze(mps, request.timeout_ms / 1000, request.job_id,
                                           defer=context.add_callback)
            o = s.outcome
            return agent_pb2.FreezeResponse(
                token=token, frozen=o.frozen,
                skipped=[agent_pb2.SkippedFilesystem(mount_point=m, reason=r) for m, r in o.skipped],
                consistency=_CONSISTENCY[o.consistency], hooks=_hooks_pb(o.hooks),
                timeout_ms=int(s.timeout_s * 1000), freeze_duration_ms=o.freeze_ms,
            )
        return self._call(context, run)

    def Thaw(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Thaw by token; say whether the freeze held or the watchdog ended it."""
        def run() -> Any:
            r = self.manager.thaw(request.token)
            return agent_pb2.ThawResponse(
                thawed=r.thawed, frozen_ms=r.frozen_ms, held=r.held, auto_thawed=r.auto_thawed,
                hooks=_hooks_pb(r.outcome.hooks), consistency=_CONSISTENCY[r.consistency],
                thaw_errors=r.outcome.errors, guest_frozen_ms=r.guest_frozen_ms, freeze_hooks_ms=r.freeze_hooks_ms,
                thaw_hooks_ms=r.thaw_hooks_ms,
            )
        return self._call(context, run)

    def FreezeStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The current freeze and how the last one ended."""
        def run() -> Any:
            s = self.manager.status()
            return agent_pb2.FreezeStatusResponse(
                frozen=s.frozen, job_id=s.job_id, frozen_mount_points=s.mount_points,
                frozen_for_ms=s.frozen_for_ms, timeout_ms=s.timeout_ms, last_end=s.last_end,
                last_job_id=s.last_job_id,
            )
        return self._call(context, run)
