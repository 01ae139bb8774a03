"""File-level restore from the session's real lab VM: a file written before a full backup and one written before
the next (incremental) backup come back from the points, byte for byte, without booting them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.filerestore.session import open_point
from controller.vault import Vault
from tests.backup.test_backup_vm import ssh_ok

pytestmark = pytest.mark.vm


def backup(settings: Any, vm: str, **kw: Any) -> BackupResult:
    """One backup of the lab VM through the engine."""
    eng = BackupEngine(settings)
    try:
        return eng.run(BackupRequest(vm=vm, **kw))
    finally:
        eng.close()


def sha(path: Path) -> str:
    """Hex SHA-256 of a local file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_from_full_and_incremental_points(
    registered_vm: Any, lab_vm: Any, settings: Any, tmp_path: Path
) -> None:
    """/data1 (vdb, a whole-disk ext4): fr-a before the full, fr-b before the incremental; both from the
    incremental point, fr-a from the full; checksums equal the guest's."""
    ssh_ok(lab_vm, "dd if=/dev/urandom of=/data1/fr-a bs=1M count=3 conv=fsync 2>/dev/null && chmod 640 /data1/fr-a")
    want_a = ssh_ok(lab_vm, "sha256sum /data1/fr-a").split()[0]
    full = backup(settings, lab_vm.name, full=True)
    ssh_ok(lab_vm, "dd if=/dev/urandom of=/data1/fr-b bs=1M count=2 conv=fsync 2>/dev/null && sync")
    want_b = ssh_ok(lab_vm, "sha256sum /data1/fr-b").split()[0]
    inc = backup(settings, lab_vm.name)
    assert inc.point_type == "incremental" and inc.parent == full.point_id, inc
    vault = Vault(settings.vault)

    with open_point(inc.point_id, "vdb", vault=vault) as pf:
        names = {e.name for e in pf.ls("vdb:/")}
        assert {"fr-a", "fr-b"} <= names, names
        res = pf.get(["vdb:/fr-a", "vdb:/fr-b"], tmp_path / "inc")
    assert res.files == 2 and not res.skipped, res
    assert sha(tmp_path / "inc" / "fr-a") == want_a and sha(tmp_path / "inc" / "fr-b") == want_b
    assert (tmp_path / "inc" / "fr-a").stat().st_mode & 0o777 == 0o640

    with open_point(full.point_id, "vdb", vault=vault) as pf:
        assert "fr-b" not in {e.name for e in pf.ls("vdb:/")}
        pf.get(["vdb:/fr-a"], tmp_path / "full")
    assert sha(tmp_path / "full" / "fr-a") == want_a
