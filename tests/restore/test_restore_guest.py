"""Restore and boot-check proven on real lab guests (Debian under TCG), from real recovery points.

One backup of the shared, registered ``lab_vm`` (module fixture) feeds:
  1. restore as a new VM with ``vmbackup restore POINT --as NAME --start`` (the CLI), running side by side with
     the original: marker written before the backup found over SSH, no shared name/UUID/MAC/ports/console/files;
     then ``vmbackup lab destroy NAME`` removes the copy's files and never the original's;
  2. ``vmbackup boot-check POINT`` passing (console, agent GetInfo over mTLS as the ORIGINAL uuid, fsck, a check
     command over SSH) and leaving nothing behind;
  3. boot-check failing on a copy of the point whose vda boot sector was zeroed (checksums fixed up, so the
     vault still verifies it), with a clear reason, leaving nothing behind.
A dedicated small VM (make_lab_vm, no data disks) is backed up, refused a replace-restore while it runs, then
shut off and replaced; it boots into the backed-up state.

Run under ``flock /tmp/vmbackup-vm.lock`` (about 5 boots of ~30 s each under TCG).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.errors import VmBackupError
from controller.lab.sshexec import run as ssh_run
from controller.lab.sshexec import wait_for_ssh
from controller.registration.register import RegisterOptions, Registrar
from controller.restore.bootcheck import PREFIX, BootChecker
from controller.restore.domainxml import hostfwds
from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import Vault, new_point_id, sums
from controller.vault.sparse import stream
from controller.virt import metadata as labmeta

pytestmark = pytest.mark.vm

VMBACKUP = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmbackup")
MARKER_FILE = "/root/vmb-restore-marker"
QEMU_DEFAULT_MAC = "52:54:00:12:34:56"


@dataclass
class GuestPoint:
    """A real recovery point of the shared lab VM and the marker written before it was taken."""

    backup: BackupResult
    marker: str
    data_marker: str


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the vmbackup CLI with this session's environment (private VMBACKUP_HOME)."""
    return subprocess.run([VMBACKUP, *args], capture_output=True, text=True, timeout=timeout, env=os.environ)


def macs(xml: str) -> set[str]:
    """Every MAC in a domain XML (<mac address=> and mac= of the qemu:commandline NIC)."""
    return {m.lower() for m in re.findall(r"(?:mac=|address=['\"])([0-9a-fA-F:]{17})", xml)}


