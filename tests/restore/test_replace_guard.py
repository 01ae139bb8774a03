"""restore --replace refuses another VM's point, asks before it changes anything, and keeps the replaced disks.

Real libvirt (domains are defined, never started) and real qemu-img; no QEMU process runs, so these do not need
the VM lock.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import sys
from pathlib import Path

import libvirt
import pytest

from controller.cli.main import main
from controller.errors import VmBackupError
from controller.jobs.store import JobStore
from controller.restore.restore import Restorer
from controller.settings import Settings
from controller.vault import RecoveryPoint, Vault
from tests.restore import restore_synth as synth

pytestmark = pytest.mark.libvirt  # needs the local libvirtd (make test-fast skips it)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _two_vms(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> tuple[synth.SynthVm, synth.SynthVm, RecoveryPoint]:
    """VMs A and B (shut off) and a recovery point of A."""
    a = synth.define_vm(lv, private_home, "rg-a", "disk-of-a")
    b = synth.define_vm(lv, private_home, "rg-b", "disk-of-b")
    return a, b, synth.make_point(Vault(private_settings.vault), a)


def test_replace_refuses_another_vms_point(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> None:
    """A's point into B: POINT_FROM_OTHER_VM naming --from-other-vm; B's disk byte for byte untouched, no job."""
    a, b, point = _two_vms(private_settings, lv, private_home)
    before = _sha(b.disk)
    r = Restorer(private_settings)
    with pytest.raises(VmBackupError) as ei:
        r.restore_replace(point.point_id, b.name, confirm=lambda _s: True)
    e = ei.value
    assert e.code == "POINT_FROM_OTHER_VM" and a.uuid in e.message and b.uuid in e.message
    assert "--from-other-vm" in e.remediation and "vmbackup points" in e.remediation
    assert _sha(b.disk) == before and sorted(p.name for p in b.disk.parent.glob("vda.qcow2*")) == ["vda.qcow2"]
    assert JobStore(r.conn).list(type="restore") == []


def test_replace_from_other_vm_keeps_the_old_disk(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path
) -> None:
    """--from-other-vm goes ahead after the question; B's previous disk is kept aside and listed."""
    _a, b, point = _two_vms(private_settings, lv, private_home)
    before = _sha(b.disk)
    asked: list[str] = []

    def confirm(summary: str) -> bool:
        asked.append(summary)
        return True

    res = Restorer(private_settings).restore_replace(point.point_id, b.name, from_other_vm=True, confirm=confirm)
    assert len(asked) == 1 and "ANOTHER VM" in asked[0] and str(b.disk) in asked[0]
    assert "disk-of-a" in synth.read_marker(b.disk)
    old = b.disk.with_name(f"vda.qcow2.vmb-replaced-{res.job_id}")
    assert res.kept_old == {"vda": str(old)} and _sha(old) == before
    assert "disk-of-b" in synth.read_marker(old)


def test_cli_without_tty_needs_yes(
    private_settings: Settings, lv: libvirt.virConnect, private_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No terminal and no --yes: CONFIRMATION_REQUIRED naming --yes, before anything (even a same-VM point)."""
    a, _b, point = _two_vms(private_settings, lv, private_home)
    before = _sha(a.disk)
    assert main(["restore", point.point_id, "--replace", a.name, "--json"]) == 1
    cap = capsys.readouterr()
    err = json.loads(cap.out or cap.err)
    assert "CONFIRMATION_REQUIRED" in json.dumps(err) and "--yes" in json.dumps(err)
    assert _sha(a.disk) == before
    assert main(["restore", point.point_id, "--replace", a.name, "--yes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["kept_old"]) == ["vda"] and _sha(Path(out["kept_old"]["vda"])) == before


@pytest.mark.parametrize("answer", ["n", "yes"])
def test_cli_asks_on_a_tty(
    private_settings: Settings,
    lv: libvirt.virConnect,
    private_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    """On a terminal the summary goes to stderr; 'n' changes nothing (RESTORE_DECLINED), 'yes' replaces."""
    a, _b, point = _two_vms(private_settings, lv, private_home)
    synth.make_disk(a.disk.with_name("now.qcow2"), "current-a")
    a.disk.with_name("now.qcow2").rename(a.disk)  # the current disk differs from the point's
    before = _sha(a.disk)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda *_a: answer)
    rc = main(["restore", point.point_id, "--replace", a.name])
    err = capsys.readouterr().err
    assert "Replace the disks of VM 'rg-a'" in err and "kept as" in err
    if answer == "n":
        assert rc == 1 and "RESTORE_DECLINED" in err and _sha(a.disk) == before
    else:
        assert rc == 0 and "disk-of-a" in synth.read_marker(a.disk)
        (old,) = a.disk.parent.glob("vda.qcow2.vmb-replaced-*")
        assert _sha(old) == before
