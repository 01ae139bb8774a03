"""Quiescers: make a guest consistent for a snapshot (Linux FIFREEZE + hooks, Windows VSS)."""

from __future__ import annotations

import sys

from agent.config import AgentConfig
from agent.quiesce.base import Consistency, FreezeOutcome, FsEntry, HookRun, Quiescer, ThawOutcome
from agent.quiesce.fsfreeze import Guard
from agent.quiesce.linux import LinuxQuiescer
from agent.quiesce.windows_vss import VssQuiescer, load_windows_backend

__all__ = ["Consistency", "FreezeOutcome", "FsEntry", "HookRun", "Quiescer", "ThawOutcome", "select_quiescer"]


def select_quiescer(cfg: AgentConfig, guard: Guard | None = None) -> Quiescer:
    """The quiescer for this platform: VSS on Windows, fsfreeze + hooks (armed with ``guard``) elsewhere."""
    if sys.platform == "win32":
        return VssQuiescer(load_windows_backend(), cfg.vss_backup_type)
    return LinuxQuiescer(cfg.hooks_dir, cfg.hook_timeout_s, cfg.allowed_mount_points, guard=guard)
