"""Facts of the agent contract that the guest agent and the controller share, defined once.

The agent ships alone and imports nothing from ``controller``; the controller ships in the same wheel as ``agent``
and already reads ``agent.exceptions`` for its error table. So the facts both sides must agree on live here, in a
module with no dependencies, and the controller imports them from ``agent.contract``:

* :data:`AGENT_PORT`: the agent's TCP port inside the guest (docs/design.md, "Fixed names and numbers").
* :class:`Consistency`: the consistency a snapshot reached, weakest first; the names are the suffixes of the
  ``vmbackup.agent.v1.Consistency`` proto enum and the values stored in manifests, policies and job records.
"""

from __future__ import annotations

import enum

#: The agent's gRPC port inside the guest.
AGENT_PORT = 7470


class Consistency(enum.Enum):
    """How consistent a snapshot taken inside the freeze window is (members weakest first)."""

    CRASH = "CRASH"
    FILE_SYSTEM = "FILE_SYSTEM"
    APPLICATION = "APPLICATION"


#: The consistency names, weakest first.
CONSISTENCY_LEVELS: tuple[str, ...] = tuple(c.value for c in Consistency)


def consistency_rank(level: str) -> int:
    """0 for CRASH, 1 for FILE_SYSTEM, 2 for APPLICATION (ValueError for anything else)."""
    return CONSISTENCY_LEVELS.index(level)
