"""Vault integrity (issue #13 item 7): ids must match directories, SHA256SUMS covers manifest.json and domain.xml,
disks/ is cross-checked, delete works by directory, and one bad VM directory never stops the other checks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.vault import RecoveryPoint, Vault, layout, sums, verify_point_quick
from controller.vault.exceptions import ManifestIdMismatch, MetadataMismatch, PathEscape, PointCorrupt
from controller.vault.manifest import Manifest, write_file_durable
from tests.vault.helpers import PointMaker

VM = "0b6e4d1a-1111-4222-8333-444455556666"
VM2 = "9a8b7c6d-1111-4222-8333-444455556666"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps tables at 80 columns off a terminal; widen it so cells stay whole for the asserts."""
    from controller.cli import output

    monkeypatch.setattr(output.console, "width", 400)


def edit_manifest(p: RecoveryPoint, **top: object) -> None:
    """Rewrite manifest.json by hand (as an attacker or a careless admin would), vm fields under "vm"."""
    mp = p.path / layout.MANIFEST
    m = json.loads(mp.read_text())
    for k, v in top.items():
        if k == "vm_uuid":
            m["vm"]["uuid"] = v
        else:
            m[k] = v
    mp.write_text(json.dumps(m, indent=2))


def publish_with_id(vault: Vault, vm_uuid: str, point_id: str, src: Path) -> RecoveryPoint:
    """A point with a chosen id (so two VMs can hold the same point id)."""
    with vault.new_point(vm_uuid, point_id) as w:
        w.copy_disk("vda", src)
        w.write_domain_xml(f"<domain><uuid>{vm_uuid}</uuid></domain>")
        return w.publish({"vm": {"uuid": vm_uuid, "name": "n"}, "consistency": "CRASH"})


@pytest.mark.parametrize("field", ["point_id", "vm_uuid"])
def test_crafted_manifest_id_cannot_delete_neighbour(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, field: str
) -> None:
    """A manifest claiming a neighbour's point id (or another VM's uuid): deleting it removes only its own dir."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    if field == "point_id":
        b = make_point({"vda": qcow2_plain}, vm_uuid=VM)
        edit_manifest(a, point_id=b.point_id)
    else:
        b = publish_with_id(vault, VM2, a.point_id, qcow2_plain)
        edit_manifest(a, vm_uuid=VM2)
    forged = [p for p in vault.list_points(include_broken=True) if p.path == a.path]
    assert len(forged) == 1
    vault.delete_point(forged[0])
    assert not a.path.exists(), "the crafted point's own directory is the one deleted"
    assert b.path.is_dir(), "the healthy neighbour named by the crafted manifest must survive"
    assert vault.verify(vault.get_point(b.point_id) if field == "point_id" else b).ok


@pytest.mark.parametrize("field", ["point_id", "vm_uuid"])
def test_crafted_manifest_id_is_refused_on_load(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, field: str
) -> None:
    """Loading refuses a manifest whose ids differ from its directory; list/verify report it as a bad point."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    b = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    edit_manifest(a, **({"point_id": b.point_id} if field == "point_id" else {"vm_uuid": VM2}))
    with pytest.raises(ManifestIdMismatch) as ei:
        vault.get_point(a.point_id)
    assert ei.value.code == "MANIFEST_ID_MISMATCH" and "vmbackup vault verify" in ei.value.remediation
    assert [p.point_id for p in vault.list_points()] == [b.point_id]
    broken = {p.point_id: p.error for p in vault.list_points(include_broken=True)}
    assert "does not match its directory" in broken[a.point_id] and broken[b.point_id] == ""
    results = {r.point_id: r for r in vault.verify_all()}
    assert not results[a.point_id].ok and results[b.point_id].ok
    # a RecoveryPoint built by hand with a neighbour's ids is refused, nothing is removed
    hand = RecoveryPoint(a.path, Manifest.from_dict(json.loads((a.path / layout.MANIFEST).read_text())))
    with pytest.raises(ManifestIdMismatch):
        vault.delete_point(hand)
    assert a.path.is_dir() and b.path.is_dir()


