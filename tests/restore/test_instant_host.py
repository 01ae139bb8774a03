"""Instant restore without a VM: overlays over a real incremental chain, pins (ACLs, refusals, retention), the
domain XML's backing chain, and the offline finish (rebase / convert) leaving no reference to the vault."""

from __future__ import annotations

import hashlib
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.policies.model import Retention
from controller.restore import instant
from controller.restore.undo import Created
from controller.scheduling.prune import record_of
from controller.scheduling.retention import select_prunable
from controller.vault import RecoveryPoint, Vault, layout, merge, pins, qemuimg
from controller.vault.exceptions import InvalidVaultId, PointPinned
from tests.vault.chain_helpers import build_chain, same_content

UID = 54321  #: an unused uid: ACL entries for it prove exactly what was granted


def acl_entry(path: Path, uid: int = UID) -> str | None:
    """The permissions of the named-user ACL entry for uid on path ('r--', '--x'), None when there is none."""
    out = subprocess.run(["getfacl", "-n", "-p", "-c", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith(f"user:{uid}:"):
            return line.split(":")[2].split()[0]
    return None


def digests(files: list[Path]) -> dict[Path, str]:
    """sha256 of each file."""
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def vault_files(vault: Vault, points: list[RecoveryPoint]) -> list[Path]:
    """Every stored disk file of the points."""
    return [vault.disk_path(p, r) for p in points for r in p.manifest.disks]


def overlays_for(vault: Vault, point: RecoveryPoint, pool: Path, name: str) -> dict[str, instant.Layers]:
    """Overlays for point in pool (made like the restore does)."""
    pool.mkdir(parents=True, exist_ok=True)
    return instant.make_overlays(vault, point, pool, f"{name}-", Created(), 0o600)


def test_pin_path_is_built_by_layout(tmp_path: Path) -> None:
    vm = "3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    p = layout.pin_path(tmp_path, vm, "20261125T101500Z-3fa9c1", "web1-now")
    assert p == tmp_path.resolve() / vm / ".pin-20261125T101500Z-3fa9c1-web1-now.json"
    for bad in ("../x", "a/b", ""):
        with pytest.raises(InvalidVaultId):
            layout.pin_path(tmp_path, vm, "20261125T101500Z-3fa9c1", bad)


def test_overlay_over_an_incremental_reads_the_chain_and_acls_come_and_go(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    pts = build_chain(vault, 3)
    before = digests(vault_files(vault, pts))
    lay = overlays_for(vault, pts[2], tmp_path / "pool", "a")["vdb"]
    assert [f for f, _ in lay.backing] == [vault.disk_path(p, p.manifest.disks[0]) for p in reversed(pts)]
    info = qemuimg.info(lay.overlay, fmt="qcow2")
    assert info.backing_name == str(lay.backing[0][0]) and info.backing_format == "qcow2"
    ref = tmp_path / "ref.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(lay.backing[0][0]), str(ref)], check=True)
    assert same_content(lay.overlay, ref)  # the overlay shows the point's data through the whole chain

    pin_a = instant.pin_for(vault, pts[2], "a", {"vdb": lay}, UID, "instant-restore")
    assert pin_a.chain == [p.point_id for p in pts]
    pins.hold(vault.root, pin_a)
    lay_b = overlays_for(vault, pts[1], tmp_path / "pool", "b")["vdb"]
    pin_b = instant.pin_for(vault, pts[1], "b", {"vdb": lay_b}, UID, "boot-check")
    pins.hold(vault.root, pin_b)
    files = [Path(f) for f in pin_a.files]
    assert all(acl_entry(f) == "r--" for f in files)
    assert acl_entry(vault.root.resolve()) == "--x" and acl_entry(files[0].parent) == "--x"
    assert acl_entry(pts[0].path / layout.MANIFEST) is None  # nothing but the disk files is readable
    assert {p.name for p in pins.list_pins(vault.root)} == {"a", "b"}

    pins.release(vault.root, pin_a)
    top = vault.disk_path(pts[2], pts[2].manifest.disks[0])
    assert acl_entry(top) is None and acl_entry(top.parent) is None and acl_entry(pts[2].path) is None
    assert all(acl_entry(Path(f)) == "r--" for f in pin_b.files)  # still needed by the other pin
    pins.release(vault.root, pin_b)
    assert all(acl_entry(f) is None for f in files) and acl_entry(vault.root.resolve()) is None
    assert pins.list_pins(vault.root) == []
    assert digests(vault_files(vault, pts)) == before


def test_a_pinned_chain_is_never_deleted_merged_or_pruned(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    pts = build_chain(vault, 4)
    lay = overlays_for(vault, pts[1], tmp_path / "pool", "web-now")
    pin = instant.pin_for(vault, pts[1], "web-now", lay, None, "instant-restore")
    pins.hold(vault.root, pin)
    held = digests(vault_files(vault, pts[:2]))
    for p in pts[:2]:  # the full would be merged into the pinned point; the pinned point itself
        with pytest.raises(PointPinned, match="web-now"):
            vault.delete_point(p)
    with pytest.raises(PointPinned):
        merge.merge_into_child(vault, pts[0])
    sel = select_prunable([record_of(p) for p in vault.list_points(pts[0].vm_uuid)], Retention(keep_last=1),
                          datetime.now(UTC))
    assert {v.point.id for v in sel.keep} == {pts[0].point_id, pts[1].point_id, pts[3].point_id}
    assert [v.point.id for v in sel.prune] == [pts[2].point_id]
    assert any("pinned by web-now" in r for v in sel.keep for r in v.reasons)
    assert vault.delete_point(pts[2]).action == "merged"  # pts[2] folds into pts[3]: the pinned files are untouched
    assert digests(vault_files(vault, pts[:2])) == held
    assert same_content(lay["vdb"].overlay, vault.disk_path(pts[1], pts[1].manifest.disks[0]))
    pins.release(vault.root, pin)
    assert vault.delete_point(pts[0]).action == "merged"  # free again


def test_domain_xml_spells_the_chain_out_and_never_relabels_the_vault(tmp_path: Path) -> None:
    xml = ("<domain type='qemu'><name>n</name><devices><disk type='file' device='disk'><driver name='qemu' "
           "type='qcow2'/><source file='/pool/n-vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>")
    lay = instant.Layers(Path("/pool/n-vda.qcow2"), [(Path("/v/p2/disks/vda.qcow2"), "qcow2"),
                                                     (Path("/v/p1/disks/vda.raw"), "raw")])
    disk = ET.fromstring(instant.add_backing(xml, {"vda": lay})).find("devices/disk")
    assert disk is not None and disk.find("source").get("file") == "/pool/n-vda.qcow2"  # type: ignore[union-attr]
    seen = []
    bs = disk.find("backingStore")
    while bs is not None and bs.find("source") is not None:
        src = bs.find("source")
        assert src is not None and src.find("seclabel").attrib == {"model": "dac", "relabel": "no"}  # type: ignore[union-attr]
        seen.append((src.get("file"), bs.find("format").get("type")))  # type: ignore[union-attr]
        bs = bs.find("backingStore")
    assert seen == [("/v/p2/disks/vda.qcow2", "qcow2"), ("/v/p1/disks/vda.raw", "raw")]
    assert bs is not None and len(bs) == 0  # terminated: libvirt probes nothing
    cleaned = instant.drop_backing_xml(instant.add_backing(xml, {"vda": lay}), {"vda": Path("/new/vda.qcow2")})
    assert "backingStore" not in cleaned and "/new/vda.qcow2" in cleaned and "/v/" not in cleaned


def test_qemu_uid_comes_from_libvirts_dac_label() -> None:
    class FakeConn:
        def __init__(self, label: str) -> None:
            self.label = label

        def getCapabilities(self) -> str:
            return (f"<capabilities><host><secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>{self.label}"
                    f"</baselabel><baselabel type='qemu'>{self.label}</baselabel></secmodel></host></capabilities>")

    assert instant.qemu_uid(FakeConn("+64055:+64055"), "qemu") == 64055
    assert instant.qemu_uid(FakeConn("+0:+0"), "kvm") is None


@pytest.mark.parametrize("into_pool", [False, True])
def test_offline_finish_leaves_no_reference_to_the_vault(tmp_path: Path, into_pool: bool) -> None:
    vault = Vault(tmp_path / "vault")
    pts = build_chain(vault, 3)
    before = digests(vault_files(vault, pts))
    lay = overlays_for(vault, pts[2], tmp_path / "pool", "off")["vdb"]
    assert instant.vault_references(vault.root, [], [lay.overlay])
    dest = tmp_path / "moved" / lay.overlay.name if into_pool else None
    if dest is not None:
        dest.parent.mkdir()
    instant.flatten_offline(lay.overlay, dest)
    final = dest or lay.overlay
    assert instant.vault_references(vault.root, [], [final]) == []
    assert same_content(final, vault.disk_path(pts[2], pts[2].manifest.disks[0]))
    assert digests(vault_files(vault, pts)) == before


def test_cli_restore_list_and_finish_arguments(private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["restore", "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert main(["restore", "finish"]) == 1
    assert "NAME" in capsys.readouterr().err
    assert main(["restore", "finish", "nope", "--json"]) == 1
    assert "INSTANT_VM_NOT_FOUND" in capsys.readouterr().err
    assert main(["restore", "20261125T101500Z-3fa9c1", "--instant"]) == 1
    assert "--as" in capsys.readouterr().err
