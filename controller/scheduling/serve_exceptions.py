"""Errors of `vmbackup serve` (kept beside serve.py; they belong in scheduling/exceptions.py when its owner merges)."""

from __future__ import annotations

from controller.errors import VmBackupError


class ServeAlreadyRunning(VmBackupError):
    """Another `vmbackup serve` already runs against this VMBACKUP_HOME."""

    code = "SERVE_ALREADY_RUNNING"
    operation = "serve"
    remediation = "Only one `vmbackup serve` may run per VMBACKUP_HOME: stop the other one (its pid is in serve.lock)."
