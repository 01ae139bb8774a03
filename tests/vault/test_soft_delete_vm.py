"""Soft delete and the chain of real backups (an OS-less QEMU domain, tests/backup/helpers.py): when the VM's newest
point is soft-deleted the next backup is a full saying why (the linear chain never forks), the one after builds on
that full, and a purge leaves every point restoring exactly the disk it was taken of."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.vault import Vault, recycle
from tests.backup.helpers import Tiny
from tests.backup.test_incremental import MiB, guest_write, paused_backup
from tests.helpers import register_without_agent

pytestmark = pytest.mark.vm


@pytest.fixture
def tiny_dom(settings: Any, lab_prefix: str) -> Iterator[Tiny]:
    """One tiny domain under the session's home (reachable by QEMU), undefined afterwards."""
    conn = libvirt.open(settings.uri)
    workdir = settings.home / f"tiny-{secrets.token_hex(3)}"
    workdir.mkdir(mode=0o755)
    t = Tiny(conn, workdir, f"{lab_prefix}tiny-{secrets.token_hex(3)}")
    try:
        yield t
    finally:
        t.remove()
        conn.close()


def test_newest_point_soft_deleted_next_backup_is_a_full(settings: Any, tiny_dom: Tiny, tmp_path: Path) -> None:
    """full A, incremental B; B soft-deleted: C is a full ("newest point B was deleted"), D an incremental on C;
    purge deletes B (no child: nothing merged) and A, C, D still restore the disk they were taken of."""
    t = tiny_dom
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", t.base, "64M"], check=True)
    register_without_agent(settings, t.uuid, t.name)
    t.dom.create()
    vault = Vault(settings.vault)
    flat: dict[str, Path] = {}

    def snap(pattern: int, offset: int) -> Any:
        """Write, back up (compared with the disk by paused_backup), keep a flat copy of the point's disk."""
        guest_write(t.dom, offset * MiB, 2 * MiB, pattern)
        res, stored = paused_backup(settings, t)
        flat[res.point_id] = tmp_path / f"{res.point_id}.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(stored), str(flat[res.point_id])], check=True)
        return res

    a = snap(0x11, 0)
    b = snap(0x22, 8)
    assert (b.point_type, b.parent) == ("incremental", a.point_id)
    vault.delete_point(vault.get_point(b.point_id), 14, by="vault delete")
    c = snap(0x33, 16)
    assert (c.point_type, c.parent, c.full_reason) == ("full", None, f"newest point {b.point_id} was deleted")
    d = snap(0x44, 24)
    assert (d.point_type, d.parent) == ("incremental", c.point_id)
    report = recycle.purge(vault, everything=True)
    assert (report.purged, report.merged, report.skipped) == ([b.point_id], {}, {})
    left = vault.list_points(t.uuid, include_deleted=True)
    assert sorted(p.point_id for p in left) == sorted([a.point_id, c.point_id, d.point_id])
    for p in left:
        out = tmp_path / f"after-{p.point_id}.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(p.path / p.manifest.disks[0].file), str(out)],
                       check=True)  # fmt: skip
        assert subprocess.run(["qemu-img", "compare", "-q", str(flat[p.point_id]), str(out)]).returncode == 0
