"""Errors of the controller's shared state (the state database), not owned by any one layer."""

from __future__ import annotations

from controller.errors import VmBackupError


class StateSchemaTooNew(VmBackupError):
    """The state database was written by a newer vmbackup whose schema this one does not know."""

    code = "STATE_SCHEMA_TOO_NEW"
    operation = "any"
    remediation = (
        "Run the vmbackup release that last wrote this state database (or a newer one); an older release "
        "cannot read it. `vmbackup --version` prints the release you are running."
    )
