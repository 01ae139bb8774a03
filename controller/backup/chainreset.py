"""Resetting a VM's incremental chain from the commands that break it (unprotect, unregister), by VM uuid.

They hold no libvirt domain, only the VM's uuid and its host's URI: :func:`reset_vm_chain` looks the domain up
there and calls :func:`controller.backup.cbt.reset_chain`, so the reset is recorded (the next backup is a full with
the reason) and vmbackup's ``vmb-*`` checkpoints are deleted. A host that cannot be reached or a VM that is gone
still gets the reset recorded; its checkpoints, if any are left, are deleted by its next backup::

    deleted = reset_vm_chain(conn, "qemu:///system", vm_uuid, "VM unprotected")

A caller that already holds the domain (restore ``--replace``) calls ``cbt.reset_chain`` itself.
"""

from __future__ import annotations

import sqlite3

from controller.backup import cbt
from controller.errors import VmBackupError
from controller.virt.connection import connection, lookup
from controller.virt.exceptions import HypervisorUnreachable


def reset_vm_chain(conn: sqlite3.Connection, uri: str, vm_uuid: str, reason: str) -> list[str]:
    """Record the chain reset of the VM ``vm_uuid`` on host ``uri`` and delete its vmbackup checkpoints.

    Returns the checkpoints deleted (empty when the host is unreachable or the VM is not defined there).
    """
    try:
        with connection(uri) as lv:
            try:
                dom = lookup(lv, vm_uuid)
            except VmBackupError:  # gone (or libvirt refused the look-up): the mark alone forces the full
                dom = None
            return cbt.reset_chain(conn, dom, vm_uuid, reason)
    except HypervisorUnreachable:
        return cbt.reset_chain(conn, None, vm_uuid, reason)


def detail(reason: str, deleted: list[str]) -> dict[str, object]:
    """The ``chain_reset`` entry a job records: why, and which checkpoints went."""
    return {"reason": reason, "checkpoints_deleted": deleted}
