"""The controller's side of quiescing: ask the agent to freeze and thaw, and decide the consistency reached.

The rules, in one place:

* agent froze and every application hook (or VSS writer) succeeded -> APPLICATION;
* agent froze, no hooks or a hook failed -> FILE_SYSTEM (the agent reports which; never silently upgraded);
* agent unreachable, freeze refused, thaw not confirmed, or the freeze did not hold for the whole window
  (auto-thawed early) -> CRASH, with the reason recorded and a warning on the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from controller.agentclient import AgentClient, FreezeResult, ThawResult, open_agent
from controller.errors import VmBackupError
from controller.registration.store import Registration
from controller.settings import Settings


@dataclass
class Quiesce:
    """Outcome of a freeze/thaw round."""

    consistency: str
    reason: str
    #: The controller's window: from the Freeze reply received to the Thaw reply received (None: no freeze).
    window_ms: float | None = None
    agent_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    created: str | None = None  # UTC ISO time of the snapshot: the recovery point's time
    #: The agent's first FIFREEZE to last FITHAW (None: no confirmed thaw, or an agent that does not measure it).
    guest_frozen_ms: float | None = None
    freeze_hooks_ms: int | None = None
    thaw_hooks_ms: int | None = None
    freeze_rpc_ms: float | None = None  # how long the Freeze call took, as the controller saw it
    thaw_rpc_ms: float | None = None  # how long the Thaw call took (the window's last part), as the controller saw it
    quiescer: str | None = None  # who was asked to freeze: "agent", "qga", "none" (None: nothing to quiesce)

    def timed(self, th: ThawResult, freeze_rpc_ms: float | None, thaw_rpc_ms: float | None = None) -> Quiesce:
        """This outcome with the agent's own timings from ``th`` and the Freeze and Thaw calls' durations."""
        self.guest_frozen_ms = th.guest_frozen_ms or None  # 0.0: an agent that does not measure it
        self.freeze_hooks_ms, self.thaw_hooks_ms = th.freeze_hooks_ms, th.thaw_hooks_ms
        self.freeze_rpc_ms = freeze_rpc_ms
        self.thaw_rpc_ms = thaw_rpc_ms
        return self


class AgentQuiescer:
    """One freeze/thaw round through a registered VM's agent; never raises for agent trouble (falls back to CRASH)."""

    def __init__(self, settings: Settings, registration: Registration, *, job_id: str, timeout_s: float):
        self.settings = settings
        self.reg = registration
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.token: str | None = None
        self._freeze: FreezeResult | None = None
        self._failure: str | None = None
        self._t_frozen = 0.0
        self._freeze_rpc_ms: float | None = None
        self._thaw_rpc_ms: float | None = None
        self._client: AgentClient | None = None
        self.agent_version: str | None = None

    def freeze(self) -> None:
        """Ask the agent to freeze; on any agent error remember why and carry on crash-consistent."""
        try:
            self._client = open_agent(self.settings, self.reg)
            self.agent_version = self._client.get_info().agent_version
            t_call = time.monotonic()
            self._freeze = self._client.freeze(None, self.timeout_s, self.job_id)
            self._t_frozen = time.monotonic()
            self.token = self._freeze.token
            self._freeze_rpc_ms = (self._t_frozen - t_call) * 1000
        except VmBackupError as e:
            self._failure = f"freeze failed: {e.code}: {e.message}"

    def skip(self, reason: str) -> None:
        """Do not ask the agent at all (e.g. a paused guest cannot answer): the round ends CRASH with this reason."""
        self._failure = reason

    def thaw(self) -> Quiesce:
        """Thaw (if frozen) and return the consistency reached."""
        q = self._thaw()
        q.quiescer = "agent"
        return q

    def _thaw(self) -> Quiesce:
        """The thaw call and the verdict."""
        version = self.agent_version
        client, frozen = self._client, self._freeze
        try:
            if self.token is None or frozen is None or client is None:
                reason = self._failure or "agent did not freeze"
                return Quiesce("CRASH", reason, None, version, [f"crash-consistent: {reason}"])
            t_call = time.monotonic()
            try:
                th = client.thaw(self.token)
                t_end = time.monotonic()
                window = (t_end - self._t_frozen) * 1000
                self._thaw_rpc_ms = (t_end - t_call) * 1000
            except VmBackupError as e:
                window = (time.monotonic() - self._t_frozen) * 1000
                reason = f"thaw not confirmed ({e.code}: {e.message}); snapshot result inconsistent"
                return Quiesce("CRASH", reason, window, version, [f"crash-consistent: {reason}"])
        finally:
            if client is not None:
                client.close()
        if not th.held:
            reason = "the freeze did not hold for the whole window (auto-thawed early): snapshot result inconsistent"
            crash = Quiesce("CRASH", reason, window, version, [f"crash-consistent: {reason}"])
            return crash.timed(th, self._freeze_rpc_ms, self._thaw_rpc_ms)
        hooks = [*frozen.hooks, *th.hooks]
        failed = [f"hook {h.name} ({h.action}) failed: exit {h.exit_code}{' (timed out)' if h.timed_out else ''}"
                  for h in hooks if not h.ok]
        consistency = th.consistency or frozen.consistency
        if consistency == "APPLICATION":
            reason = f"file systems frozen and {len(frozen.hooks)} application hook(s) succeeded"
        elif failed:
            reason = "file systems frozen; an application hook failed, so not application-consistent"
        else:
            reason = f"{len(frozen.frozen)} file system(s) frozen; no application hooks installed"
        return Quiesce(consistency, reason, window, version, failed + [f"agent: {e}" for e in th.errors]).timed(
            th, self._freeze_rpc_ms, self._thaw_rpc_ms)
