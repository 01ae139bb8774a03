"""Errors of scheduling and retention."""

from __future__ import annotations

from controller.errors import VmBackupError


class SchedulingError(VmBackupError):
    """Base of scheduling errors."""

    code = "SCHEDULING_ERROR"
    operation = "schedule"
    remediation = "Check the policy's schedule (`vmbackup policy show NAME`)."


class NaiveDatetime(SchedulingError):
    """A time without a time zone was passed where an exact instant is needed (a programming error)."""

    code = "NAIVE_DATETIME"
    remediation = "This is a bug: pass timezone-aware datetimes (e.g. datetime.now(UTC))."


class PruneFailed(VmBackupError):
    """Deleting a recovery point during prune failed."""

    code = "PRUNE_FAILED"
    operation = "prune"
    remediation = "Check the vault directory's permissions and free space, then run `vmbackup prune` again."


class ServeAlreadyRunning(VmBackupError):
    """Another `vmbackup serve` already runs against this VMBACKUP_HOME."""

    code = "SERVE_ALREADY_RUNNING"
    operation = "serve"
    remediation = "Only one `vmbackup serve` may run per VMBACKUP_HOME: stop the other one (its pid is in serve.lock)."
