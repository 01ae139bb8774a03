"""The e2e's infrastructure without booting a VM: namespace + private libvirtd up/down, and the box format.

These run real `ip netns`, `unshare`, `nsenter`, libvirtd and virtlogd (root needed); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
NETNS = f"vmbackup-e2e-t{os.getpid()}"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network/mount namespaces and libvirtd")


def _sh(args: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    return subprocess.run(args, env=env, check=check, capture_output=True, text=True, timeout=120)


def _netns_exists(name: str) -> bool:
    """True when `ip netns list` shows name."""
    return name in _sh(["ip", "netns", "list"]).stdout.split()


@pytest.fixture
def ns_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ns-up/ns-down with a private state dir and a unique netns name."""
    return dict(os.environ, E2E_STATE=str(tmp_path / "state"), E2E_NETNS=NETNS)


@needs_root
@pytest.mark.root
def test_ns_up_gives_private_libvirtd_and_down_removes_everything(ns_env: dict[str, str], tmp_path: Path) -> None:
    """ns-up: libvirtd answers only on the recorded URI inside; ns-down: no netns, process or state left."""
    state = Path(ns_env["E2E_STATE"])
    try:
        _sh(["bash", str(VAGRANT_DIR / "ns-up.sh")], env=ns_env)
        holder = int((state / "holder.pid").read_text())
        uri = (state / "uri").read_text().strip()
        daemons = [int(p) for p in (state / "daemons.pid").read_text().split()]
        assert "socket=" in uri and uri != "qemu:///system"
        inside = ["nsenter", "-t", str(holder), "-m", "-n"]
        assert _sh([*inside, "virsh", "-c", uri, "uri"]).stdout.strip() == uri
        # the default URI reaches nothing inside: the host's libvirtd socket is not visible there
        assert _sh([*inside, "virsh", "-c", "qemu:///system", "uri"], check=False).returncode != 0
        # the namespace has only loopback: no route to anything
        addrs = _sh([*inside, "ip", "-o", "-4", "addr"]).stdout
        assert "127.0.0.1" in addrs and len(addrs.strip().splitlines()) == 1
        # a stray process in the netns (as a crashed run would leave) must be cleaned up too
        stray = subprocess.Popen(["ip", "netns", "exec", NETNS, "sleep", "600"])
        try:
            assert _netns_exists(NETNS)
            down = _sh(["bash", str(VAGRANT_DIR / "ns-down.sh")], env=ns_env, check=False)
            assert down.returncode == 0, down.stdout + down.stderr
            assert stray.wait(timeout=10) != 0  # killed by ns-down
        finally:
            if stray.poll() is None:
                stray.kill()
        assert not _netns_exists(NETNS)
        for pid in [holder, *daemons]:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert not (state / "lv").exists() and not (state / "holder.pid").exists()
    finally:
        _sh(["bash", str(VAGRANT_DIR / "ns-down.sh")], env=ns_env, check=False)


@needs_root
@pytest.mark.root
def test_ns_down_is_safe_without_ns_up(ns_env: dict[str, str]) -> None:
    """Teardown after a run that never got going succeeds and touches nothing."""
    res = _sh(["bash", str(VAGRANT_DIR / "ns-down.sh")], env=ns_env, check=False)
    assert res.returncode == 0, res.stderr
    assert "clean" in res.stdout


@needs_root
@pytest.mark.root
def test_ns_up_refuses_existing_netns(ns_env: dict[str, str]) -> None:
    """A left-over namespace is reported, not silently reused."""
    _sh(["ip", "netns", "add", NETNS])
    try:
        res = _sh(["bash", str(VAGRANT_DIR / "ns-up.sh")], env=ns_env, check=False)
        assert res.returncode != 0 and "already exists" in res.stderr
    finally:
        _sh(["ip", "netns", "del", NETNS], check=False)


def test_box_is_uncompressed_tar_of_image_metadata_vagrantfile(tmp_path: Path) -> None:
    """build-box.sh: box.img is the image's bytes, metadata says libvirt/qcow2 and the size in GiB."""
    img = tmp_path / "img.qcow2"
    _sh(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "3G"])
    box = tmp_path / "out.box"
    _sh(["bash", str(VAGRANT_DIR / "build-box.sh"), str(img), str(box)])
    with tarfile.open(box, "r:") as tar:  # "r:" fails on a compressed archive
        names = sorted(tar.getnames())
        meta = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
        member = tar.getmember("box.img")
        assert member.isfile()  # the symlink was followed
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
        vagrantfile = tar.extractfile("Vagrantfile").read().decode()  # type: ignore[union-attr]
    assert names == ["Vagrantfile", "box.img", "metadata.json"]
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 3}
    assert data == img.read_bytes()
    assert 'ssh.username = "root"' in vagrantfile
    assert not list(tmp_path.glob(".box-*"))  # the work dir is gone


def test_box_refuses_image_with_backing_file(tmp_path: Path) -> None:
    """An overlay is not a standalone box image."""
    base = tmp_path / "base.qcow2"
    _sh(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"])
    top = tmp_path / "top.qcow2"
    _sh(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)])
    res = _sh(["bash", str(VAGRANT_DIR / "build-box.sh"), str(top), str(tmp_path / "x.box")], check=False)
    assert res.returncode != 0 and "backing file" in res.stderr
    assert not (tmp_path / "x.box").exists()
