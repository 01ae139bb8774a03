"""The guest agent's error codes, as rows of the controller's error table.

An agent error reaches the controller as :class:`~controller.agentclient.exceptions.AgentCallError` whose
``agent_code`` and remediation come from the call's trailing metadata. The agent's codes are defined once, in
agent/exceptions.py (shipped in the same wheel as the controller); this module reads them from there so that
``vmbackup errors`` lists every code a user can see, whichever side raised it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import exceptions as agent_exceptions


@dataclass(frozen=True)
class AgentCode:
    """One agent error code: what it belongs to and what to do about it."""

    code: str
    operation: str
    grpc_status: str
    remediation: str


def _subclasses(cls: type[agent_exceptions.AgentError]) -> list[type[agent_exceptions.AgentError]]:
    """``cls`` and every subclass of it, depth first."""
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


def agent_codes() -> list[AgentCode]:
    """Every code the agent can answer with (the base AGENT_INTERNAL included), sorted by code."""
    seen: dict[str, AgentCode] = {}
    for cls in _subclasses(agent_exceptions.AgentError):
        seen[cls.code] = AgentCode(cls.code, cls.operation, cls.grpc_status, cls.remediation)
    return sorted(seen.values(), key=lambda c: c.code)
