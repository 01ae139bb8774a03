"""Errors of the job store: per-VM exclusivity, cancellation, orphaned jobs, unknown ids."""

from __future__ import annotations

from controller.errors import VmBackupError
from controller.virt.exceptions import DomainBusy


class OperationInProgress(DomainBusy):
    """Another job holds this VM's lock (DomainBusy's code, OPERATION_IN_PROGRESS: one class per code)."""

    operation = "any"
    remediation = "Another operation holds this VM; wait for it to end (`vmbackup jobs --vm NAME --state in-progress`)."


class DiscoveryInProgress(VmBackupError):
    """A discovery of the same host is already running."""

    code = "DISCOVERY_IN_PROGRESS"
    operation = "discover"
    remediation = "Wait for the running discovery to finish (`vmbackup jobs --type discover`), then retry."


class JobCancelled(VmBackupError):
    """The job was cancelled (`vmbackup job cancel`) and stopped at a safe point."""

    code = "JOB_CANCELLED"
    operation = "any"
    remediation = "Nothing to fix: the job was cancelled on request. Start the operation again when wanted."


class ControllerRestarted(VmBackupError):
    """The process running the job died; the job was marked failed when the controller started again."""

    code = "CONTROLLER_RESTARTED"
    operation = "any"
    remediation = "The controller process running this job ended; run the operation again."


class JobNotFound(VmBackupError):
    """No job has this id."""

    code = "JOB_NOT_FOUND"
    operation = "any"
    remediation = "Use an id that `vmbackup jobs` lists."


class JobStateError(VmBackupError):
    """The job is not in a state that allows the requested transition (e.g. cancelling a finished job)."""

    code = "JOB_STATE_INVALID"
    operation = "any"
    remediation = "Check the job's state with `vmbackup job show ID`; finished jobs cannot be started or cancelled."


def lock_refused(key: str, holder_id: str, holder_type: str, vm_name: str | None) -> VmBackupError:
    """The error for a refused lock: DiscoveryInProgress for 'discover:<uri>' keys, else OperationInProgress."""
    details = {"lock": key, "holder_job_id": holder_id, "holder_type": holder_type}
    if key.startswith("discover:"):
        uri = key.split(":", 1)[1]
        return DiscoveryInProgress(f"another discovery is already running on {uri} (job {holder_id})", details=details)
    return OperationInProgress(
        f"another operation ({holder_type}, job {holder_id}) is already running on VM {vm_name or key}",
        details=details,
    )
