"""What a restore produced (shared by restore.py and replace.py, so neither imports the other's module for it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RestoreResult:
    """What a restore produced."""

    job_id: str
    point_id: str
    mode: str  # new-vm | instant | disks-only | replace
    vm_name: str = ""
    vm_uuid: str = ""
    host_uri: str = ""
    disks: dict[str, str] = field(default_factory=dict)  # target -> restored file
    kept_old: dict[str, str] = field(default_factory=dict)  # replace: target -> the replaced file, kept aside
    ports: dict[int, int] = field(default_factory=dict)  # guest port -> 127.0.0.1 host port
    macs: list[str] = field(default_factory=list)
    started: bool = False
    bytes_copied: int = 0
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    console_log: str = ""
    ssh_command: str = ""  # how to reach the new VM (when it forwards guest port 22)
    #: devices of the original not attached to the new VM, with why (domainxml.RewriteResult.dropped_devices)
    dropped_devices: list[dict[str, str]] = field(default_factory=list)
    #: instant: target -> the vault files under its overlay (the point's first); they stay pinned until finish
    backing: dict[str, list[str]] = field(default_factory=dict)
    agent_endpoint: str = ""  # 127.0.0.1:PORT of the guest agent's forward, when the VM has one

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return dict(vars(self))
