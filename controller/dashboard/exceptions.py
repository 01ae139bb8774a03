"""Errors of the dashboard."""

from __future__ import annotations

from controller.errors import VmBackupError


class DashboardError(VmBackupError):
    """The dashboard could not be assembled (e.g. the state database cannot be read)."""

    code = "DASHBOARD_FAILED"
    operation = "dashboard"
    remediation = "Check that VMBACKUP_HOME points at the controller's state (state.db) and is readable."
