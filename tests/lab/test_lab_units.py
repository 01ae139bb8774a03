"""Unit tests of the lab layer that need no VM: names, virt type, ports, metadata, recipe hash, apt mirror."""

from __future__ import annotations

import random
import socket
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from controller.lab import domain, host, recipe, rootfs, sshkey, vms
from controller.lab.exceptions import LabNameInvalid, VirtTypeInvalid
from controller.restore.domainxml import hostfwds
from controller.ssh.client import fingerprint
from controller.virt import metadata, ports
from controller.virt.exceptions import NoFreePort
from controller.virt.metadata import LabMetadata

META = LabMetadata(
    ssh_host="127.0.0.1", ssh_port=22001, ssh_user="root", ssh_key="/x/lab/ssh/id_ed25519",
    agent_host="127.0.0.1", agent_port=22002, console_path="/x/lab/vms/a/console.log",
    files=("/x/lab/vms/a/root.qcow2", "/x/lab/vms/a/data1.qcow2", "/x/lab/vms/a/console.log"),
    vm_dir="/x/lab/vms/a", base_image="/cache/debian12-lab-0123.qcow2", virt_type="qemu",
)  # fmt: skip


@pytest.mark.parametrize("name", ["a", "vm1", "Lab-VM_2.test", "9", "x" * 63])
def test_valid_names(name: str) -> None:
    assert vms.validate_name(name) == name


BAD_NAMES = ["", "a/b", "has space", "-lead", ".hidden", "_x", "x" * 64, "é", "a\nb", "a;b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names(name: str) -> None:
    with pytest.raises(LabNameInvalid):
        vms.validate_name(name)


def _sysfs(tmp_path: Path, *modules: str) -> Path:
    for m in modules:
        (tmp_path / "module" / m).mkdir(parents=True)
    return tmp_path


def test_virt_type_detection_with_fake_sysfs(tmp_path: Path) -> None:
    assert host.detect_virt_type("auto", _sysfs(tmp_path / "none")) == "qemu"
    assert host.detect_virt_type("auto", _sysfs(tmp_path / "pvm", "kvm", "kvm_pvm")) == "qemu"
    assert host.detect_virt_type("auto", _sysfs(tmp_path / "intel", "kvm", "kvm_intel")) == "kvm"
    assert host.detect_virt_type("AUTO", _sysfs(tmp_path / "amd", "kvm", "kvm_amd")) == "kvm"


def test_virt_type_override(tmp_path: Path) -> None:
    intel = _sysfs(tmp_path / "intel", "kvm_intel")
    assert host.detect_virt_type("qemu", intel) == "qemu"
    assert host.detect_virt_type("kvm", tmp_path) == "kvm"
    with pytest.raises(VirtTypeInvalid):
        host.detect_virt_type("xen", intel)


def test_pick_ports_distinct_and_avoids() -> None:
    got = ports.pick_ports(50, avoid={20000, 20001}, port_range=(20000, 20099), is_free=lambda p: True)
    assert len(set(got)) == 50
    assert not {20000, 20001} & set(got)


def test_pick_ports_skips_ports_in_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        got = ports.pick_ports(3, port_range=(busy, busy + 3), rng=random.Random(0))
        assert busy not in got
        assert ports.bind_free(busy) is False
    assert all(busy < p <= busy + 3 for p in got)


def test_pick_ports_exhausted() -> None:
    with pytest.raises(NoFreePort):
        ports.pick_ports(3, avoid={30000, 30001}, port_range=(30000, 30002), is_free=lambda p: True)


def test_metadata_round_trip() -> None:
    xml = metadata.to_xml(META)
    assert metadata.NS in xml
    assert metadata.from_xml(xml) == META
    plain = xml.replace("vmblab:", "").replace(f' xmlns:vmblab="{metadata.NS}"', "")
    assert "vmblab" not in plain
    assert metadata.from_xml(plain) == META


def test_domain_xml_carries_metadata_and_forwards() -> None:
    disks = ("/x/lab/vms/a/root.qcow2", "/x/lab/vms/a/data1.qcow2")
    spec = domain.DomainSpec("a", "qemu", 768, 1, disks, META)
    xml = domain.build_xml(spec)
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert [t.get("dev") for t in root.iter("target") if t.get("bus") == "virtio"] == ["vda", "vdb"]
    assert root.find("./devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    lab = root.find(f"./metadata/{{{metadata.NS}}}lab")
    assert lab is not None and metadata.from_xml(ET.tostring(lab, encoding="unicode")) == META
    assert hostfwds(xml) == {22: 22001, 7470: 22002}  # what the restore layer reads back
    assert "restrict=on" in xml and "127.0.0.1:22001-:22" in xml


def test_recipe_hash_stable_and_sensitive() -> None:
    base = recipe.Recipe()
    h = recipe.recipe_hash(base, "SHA256:abc")
    assert h == recipe.recipe_hash(recipe.Recipe(), "SHA256:abc")
    assert len(h) == 16
    files = dict(base.files)
    files["/etc/hostname"] = "other\n"
    variants = [
        replace(base, packages=(*base.packages, "curl")),
        replace(base, files=files),
        replace(base, format_version=base.format_version + 1),
        replace(base, disk_size_mib=4096),
    ]
    hashes = {recipe.recipe_hash(v, "SHA256:abc") for v in variants}
    assert h not in hashes and len(hashes) == len(variants)
    assert recipe.recipe_hash(base, "SHA256:other") != h


def test_recipe_fstab_has_eight_nofail_data_disks() -> None:
    fstab = recipe.FILES["/etc/fstab"]
    assert fstab.startswith("/dev/vda1  /  ext4")
    for i in range(1, 9):
        assert f"LABEL=data{i}  /data{i}  ext4  defaults,nofail,x-systemd.device-timeout=90s" in fstab


def test_ssh_key_generated_once_and_loadable(tmp_path: Path) -> None:
    import paramiko

    path = sshkey.key_path(tmp_path / "lab")
    pub = sshkey.ensure_key(path)
    assert pub.startswith("ssh-ed25519 ")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sshkey.ensure_key(path) == pub  # not regenerated
    key = paramiko.Ed25519Key.from_private_key_file(str(path))
    assert f"{key.get_name()} {key.get_base64()}" == " ".join(pub.split()[:2])
    assert fingerprint(pub) == "SHA256:" + key.fingerprint.split(":", 1)[1]


def test_apt_mirror_from_deb822_and_one_line(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    (d / "b.list.disabled").write_text("deb http://wrong.example/debian bookworm main\n")
    assert rootfs.apt_mirror("bookworm", (tmp_path / "missing", d)) == "http://mirror.example/debian"
    one = tmp_path / "sources.list"
    one.write_text("# c\ndeb [arch=amd64] http://one.example/debian bookworm main\n")
    assert rootfs.apt_mirror("bookworm", (one,)) == "http://one.example/debian"
