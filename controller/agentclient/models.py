"""What the agent client returns: small dataclasses, not protobufs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilesystemInfo:
    """One filesystem inside the guest."""

    mount_point: str
    device: str
    fs_type: str
    frozen: bool
    eligible: bool
    reason: str


@dataclass(frozen=True)
class AgentInfo:
    """GetInfo."""

    agent_version: str
    api_version: int
    os: str
    os_release: str
    kernel: str
    hostname: str
    filesystems: list[FilesystemInfo]
    hooks: list[str]
    capabilities: list[str]
    quiescer: str
    max_freeze_timeout_s: float


@dataclass(frozen=True)
class HookResult:
    """One hook run."""

    name: str
    action: str
    exit_code: int
    duration_ms: int
    timed_out: bool
    output: str

    @property
    def ok(self) -> bool:
        """True when the hook exited 0 in time."""
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class FreezeResult:
    """Freeze: the token for Thaw and what was frozen."""

    token: str
    frozen: list[str]
    skipped: list[tuple[str, str]]
    consistency: str  # APPLICATION | FILE_SYSTEM | CRASH
    hooks: list[HookResult]
    timeout_s: float
    freeze_ms: int


@dataclass(frozen=True)
class ThawResult:
    """Thaw: what was thawed and whether the freeze held until now."""

    thawed: list[str]
    frozen_ms: int
    held: bool
    auto_thawed: bool
    consistency: str
    hooks: list[HookResult]
    errors: list[str]
    #: First FIFREEZE to last FITHAW inside the guest, in ms (0.0: an older agent, or nothing was frozen).
    guest_frozen_ms: float = 0.0
    freeze_hooks_ms: int = 0
    thaw_hooks_ms: int = 0


@dataclass(frozen=True)
class FreezeStatus:
    """FreezeStatus."""

    frozen: bool
    job_id: str
    mount_points: list[str]
    frozen_for_ms: int
    timeout_ms: int
    last_end: str
    last_job_id: str
