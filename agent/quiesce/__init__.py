"""Quiescers: make a guest consistent for a snapshot (Linux: FIFREEZE + application hooks).

The vmbackup agent is Linux-only (agent/main.py refuses to start elsewhere). Windows guests are quiesced by the QEMU
guest agent's own VSS provider (virtio-win guest tools), which libvirt drives: `vmbackup register VM --quiescer qga`
(controller/backup/qga.py). An earlier VSS requester here relied on a "vmbackup VSS provider" that never existed.
"""

from __future__ import annotations

import sys

from agent.config import AgentConfig
from agent.exceptions import QuiesceUnavailable
from agent.quiesce import rcu
from agent.quiesce.base import Consistency, FreezeOutcome, FsEntry, HookRun, Quiescer, ThawOutcome
from agent.quiesce.fsfreeze import Guard
from agent.quiesce.linux import LinuxQuiescer

__all__ = ["Consistency", "FreezeOutcome", "FsEntry", "HookRun", "Quiescer", "ThawOutcome", "select_quiescer"]


def select_quiescer(cfg: AgentConfig, guard: Guard | None = None) -> Quiescer:
    """fsfreeze + hooks (armed with ``guard``); QuiesceUnavailable on any OS but Linux."""
    if not sys.platform.startswith("linux"):
        raise QuiesceUnavailable(f"the vmbackup agent quiesces Linux guests only, not {sys.platform}")
    rcu_switch = rcu.RCU_EXPEDITED if cfg.expedite_rcu else None
    return LinuxQuiescer(cfg.hooks_dir, cfg.hook_timeout_s, cfg.allowed_mount_points, guard=guard,
                         rcu_switch=rcu_switch)
