"""A backup of a domain with a network disk or a filesystem share is refused with UNSUPPORTED_DISK naming them,
unless the request excludes them; then they are listed in the manifest's "skipped" (real libvirt, a defined and
never started domain: a shut-off VM is copied directly, no guest needed)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller import db
from controller.backup.engine import BackupEngine, BackupRequest
from controller.backup.exceptions import UnsupportedDisk
from controller.cli.main import main
from controller.registration import store as regstore
from controller.vault.vault import Vault
from tests.domain_xml import cdrom, domain, file_disk, rbd_disk
from tests.helpers import register_without_agent

pytestmark = pytest.mark.libvirt  # needs the local libvirtd (make test-fast skips it)


def netdisk_xml(name: str, root_disk: Path) -> str:
    """A small shut-off domain: a file disk, an rbd disk, a 9p share and a cdrom."""
    return domain(
        name,
        file_disk(str(root_disk), "vda")
        + rbd_disk("rbdpool/vmb-test-img", "127.0.0.1", "vdb")
        + cdrom("sda")
        + f"""
    <filesystem type='mount' accessmode='mapped'><source dir='{root_disk.parent}'/><target dir='hostshare'/>
    </filesystem>""",
    )


@pytest.fixture
def netdisk_vm(settings: Any, lab_prefix: str, tmp_path: Path) -> Iterator[libvirt.virDomain]:
    """A defined (never started), registered domain with a network disk; undefined and unregistered after."""
    disk = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(disk)], check=True, capture_output=True)
    lv = libvirt.open(settings.uri)
    dom = lv.defineXML(netdisk_xml(f"{lab_prefix}netdisk", disk))
    register_without_agent(settings, dom.UUIDString(), dom.name())
    conn = db.connect(settings.db_path)
    try:
        yield dom
    finally:
        regstore.delete(conn, dom.UUIDString())
        conn.close()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
        lv.close()


def test_backup_refuses_network_disk_and_share(settings: Any, netdisk_vm: libvirt.virDomain) -> None:
    engine = BackupEngine(settings)
    try:
        with pytest.raises(UnsupportedDisk) as ei:
            engine.run(BackupRequest(vm=netdisk_vm.name()))
    finally:
        engine.close()
    e = ei.value
    assert e.code == "UNSUPPORTED_DISK"
    assert "vdb" in e.message and "rbd:rbdpool/vmb-test-img" in e.message and "hostshare" in e.message
    assert {d["target"] for d in e.details["devices"]} == {"vdb", "hostshare"}
    assert Vault(settings.vault).list_points(netdisk_vm.UUIDString()) == []


def test_backup_with_exclusions_lists_them_in_the_manifest(settings: Any, netdisk_vm: libvirt.virDomain) -> None:
    engine = BackupEngine(settings)
    try:
        r = engine.run(BackupRequest(vm=netdisk_vm.name(), exclude_disks=("vdb", "hostshare")))
    finally:
        engine.close()
    point = Vault(settings.vault).get_point(r.point_id)
    assert [d.target for d in point.manifest.disks] == ["vda"]
    skipped = {(s["target"], s["device"], s["reason"]) for s in point.manifest.skipped}
    assert skipped == {("vdb", "disk", "excluded"), ("hostshare", "filesystem", "excluded"), ("sda", "cdrom", "cdrom")}


def test_backup_cli_refuses_then_excludes(
    settings: Any, netdisk_vm: libvirt.virDomain, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vmbackup backup VM --json`: UNSUPPORTED_DISK (exit 1); with --exclude-disk for each device it succeeds."""
    name = netdisk_vm.name()
    assert main(["backup", name, "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["error"]["code"] == "UNSUPPORTED_DISK" and "vdb" in row["error"]["message"]
    assert main(["backup", name, "--exclude-disk", "vdb", "--exclude-disk", "hostshare", "--json"]) == 0
    (ok,) = json.loads(capsys.readouterr().out)
    point = Vault(settings.vault).get_point(ok["point_id"])
    assert {s["target"] for s in point.manifest.skipped} == {"vdb", "hostshare", "sda"}