def listening(port: int) -> bool:
    """True while a socket listens on 127.0.0.1:port. SO_REUSEADDR lets the probe bind past TIME_WAIT entries:
    the boot-check's SSH-banner polls through QEMU's port forward leave up to 60 s of them on the forwarded port
    (slirp closes first when the guest refuses), and those are no leftover listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_ports_free(ports: list[int], timeout: float = 15.0) -> list[int]:
    """The ports still held after up to timeout seconds (QEMU releases them when it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        held = [p for p in ports if listening(p)]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


def bootcheck_leftovers(settings: Settings, lv: libvirt.virConnect) -> list[str]:
    """Boot-check domains and files still present."""
    left = [d.name() for d in lv.listAllDomains(0) if d.name().startswith(PREFIX)]
    root = settings.home / "bootcheck"
    return left + ([str(p) for p in root.iterdir()] if root.is_dir() else [])


@pytest.fixture(scope="module")
def lv() -> Any:
    """A libvirt connection for inspection."""
    conn = libvirt.open("qemu:///system")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def point(settings: Settings, lab_vm: Any, registered_vm: Any) -> GuestPoint:
    """Write markers in the registered lab VM, back it up for real, then change the markers in the original."""
    marker, data_marker = f"before-{secrets.token_hex(6)}", f"data-{secrets.token_hex(6)}"
    rc, _out, err = lab_vm.ssh(f"echo {marker} > {MARKER_FILE} && echo {data_marker} > /data1/vmb-marker && sync")
    assert rc == 0, err
    res = BackupEngine(settings).run(BackupRequest(vm=lab_vm.name))
    print(f"\nbackup {res.point_id}: {res.consistency}, {res.bytes_copied} B in {res.duration_s:.1f} s")
    rc, _out, err = lab_vm.ssh(f"echo after-backup > {MARKER_FILE} && echo after > /data1/vmb-marker && sync")
    assert rc == 0, err
    return GuestPoint(res, marker, data_marker)


def test_restore_as_new_vm_side_by_side_then_lab_destroy(
    settings: Settings, lab_vm: Any, point: GuestPoint, lv: libvirt.virConnect
) -> None:
    name = f"{lab_vm.name}-copy"
    t0 = time.monotonic()
    p = cli("restore", point.backup.point_id, "--as", name, "--start")
    assert p.returncode == 0, p.stdout + p.stderr
    restored = lv.lookupByName(name)
    try:
        meta = labmeta.read(restored)
        assert meta is not None
        assert f"ssh -i {meta.ssh_key} -p {meta.ssh_port} root@127.0.0.1" in p.stdout
        boot_s = wait_for_ssh(meta, 240)
        print(f"\nrestore+define+start {time.monotonic() - t0 - boot_s:.1f} s, then SSH after {boot_s:.1f} s")
        orig = lv.lookupByName(lab_vm.name)
        assert orig.isActive() and restored.isActive()
        # the data written before the backup, not what the original holds now
        assert ssh_run(meta, f"cat {MARKER_FILE}")[1].strip() == point.marker
        assert ssh_run(meta, "cat /data1/vmb-marker")[1].strip() == point.data_marker
        assert lab_vm.ssh(f"cat {MARKER_FILE}")[1].strip() == "after-backup"
        # no clash: identity, MACs (also the one the guest sees), forwarded ports, console log, files
        o_xml, c_xml = orig.XMLDesc(0), restored.XMLDesc(0)
        assert restored.UUIDString() != orig.UUIDString()
        c_macs = macs(c_xml)
        assert c_macs and not c_macs & (macs(o_xml) | {QEMU_DEFAULT_MAC})
        guest_macs = set(ssh_run(meta, "cat /sys/class/net/e*/address")[1].split())
        assert guest_macs and guest_macs <= c_macs
        assert hostfwds(c_xml).keys() == hostfwds(o_xml).keys() == {22, 7470}
        assert not set(hostfwds(c_xml).values()) & set(hostfwds(o_xml).values())
        assert set(hostfwds(c_xml).values()) == set(meta.ports())
        assert meta.console_path != lab_vm.meta.console_path and "login:" in Path(meta.console_path).read_text()
        own_dir = str(settings.home / "restored" / name)
        assert meta.vm_dir == own_dir and all(f.startswith(own_dir + "/") for f in meta.files)
        assert lab_vm.meta.vm_dir not in c_xml  # nothing of the original's directory is used or listed
    finally:
        d = cli("lab", "destroy", name)
    assert d.returncode == 0, d.stdout + d.stderr
    with pytest.raises(libvirt.libvirtError):
        lv.lookupByName(name)
    assert not [f for f in meta.files if Path(f).exists()] and not Path(meta.vm_dir).exists()
    assert wait_ports_free(list(meta.ports())) == []
    assert all(Path(f).exists() for f in lab_vm.meta.files)  # the original's files are untouched
    assert lab_vm.ssh("true")[0] == 0


def test_boot_check_passes_on_good_point(settings: Settings, point: GuestPoint, lv: libvirt.virConnect) -> None:
    cmd = f"grep -qx {point.marker} {MARKER_FILE} && grep -qx {point.data_marker} /data1/vmb-marker"
    p = cli("boot-check", point.backup.point_id, "--timeout", "240", "--check-command", cmd, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    print(f"\nboot-check passed: boot {res['boot_seconds']} s, total {res['duration_s']} s")
    checks = {c["name"]: c for c in res["checks"]}
    assert res["result"] == "passed" and res["reason"] == ""
    assert all(c["ok"] for c in res["checks"]), res["checks"]
    assert "booted" in checks["boot"]["detail"]
    assert "mTLS" in checks["agent"]["detail"]  # answered with the ORIGINAL VM's certificate SAN
    assert checks["command"]["ok"] and "exit 0" in checks["command"]["detail"]
    assert {"fsck:vda1", "fsck:vdb", "fsck:vdc"} <= checks.keys()
    assert all("clean" in checks[k]["detail"] for k in ("fsck:vda1", "fsck:vdb", "fsck:vdc"))
    # the instant path boots throwaway overlays over the vault: powered off, nothing it wrote is kept
    assert checks["shutdown"]["ok"] and checks["shutdown"]["detail"] == "powered off (throwaway overlays, discarded)"
    assert bootcheck_leftovers(settings, lv) == []
    assert wait_ports_free([int(v) for v in res["ports"].values()]) == []
    stored = Vault(settings.vault).get_point(point.backup.point_id).manifest.boot_check
    assert stored is not None and stored["result"] == "passed" and stored["job_id"] == res["job_id"]


def damaged_copy(settings: Settings, point_id: str) -> str:
    """Copy a point, zero the first MiB (MBR + bootloader) of its vda with qemu-io, fix the manifest up."""
    vault = Vault(settings.vault)
    src = vault.get_point(point_id).path
    new_id = new_point_id()
    dst = src.parent / new_id
    shutil.copytree(src, dst, copy_function=lambda s, d: subprocess.run(["cp", "--sparse=always", s, d], check=True))
    m = json.loads((dst / "manifest.json").read_text())
    rec = next(d for d in m["disks"] if d["target"] == "vda")
    disk = dst / rec["file"]
    subprocess.run(
        ["qemu-io", "-f", rec["format"], "-c", "write -P 0 0 1M", str(disk)], check=True, capture_output=True
    )
    rec["digest"] = stream(disk).digest  # re-recorded: the damage is in the guest's data, not the vault's
    rec["logical_size"] = disk.stat().st_size
    rec["stored_bytes"] = disk.stat().st_blocks * 512
    m["point_id"], m["boot_check"] = new_id, None
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    sums.seal(dst)  # re-sealed like a published point: only the guest's data is damaged
    assert vault.verify(vault.get_point(new_id)).ok  # the damage is inside the guest, not in the vault
    return new_id


def test_boot_check_fails_on_zeroed_boot_sector(settings: Settings, point: GuestPoint, lv: libvirt.virConnect) -> None:
    bad = damaged_copy(settings, point.backup.point_id)
    t0 = time.monotonic()
    with pytest.raises(VmBackupError) as ei:
        BootChecker(settings).run(bad, timeout_s=45)
    took = time.monotonic() - t0
    e = ei.value
    print(f"\nboot-check of the damaged point failed after {took:.1f} s: {e.message}")
    assert e.code == "BOOT_CHECK_FAILED"
    assert "no login prompt" in e.message and "console stayed empty" in e.message
    checks = {c["name"]: c for c in e.details["checks"]}
    assert checks["restore"]["ok"] and not checks["boot"]["ok"]
    assert "agent" not in checks and took < 45 + 120
    assert bootcheck_leftovers(settings, lv) == []
    assert wait_ports_free([int(v) for v in e.details["ports"].values()]) == []
    stored = Vault(settings.vault).get_point(bad).manifest.boot_check
    assert stored is not None and stored["result"] == "failed" and stored["reason"] == e.details["reason"]


def shut_off(dom: libvirt.virDomain, timeout: float = 90.0) -> str:
    """ACPI shutdown, hard power-off if it does not finish; returns how it went off."""
    dom.shutdown()
    deadline = time.monotonic() + timeout
    while dom.isActive():
        if time.monotonic() > deadline:
            dom.destroy()
            return "forced"
        time.sleep(1)
    return "clean"


def test_replace_restore_refused_while_running_then_rolls_back(
    settings: Settings, make_lab_vm: Callable[..., Any], lv: libvirt.virConnect
) -> None:
    vm = make_lab_vm("repl", data_disks=0)
    Registrar(settings).register(vm.name, RegisterOptions(ssh_wait_s=120))
    assert vm.ssh(f"echo good-state > {MARKER_FILE} && sync")[0] == 0
    b = BackupEngine(settings).run(BackupRequest(vm=vm.name))
    assert vm.ssh(f"echo changed-later > {MARKER_FILE} && sync")[0] == 0
    r = Restorer(settings)
    with pytest.raises(VmBackupError) as ei:
        r.restore_replace(b.point_id, vm.name)
    assert ei.value.code == "VM_RUNNING" and "shut" in ei.value.remediation
    assert vm.ssh(f"cat {MARKER_FILE}")[1].strip() == "changed-later"  # untouched
    dom = lv.lookupByName(vm.name)
    how = shut_off(dom)
    t0 = time.monotonic()
    res = r.restore_replace(b.point_id, vm.name)
    print(f"\nshutdown {how}; replace {res.bytes_copied} B in {time.monotonic() - t0:.1f} s")
    root = vm.meta.files[0]
    assert res.disks == {"vda": root} and res.mode == "replace"
    kept = Path(root).with_name(f"{Path(root).name}.vmb-replaced-{res.job_id}")
    assert list(Path(root).parent.glob("*.vmb-*")) == [kept] and res.kept_old == {"vda": str(kept)}  # kept by default
    dom.create()
    wait_for_ssh(vm.meta, 240)
    assert vm.ssh(f"cat {MARKER_FILE}")[1].strip() == "good-state"
    assert dom.UUIDString() == vm.uuid  # the same VM, rolled back
