"""Atomic publish, crash leftovers, path-escape refusal, listing, manifest updates, space checks and usage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from controller.errors import InvalidArgument
from controller.vault import Vault, layout, manifest
from controller.vault.exceptions import (
    InvalidConsistency,
    ManifestFieldReadOnly,
    PathEscape,
    PointNotFound,
    VaultError,
    VaultFull,
)
from controller.vault.manifest import Manifest
from tests.vault.helpers import MiB, PointMaker

VM = "0b6e4d1a-1111-4222-8333-444455556666"


def test_failing_writer_leaves_nothing(vault: Vault, qcow2_plain: Path) -> None:
    """An exception inside the writer block removes the .tmp dir; nothing is listed."""
    with pytest.raises(RuntimeError), vault.new_point(VM) as w:
        w.copy_disk("vda", qcow2_plain)
        assert w.tmp.is_dir() and w.tmp.name.startswith(".tmp-")
        raise RuntimeError("copy of vdb failed")
    assert vault.list_points() == []
    assert os.listdir(vault.root / VM) == []


CRASHING_WRITER = """
import os, sys
from controller.vault import Vault
w = Vault(sys.argv[1]).new_point(sys.argv[2])
w.copy_disk("vda", sys.argv[3])
w.write_domain_xml("<domain/>")
os._exit(9)  # the process dies mid-backup: no publish, no abort, no cleanup
"""


def test_crash_leftover_is_ignored_then_removed(
    vault: Vault, qcow2_plain: Path, make_point: PointMaker
) -> None:
    """A dead writer process leaves .tmp-<id>: list ignores it, usage counts it, remove_partials clears it."""
    good = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    p = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(vault.root), VM, str(qcow2_plain)], check=False
    )
    assert p.returncode == 9
    leftovers = [p for p in os.listdir(vault.root / VM) if p.startswith(".tmp-")]
    assert len(leftovers) == 1
    assert [p.point_id for p in vault.list_points()] == [good.point_id]
    assert vault.usage()["vms"][VM]["partial_bytes"] > 0
    assert [p.name for p in vault.remove_partials(dry_run=True)] == leftovers
    removed = vault.remove_partials(vm_uuid=VM)
    assert [p.name for p in removed] == leftovers
    assert sorted(os.listdir(vault.root / VM)) == [good.point_id]


def test_remove_partials_spares_a_live_writer(vault: Vault, qcow2_plain: Path) -> None:
    """A .tmp dir whose writer is still working is not removed; after abort it is gone."""
    w = vault.new_point(VM)
    w.copy_disk("vda", qcow2_plain)
    assert vault.remove_partials() == []
    assert w.tmp.is_dir()
    w.abort()
    assert not w.tmp.exists()
    assert os.listdir(vault.root / VM) == []


def test_published_point_layout_and_manifest(make_point: PointMaker, qcow2_plain: Path, chain: Path) -> None:
    """The documented files exist and the manifest carries the documented fields."""
    p = make_point(
        {"vda": qcow2_plain, "vdb": chain},
        vm_uuid=VM,
        job_id="job-1",
        policy="gold",
        freeze_window_ms=42.5,
        guest_frozen_ms=17.25,
        freeze_hooks_ms=3,
        agent_version="0.1.0",
        controller_version="0.1.0",
    )
    assert p.path.name == p.point_id and layout.POINT_ID_RE.fullmatch(p.point_id)
    assert {x.name for x in p.path.iterdir()} == {"manifest.json", "domain.xml", "disks", "SHA256SUMS"}
    assert sorted(os.listdir(p.path / "disks")) == ["vda.qcow2", "vdb.qcow2"]
    m = json.loads((p.path / "manifest.json").read_text())
    assert m["format_version"] == manifest.FORMAT_VERSION == 5
    assert m["type"] == "full" and m["parent"] is None and m["point_id"] == p.point_id
    assert m["vm"] == {"uuid": VM, "name": "web1", "host": "qemu:///system"}
    assert m["consistency"] == "FILE_SYSTEM" and m["freeze_window_ms"] == 42.5
    assert m["guest_frozen_ms"] == 17.25 and m["freeze_hooks_ms"] == 3 and m["thaw_hooks_ms"] is None
    assert m["job_id"] == "job-1" and m["policy"] == "gold" and m["boot_check"] is None
    assert m["created"].endswith("+00:00")
    assert [d["target"] for d in m["disks"]] == ["vda", "vdb"]
    assert set(m["disks"][0]) >= {
        "target",
        "file",
        "format",
        "virtual_size",
        "logical_size",
        "stored_bytes",
        "digest",
        "source_path",
    }


def test_list_newest_first_and_get_point(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """Points sort newest first across VMs; get_point finds one in any VM dir."""
    other = str(uuid.uuid4())
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    b = make_point({"vda": qcow2_plain}, vm_uuid=other, name="db1")
    ids = [p.point_id for p in vault.list_points()]
    assert ids == sorted([a.point_id, b.point_id], reverse=True)
    assert [p.point_id for p in vault.list_points(other)] == [b.point_id]
    assert vault.get_point(b.point_id).vm_name == "db1"
    with pytest.raises(PointNotFound):
        vault.get_point(layout.new_point_id())


def test_point_ids_sort_by_time() -> None:
    """Point ids embed UTC time first, so string order is time order."""
    import datetime as dt

    t = dt.datetime(2026, 11, 25, 10, 15, 0, tzinfo=dt.UTC)
    early, late = layout.new_point_id(t), layout.new_point_id(t + dt.timedelta(seconds=1))
    assert early.startswith("20261125T101500Z-") and early < late


@pytest.mark.parametrize(
    "bad_uuid",
    ["../etc", "/etc", "..", "", "0b6e4d1a-1111-4222-8333-44445555666/", "0b6e4d1a/../../x", "x" * 36],
)
def test_bad_vm_uuid_refused(vault: Vault, bad_uuid: str) -> None:
    """Anything but a uuid is refused before it becomes a path."""
    with pytest.raises(InvalidArgument):
        vault.new_point(bad_uuid)
    with pytest.raises(InvalidArgument):
        vault.list_points(bad_uuid)


@pytest.mark.parametrize(
    "bad_id", ["../x", "/tmp/x", "20261125T101500Z-abcdeg", "20261125T101500Z-abcdef/../..", ".tmp-x", "a\0b"]
)
def test_bad_point_id_refused(vault: Vault, bad_id: str) -> None:
    """Point ids are checked strictly."""
    with pytest.raises(InvalidArgument):
        vault.get_point(bad_id)
    with pytest.raises(InvalidArgument):
        vault.new_point(VM, bad_id)


@pytest.mark.parametrize("bad_target", ["../vda", "/vda", "vda/../../x", "VDA", "v", "vda.qcow2", ""])
def test_bad_target_refused(vault: Vault, qcow2_plain: Path, bad_target: str) -> None:
    """Disk targets (they become file names) are checked strictly."""
    with vault.new_point(VM) as w, pytest.raises(InvalidArgument):
        w.copy_disk(bad_target, qcow2_plain)


def test_path_helpers_refuse_escape(tmp_path: Path) -> None:
    """The low-level join refuses .., absolute parts, separators and symlinks pointing out."""
    root = tmp_path / "v"
    root.mkdir()
    for parts in (("..",), ("/etc",), ("a/../..",), (".",)):
        with pytest.raises(PathEscape):
            layout.inside(root, *parts)
    (root / "link").symlink_to("/etc")
    with pytest.raises(PathEscape):
        layout.inside(root, "link")
    with pytest.raises(PathEscape):
        layout.disk_path(root, "../../etc/passwd")
    with pytest.raises(PathEscape):
        layout.disk_path(root, "/etc/passwd")


def test_forged_manifest_file_cannot_escape(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """A manifest edited to point a disk at ../../ is refused by verify and copy-out, not followed."""
    from controller.vault import copy_out_disk

    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    mp = p.path / "manifest.json"
    m = json.loads(mp.read_text())
    m["disks"][0]["file"] = "../../../../etc/passwd"
    mp.write_text(json.dumps(m))
    forged = vault.get_point(p.point_id)
    r = vault.verify(forged)
    assert not r.ok and r.disks[0].status == "invalid-path" and "PATH_ESCAPE" in r.disks[0].detail
    with pytest.raises(PathEscape):
        copy_out_disk(forged, "vda", p.path.parent / "out.qcow2", vault=vault)


def test_update_manifest_is_atomic_rewrite(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """boot_check is written into the manifest; no temp file stays; unknown fields are refused."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    before = (p.path / "manifest.json").stat().st_ino
    q = vault.update_manifest(p, boot_check={"result": "PASSED", "seconds": 27.1})
    assert q.manifest.boot_check == {"result": "PASSED", "seconds": 27.1}
    assert vault.get_point(p.point_id).manifest.boot_check == {"result": "PASSED", "seconds": 27.1}
    assert (p.path / "manifest.json").stat().st_ino != before  # replaced by rename, not rewritten in place
    assert sorted(os.listdir(p.path)) == ["SHA256SUMS", "disks", "domain.xml", "manifest.json"]
    assert vault.get_point(p.point_id).manifest.disks == p.manifest.disks
    with pytest.raises(ManifestFieldReadOnly):
        vault.update_manifest(p, disks=[])


