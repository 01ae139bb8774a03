"""The vault: recovery points on disk.

Layout (``VAULT`` is ``settings.vault``, default ``$VMBACKUP_HOME/vault``)::

    VAULT/
      <vm-uuid>/                           lower-case libvirt uuid
        <point-id>/                        published point, e.g. 20261125T101500Z-3fa9c1 (UTC time + 6 hex)
          manifest.json                    see below
          domain.xml                       the domain's inactive XML as it was at backup time
          disks/<target>.qcow2             one self-contained image per disk (no backing file);
          disks/<target>.raw               a raw source without backing chain stays raw (see "file")
          SHA256SUMS                       sha256 of manifest.json and domain.xml (format 3; see sums.py)
        .tmp-<point-id>/                   a point being written (or left by a crash): never listed

A point is built under ``.tmp-<point-id>``; every file is fsynced, then the directory, then it is renamed to
``<point-id>`` and the VM directory is fsynced. A point is therefore either complete or invisible.
The writer holds a ``flock`` on its ``.tmp-`` directory while it works, so ``Vault.remove_partials()`` clears
only leftovers of dead writers (crashed or killed processes), never a backup in progress.
Deleting a point renames it back to ``.tmp-<point-id>`` first, then removes it; what is deleted is found from the
directory names (``Vault.delete_by_id``), never from a manifest. A manifest whose ``point_id`` or VM uuid differs
from its directories is refused on load (MANIFEST_ID_MISMATCH) and reported by ``vault verify``. Nothing below the
vault root may be a symlink (PATH_ESCAPE); ``Vault.verify_all`` reports such a VM directory as one failing entry and
still verifies every other point.

manifest.json (format_version 3; format 1 and 2 points, which have no SHA256SUMS, are still read and verified)::

    {"format_version": 3, "point_id": "...", "vm": {"uuid": "...", "name": "...", "host": "qemu:///system"},
     "created": "2026-11-25T10:15:00+00:00", "consistency": "APPLICATION|FILE_SYSTEM|CRASH",
     "consistency_reason": "...", "freeze_window_ms": 41.2, "guest_frozen_ms": 12.5 | null,
     "freeze_hooks_ms": 0 | null, "thaw_hooks_ms": 0 | null,
     "disks": [{"target": "vda", "file": "disks/vda.qcow2", "format": "qcow2", "virtual_size": ...,
                "logical_size": ..., "stored_bytes": ..., "digest": "sha256-4m:...", "source_path": "...",
                "method": "sparse-copy|qemu-img-convert"}],
     "agent_version": "...", "controller_version": "...", "policy": "...", "job_id": "...",
     "boot_check": null | {...}}

``virtual_size`` is the guest-visible size, ``logical_size`` the stored file's apparent size (what ``digest``
covers: SHA-256 over 4 MiB chunk digests, so holes cost nothing; see ``digest.py``), ``stored_bytes`` what it
occupies on the vault filesystem.
``boot_check`` is filled later with ``Vault.update_manifest(point, boot_check={...})`` (atomic rewrite).

Every uuid, point id and disk target is checked against a strict pattern and every path is resolved and must
stay inside the vault (``PATH_ESCAPE`` / ``INVALID_ARGUMENT`` otherwise).

Usage::

    vault = Vault(settings.vault)
    vault.check_space(bytes_needed)
    with vault.new_point(vm_uuid) as w:             # leaving with an exception aborts (removes .tmp-<id>)
        w.copy_disk("vda", "/var/lib/libvirt/images/web1.qcow2", progress=cb, fmt="qcow2")
        w.write_domain_xml(xml)
        vm = {"uuid": vm_uuid, "name": "web1", "host": uri}
        point = w.publish({"vm": vm, "consistency": "FILE_SYSTEM"})
    copy_out_disk(point, "vda", "/restore/web1-vda.qcow2")   # verifies the checksum while copying
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.vault.copyout import copy_out_disk, verify_point_quick
    from controller.vault.layout import new_point_id
    from controller.vault.manifest import DiskRecord, Manifest, RecoveryPoint
    from controller.vault.vault import DiskVerify, Vault, VerifyResult
    from controller.vault.writer import PointWriter

#: Each public name and the module that defines it. They are imported on first use (PEP 562), so a caller that
#: needs only the manifest (the dashboard of 10,000 VMs, `vmbackup errors`) does not pay for the copy engine and
#: the key store.
_EXPORTS = {
    "DiskRecord": "controller.vault.manifest",
    "DiskVerify": "controller.vault.vault",
    "Manifest": "controller.vault.manifest",
    "PointWriter": "controller.vault.writer",
    "RecoveryPoint": "controller.vault.manifest",
    "Vault": "controller.vault.vault",
    "VerifyResult": "controller.vault.vault",
    "copy_out_disk": "controller.vault.copyout",
    "new_point_id": "controller.vault.layout",
    "verify_point_quick": "controller.vault.copyout",
}

__all__ = [
    "DiskRecord",
    "DiskVerify",
    "Manifest",
    "PointWriter",
    "RecoveryPoint",
    "Vault",
    "VerifyResult",
    "copy_out_disk",
    "new_point_id",
    "verify_point_quick",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'controller.vault' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
