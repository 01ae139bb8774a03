"""Recovery never loses guest writes and never touches another job's overlay (real libvirt, tiny OS-less domains).

Each test defines a small qemu domain on a 16 MiB qcow2 disk (it never boots an OS: starting it only runs the
firmware), takes the backup's real external snapshot with ``take_snapshot``, and plays the fault: the VM is
destroyed after the snapshot (guest writes are simulated with ``qemu-io`` on the overlay, as the guest would have
made them), or another job's overlay is present. Then ``recover`` runs as at controller start.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller import db
from controller.backup.exceptions import OverlayInUse
from controller.backup.intent import IntentStore
from controller.backup.offline import remove_overlay_guarded
from controller.backup.recovery import recover
from controller.backup.snapshot import overlay_path, take_snapshot
from controller.virt.domain import disks
from tests.backup.helpers import Tiny, qemu_io

pytestmark = pytest.mark.vm

def _intent(settings: Any, t: Tiny, job_id: str, overlays: dict[str, str] | None = None) -> IntentStore:
    """Record a pending intent of a backup job of `t`, as a controller that died after the snapshot leaves it."""
    store = IntentStore(db.connect(settings.db_path))
    store.begin(job_id, t.uuid, t.name, settings.uri, {"vda": t.base})
    store.step(job_id, "snapshotted", overlays=overlays or {})
    return store


def _job() -> str:
    return f"20260101-000000-{secrets.token_hex(3)}"


def test_recover_merges_the_overlay_of_a_vm_shut_off_after_the_snapshot(settings: Any, tiny: Any) -> None:
    """Writes made after the snapshot end up in the original file; the saved definition names it again."""
    t = tiny()
    t.dom.create()
    job = _job()
    overlays = take_snapshot(t.dom, disks(t.dom), job)
    t.dom.destroy()  # power loss after the snapshot
    ovl = overlays["vda"]
    assert t.inactive_sources() == [ovl], "libvirt switched the saved definition to the overlay"
    w = qemu_io(ovl, "write -P 0xab 1M 64k")  # the guest's writes since the snapshot
    assert w.returncode == 0, w.stderr
    store = _intent(settings, t, job, overlays)

    report = recover(settings)

    assert t.inactive_sources() == [t.base], report
    assert "<backingStore" not in t.inactive_xml().split("<target dev='vda'")[0].split("<disk")[-1]
    assert not Path(ovl).exists(), report
    r = qemu_io(t.base, "read -P 0xab 1M 64k")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    assert job not in [i.job_id for i in store.pending()]
    t.dom.create()  # and it starts on its own file
    assert [d.path for d in disks(t.dom)] == [t.base]


def test_recover_leaves_another_jobs_overlay_of_a_running_vm(settings: Any, tiny: Any) -> None:
    """An intent of job A never merges or deletes job B's overlay (e.g. a concurrent live backup's)."""
    t = tiny()
    t.dom.create()
    job_a, job_b = _job(), _job()
    ovl_b = take_snapshot(t.dom, disks(t.dom), job_b)["vda"]
    _intent(settings, t, job_a)

    report = recover(settings)

    assert [d.path for d in disks(t.dom)] == [ovl_b], report
    assert Path(ovl_b).exists()
    assert ovl_b not in report.removed_overlays


def test_recover_leaves_another_jobs_overlay_named_by_a_shut_off_vm(settings: Any, tiny: Any) -> None:
    """Same for a VM that is off: job B's overlay, which its saved definition names, stays; so does the definition."""
    t = tiny()
    t.dom.create()
    job_a, job_b = _job(), _job()
    ovl_b = take_snapshot(t.dom, disks(t.dom), job_b)["vda"]
    t.dom.destroy()
    # job A's name for the overlay too, present as a stray file: it is job A's, unnamed, so it may go
    stray_a = overlay_path(t.base, job_a)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", stray_a, "16M"], check=True)
    _intent(settings, t, job_a)

    report = recover(settings)

    assert t.inactive_sources() == [ovl_b], report
    assert Path(ovl_b).exists()
    assert not Path(stray_a).exists(), report


def test_an_overlay_named_by_any_definition_is_never_deleted(settings: Any, tiny: Any) -> None:
    """The guard refuses a file that another domain's inactive definition names."""
    owner, other = tiny(), tiny()
    ovl = overlay_path(owner.base, _job())
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", owner.base, "-F", "qcow2", ovl], check=True)
    conn = other.dom.connect()
    conn.defineXML(other.inactive_xml().replace(other.base, ovl))  # `other` now names owner's overlay
    with pytest.raises(OverlayInUse):
        remove_overlay_guarded(conn, ovl)
    assert Path(ovl).exists()