def test_publish_needs_disks_xml_and_valid_consistency(vault: Vault, qcow2_plain: Path) -> None:
    """Incomplete points cannot be published."""
    with vault.new_point(VM) as w:
        with pytest.raises(VaultError):
            w.publish({"consistency": "CRASH"})
        w.copy_disk("vda", qcow2_plain)
        with pytest.raises(VaultError):
            w.publish({"consistency": "CRASH"})
        w.write_domain_xml("<domain/>")
        with pytest.raises(InvalidConsistency):
            w.publish({"consistency": "SORT_OF"})
        p = w.publish({"consistency": "CRASH"})
    assert p.manifest.vm_uuid == VM
    with pytest.raises(VaultError):
        w.copy_disk("vdb", qcow2_plain)
    w.abort()  # after publish: a no-op (the backup engine's undo path may call it)
    assert vault.get_point(p.point_id).point_id == p.point_id


def test_delete_point(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """delete_point removes the directory; other points stay."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    b = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    vault.delete_point(a)
    assert not a.path.exists()
    assert [p.point_id for p in vault.list_points()] == [b.point_id]
    with pytest.raises(PointNotFound):
        vault.delete_point(a)


def test_check_space(vault: Vault) -> None:
    """A need beyond the filesystem's free space is VAULT_FULL with a remediation; a small one passes."""
    vault.check_space(MiB)
    st = os.statvfs(vault.root)
    with pytest.raises(VaultFull) as ei:
        vault.check_space(st.f_bavail * st.f_frsize + 1)
    assert ei.value.code == "VAULT_FULL" and "Free space" in ei.value.remediation
    assert ei.value.details["required_bytes"] > ei.value.details["free_bytes"] - (64 << 20)


def test_usage_numbers(vault: Vault, make_point: PointMaker, qcow2_plain: Path, raw_sparse: Path) -> None:
    """usage() counts allocated bytes per VM (sparse files at their allocation) and the total."""
    other = str(uuid.uuid4())
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    b = make_point({"vda": raw_sparse}, vm_uuid=other, name="db1")
    u = vault.usage()
    assert set(u["vms"]) == {VM, other}
    assert u["vms"][VM]["points"] == 1 and u["vms"][other]["vm_name"] == "db1"
    for p in (a, b):
        disk = p.stored_bytes
        assert disk <= u["vms"][p.vm_uuid]["bytes"] <= disk + 64 * 1024  # + manifest and domain.xml
    assert u["vms"][other]["bytes"] < 8 * MiB  # the 1 GiB raw is stored sparse
    assert u["total_bytes"] == sum(v["bytes"] + v["partial_bytes"] for v in u["vms"].values())
    assert u["free_bytes"] > 0


def test_manifest_without_agent_timings_still_loads(make_point: PointMaker, qcow2_plain: Path) -> None:
    """A manifest written before guest_frozen_ms existed (no such keys) loads with the timings unknown (None)."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM, freeze_window_ms=42.5, guest_frozen_ms=9.0)
    d = json.loads((p.path / "manifest.json").read_text())
    old = {k: v for k, v in d.items() if k not in ("guest_frozen_ms", "freeze_hooks_ms", "thaw_hooks_ms")}
    assert set(d) - set(old) == {"guest_frozen_ms", "freeze_hooks_ms", "thaw_hooks_ms"}
    m = Manifest.from_dict(old)
    assert m.freeze_window_ms == 42.5
    assert m.guest_frozen_ms is None and m.freeze_hooks_ms is None and m.thaw_hooks_ms is None
    assert Manifest.from_dict(d).guest_frozen_ms == 9.0
