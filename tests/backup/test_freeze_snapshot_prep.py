"""The snapshot split around the freeze (issue #16): overlays and XML made before it, libvirt's call alone inside it,
in a thread the engine can write its records beside. Host-only: a fake domain, real qemu-img."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup.exceptions import SnapshotFailed
from controller.backup.snapshot import SnapshotInFlight, prepare_snapshot, take_prepared
from controller.vault.qemuimg import info
from controller.virt.domain import Disk


class FakeDom:
    """What prepare/take use of a virDomain: blockInfo (capacity) and snapshotCreateXML (recorded)."""

    def __init__(self, sizes: dict[str, int], fail: bool = False, gate: threading.Event | None = None) -> None:
        self.sizes = sizes
        self.fail = fail
        self.gate = gate
        self.calls: list[tuple[str, int]] = []

    def blockInfo(self, target: str) -> list[int]:  # libvirt's name
        return [self.sizes[target], 0, 0]

    def snapshotCreateXML(self, xml: str, flags: int) -> None:  # libvirt's name
        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append((xml, flags))
        if self.fail:
            raise libvirt.libvirtError("forced snapshot failure (test)")


def disks(tmp_path: Path) -> list[Disk]:
    """A qcow2 and a raw disk image."""
    q, r = tmp_path / "root.qcow2", tmp_path / "data.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(r), "32M"], check=True)
    return [Disk("vda", str(q), "qcow2"), Disk("vdb", str(r), "raw")]


def test_prepare_creates_each_overlay_over_its_disk_and_a_reuse_snapshot(tmp_path: Path) -> None:
    """Each overlay is an empty qcow2 backed by the disk (its format, libvirt's size); the XML names them all and the
    flags make libvirt reuse them (atomic, disk-only, no metadata); nothing is asked of libvirt's snapshot yet."""
    ds = disks(tmp_path)
    dom: Any = FakeDom({"vda": 64 << 20, "vdb": 32 << 20})
    prep = prepare_snapshot(dom, ds, "job1")
    assert dom.calls == []
    assert set(prep.overlays) == {"vda", "vdb"}
    for d in ds:
        ovl = Path(prep.overlays[d.target])
        assert ovl.name == f"{Path(d.path).stem}.vmb-job1.qcow2" and ovl.parent == tmp_path
        i = info(ovl)
        assert (i.format, i.backing_file, i.backing_format) == ("qcow2", d.path, d.format)
        assert i.virtual_size == dom.sizes[d.target]
        assert f'file="{ovl}"' in prep.xml
        raw = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(ovl)], check=True,
                                        capture_output=True, text=True).stdout)
        assert raw["cluster-size"] == 128 << 10 and raw["format-specific"]["data"]["extended-l2"] is True
    for flag in ("REUSE_EXT", "ATOMIC", "DISK_ONLY", "NO_METADATA"):
        assert prep.flags & getattr(libvirt, f"VIR_DOMAIN_SNAPSHOT_CREATE_{flag}")
    assert take_prepared(dom, prep) == prep.overlays
    assert dom.calls == [(prep.xml, prep.flags)]


def test_prepare_refuses_an_existing_overlay(tmp_path: Path) -> None:
    """An overlay file already there (another run of the same job) is never reused or overwritten."""
    ds = disks(tmp_path)
    clash = tmp_path / "data.vmb-job2.qcow2"
    clash.write_bytes(b"not ours to touch")
    with pytest.raises(SnapshotFailed, match="already exists"):
        prepare_snapshot(FakeDom({"vda": 64 << 20, "vdb": 32 << 20}), ds, "job2")
    assert clash.read_bytes() == b"not ours to touch"


def test_snapshot_in_flight_lets_the_caller_work_and_hands_back_the_result(tmp_path: Path) -> None:
    """The caller's thread is free while libvirt's call runs; wait() returns its overlays once it finished."""
    gate = threading.Event()
    dom: Any = FakeDom({"vda": 64 << 20, "vdb": 32 << 20}, gate=gate)
    prep = prepare_snapshot(dom, disks(tmp_path), "job3")
    snap = SnapshotInFlight(dom, prep)
    assert dom.calls == []  # still inside libvirt's call: the caller got here anyway
    gate.set()
    assert snap.wait() == prep.overlays and len(dom.calls) == 1
    assert snap.duration_ms is not None and snap.duration_ms >= 0


def test_snapshot_in_flight_raises_libvirts_failure_in_the_caller(tmp_path: Path) -> None:
    """A failed snapshot surfaces as SnapshotFailed from wait(), in the caller's thread; join() never raises."""
    dom: Any = FakeDom({"vda": 64 << 20, "vdb": 32 << 20}, fail=True)
    snap = SnapshotInFlight(dom, prepare_snapshot(dom, disks(tmp_path), "job4"))
    snap.join()
    with pytest.raises(SnapshotFailed, match="forced snapshot failure"):
        snap.wait()