def test_delete_by_ids_refuses_a_symlinked_point(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """delete_by_id builds the path from its arguments and never follows a symlink to a neighbour."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    fake = a.path.parent / layout.new_point_id()
    fake.symlink_to(a.path)
    with pytest.raises(PathEscape):
        vault.delete_by_id(VM, fake.name)
    assert a.path.is_dir() and (a.path / layout.MANIFEST).is_file()
    vault.delete_by_id(VM, a.point_id)
    assert not a.path.exists()


def test_tampered_manifest_byte_fails_verify_naming_the_file(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path
) -> None:
    """One changed byte in manifest.json (still valid JSON): verify, quick check and update_manifest refuse it."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM, name="web1")
    mp = p.path / layout.MANIFEST
    mp.write_bytes(mp.read_bytes().replace(b'"web1"', b'"web2"'))
    r = vault.verify(vault.get_point(p.point_id))
    assert not r.ok and r.bad_disks == []
    assert any(x.startswith("manifest.json:") for x in r.problems), r.to_dict()
    with pytest.raises(PointCorrupt, match=r"manifest\.json"):
        verify_point_quick(vault.get_point(p.point_id), vault=vault)
    with pytest.raises(MetadataMismatch) as ei:
        vault.update_manifest(vault.get_point(p.point_id), boot_check={"result": "passed"})
    assert ei.value.code == "METADATA_MISMATCH" and "vmbackup vault verify" in ei.value.remediation
    assert json.loads(mp.read_text())["boot_check"] is None  # not re-sealed over the tampering


def test_tampered_domain_xml_fails_verify(
    capsys: pytest.CaptureFixture[str], vault: Vault, make_point: PointMaker, qcow2_plain: Path
) -> None:
    """A changed domain.xml fails verify (API and CLI) naming domain.xml."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    xml = p.path / layout.DOMAIN_XML
    xml.write_text(xml.read_text().replace("</domain>", "<devices><disk/></devices></domain>"))
    r = vault.verify(p)
    assert not r.ok and [x.split(":")[0] for x in r.problems] == ["domain.xml"]
    assert main(["vault", "verify", p.point_id, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "domain.xml" in out["points"][0]["problems"][0]


def test_disks_listing_is_cross_checked(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """A file in disks/ the manifest does not list fails verify naming it; a listed disk that is gone too."""
    p = make_point({"vda": qcow2_plain, "vdb": qcow2_plain}, vm_uuid=VM)
    shutil.copy(p.path / "disks" / "vda.qcow2", p.path / "disks" / "vdz.qcow2")
    r = vault.verify(p)
    assert not r.ok
    assert [(d.file, d.status) for d in r.disks if d.status != "ok"] == [("disks/vdz.qcow2", "not-in-manifest")]
    (p.path / "disks" / "vdz.qcow2").unlink()
    (p.path / "disks" / "vdb.qcow2").unlink()
    r = vault.verify(p)
    assert not r.ok and r.bad_disks == ["vdb"] and r.disks[1].status == "missing"


def test_symlinked_vm_dir_is_reported_and_others_still_verified(
    capsys: pytest.CaptureFixture[str], vault: Vault, make_point: PointMaker, qcow2_plain: Path, tmp_path: Path
) -> None:
    """A VM directory that is a symlink out of the vault is one failing entry (PATH_ESCAPE); the rest is checked."""
    good = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    elsewhere = make_point({"vda": qcow2_plain}, vm_uuid=VM2)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(str(vault.root / VM2), outside / VM2)
    (vault.root / VM2).symlink_to(outside / VM2)
    assert [p.point_id for p in vault.list_points()] == [good.point_id]  # never lists points outside the vault
    results = vault.verify_all()
    by_vm = {r.vm_uuid: r for r in results}
    assert set(by_vm) == {VM, VM2}
    assert by_vm[VM].ok and by_vm[VM].point_id == good.point_id
    assert not by_vm[VM2].ok and "PATH_ESCAPE" in by_vm[VM2].error
    assert main(["vault", "verify", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert {(p["vm_uuid"], p["ok"]) for p in out["points"]} == {(VM, True), (VM2, False)}
    assert (outside / VM2 / elsewhere.point_id).is_dir()  # untouched


def test_symlinked_point_dir_is_reported(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """A point directory that is a symlink (here to a neighbour) is reported, never verified through the link."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    link = a.path.parent / layout.new_point_id()
    link.symlink_to(a.path)
    results = {r.point_id: r for r in vault.verify_all()}
    assert results[a.point_id].ok
    assert not results[link.name].ok and "PATH_ESCAPE" in results[link.name].error


def test_old_point_without_digest_is_a_warning(
    capsys: pytest.CaptureFixture[str], vault: Vault, make_point: PointMaker, qcow2_plain: Path
) -> None:
    """A format-2 point (no SHA256SUMS) verifies ok with a warning; its disks are still checked; a rewrite seals it."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    (p.path / layout.SUMS).unlink()
    edit_manifest(p, format_version=2)
    r = vault.verify(vault.get_point(p.point_id))
    assert r.ok and r.warnings == ["no metadata digest (older point)"] and [d.status for d in r.disks] == ["ok"]
    assert main(["vault", "verify"]) == 0
    assert "no metadata digest (older point)" in capsys.readouterr().out
    with open(p.path / "disks" / "vda.qcow2", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00")
    assert vault.verify(p).bad_disks == ["vda"]


def test_format_3_point_without_digest_is_an_error(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """Deleting SHA256SUMS of a point written with it cannot downgrade the check to a warning."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    (p.path / layout.SUMS).unlink()
    r = vault.verify(p)
    assert not r.ok and any(x.startswith("SHA256SUMS:") for x in r.problems)


def test_sums_file_checks_by_hand(make_point: PointMaker, qcow2_plain: Path) -> None:
    """`sha256sum -c SHA256SUMS` in the point directory passes on a fresh point (documented by-hand check)."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    out = subprocess.run(["sha256sum", "-c", layout.SUMS], cwd=p.path, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "manifest.json: OK" in out.stdout and "domain.xml: OK" in out.stdout


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_update_manifest_crash_leaves_a_verifiable_point(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    """update_manifest dies before its 1st, 2nd or 3rd durable write: the point still verifies (old or new)."""
    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    real = write_file_durable
    calls: list[Path] = []

    def crashing(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == crash_at:
            raise KeyboardInterrupt("power cut")
        real(path, data)

    monkeypatch.setattr(sums, "write_file_durable", crashing)
    with pytest.raises(KeyboardInterrupt):
        vault.update_manifest(p, boot_check={"result": "passed"})
    monkeypatch.undo()
    r = vault.verify(vault.get_point(p.point_id))
    assert r.ok and r.warnings == [], r.to_dict()
    q = vault.update_manifest(vault.get_point(p.point_id), boot_check={"result": "passed"})
    r = vault.verify(q)
    assert r.ok and r.warnings == [] and q.manifest.boot_check == {"result": "passed"}
    assert (p.path / layout.SUMS).read_text().count(layout.MANIFEST) == 1


def test_concurrent_manifest_updates_stay_sealed(vault: Vault, make_point: PointMaker, qcow2_plain: Path) -> None:
    """A verify record and a boot-check result written at the same time: both land, SHA256SUMS still matches."""
    import threading

    p = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    errors: list[BaseException] = []

    def writer(field: str) -> None:
        try:
            for i in range(60):
                vault.update_manifest(p, **{field: {"n": i}})
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f,)) for f in ("verify", "boot_check")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    r = vault.verify(vault.get_point(p.point_id))
    assert r.ok and r.warnings == [], r.to_dict()
    m = vault.get_point(p.point_id).manifest
    assert m.verify == {"n": 59} and m.boot_check == {"n": 59}
