"""`make e2e` under pytest: run vagrant/e2e.sh (two Vagrant VMs, the whole product workflow) and check its result.

The driver records every step and check in result.json; this test asserts on that record, not on the exit code
alone, so a driver that silently skipped a step fails here. Boots 2 Vagrant VMs + a restored VM + a boot-check VM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.settings import Settings

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
EXPECTED_STEPS = [
    "lab image", "box", "agent bundle (host side: the namespace has no route to PyPI)",
    "namespace + private libvirtd", "vagrant up (2 VMs, provisioned)", "guest state before backup", "discover",
    "register both", "policy + protect", "marker row in the application DB", "backup now", "points + vault verify",
    "restore e2e-app as a new VM", "check the restored guest",
    "boot-check the marker point (marker data checked over SSH)", "vagrant destroy", "teardown",
]  # fmt: skip
EXPECTED_CHECKS = [
    "labapp writing", "discover finds both", "register e2e-app", "register e2e-marker",
    "freeze hook kept by the agent install", "e2e-app consistency", "e2e-marker consistency", "two recovery points",
    "points record consistency", "vault verify", "restored DB integrity_check", "restored DB has the pre-backup row",
    "restored guest mounts its data disk", "boot-check of the marker point",
]  # fmt: skip


def _why_not_runnable() -> str:
    """'' when the e2e can run here, else the reason (printed as the skip reason)."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces, a private libvirtd)"
    missing = [t for t in ("vagrant", "nsenter", "virsh", "libvirtd") if shutil.which(t) is None]
    if missing:
        return f"missing {missing}: apt-get install -y --no-install-recommends vagrant vagrant-libvirt dnsmasq-base"
    return ""


@pytest.fixture
def e2e_state() -> Iterator[Path]:
    """The run's state dir, below /var/tmp: QEMU (libvirt-qemu) must reach restored disks in it, and pytest's own
    tmp dirs are private to root (0700)."""
    state = Path(tempfile.mkdtemp(prefix=f"vmbackup-e2e-{os.getpid()}-", dir="/var/tmp"))
    state.chmod(0o755)
    yield state
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.vm
@pytest.mark.timeout(3600)
def test_vagrant_end_to_end(settings: Settings, lab_image: Any, e2e_state: Path) -> None:
    """Every step ran and passed, in order; every check passed; nothing was left behind."""
    reason = _why_not_runnable()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the Vagrant end-to-end test: {reason}")
    if reason:
        pytest.skip(reason)
    state = e2e_state
    env = dict(
        os.environ,
        E2E_ROOT="/var/tmp/vmbackup-e2e",  # box and bundle caches survive between sessions
        E2E_STATE=str(state),
        E2E_NETNS=f"vmbackup-e2e-t{os.getpid()}",
        E2E_IMAGE_HOME=str(settings.home),  # holds the shared lab key the session image was built for
    )
    proc = subprocess.run(["bash", str(VAGRANT_DIR / "e2e.sh")], env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    result_path = state / "result.json"
    assert result_path.exists(), f"no result.json; exit {proc.returncode}\n{log[-6000:]}"
    result = json.loads(result_path.read_text())
    failed = [c for c in result["checks"] if not c["ok"]] + [s for s in result["steps"] if not s["ok"]]
    assert proc.returncode == 0 and result["ok"] and not failed, f"{failed}\n{log[-8000:]}"
    assert [s["step"] for s in result["steps"]] == EXPECTED_STEPS, log[-4000:]
    assert [c["check"] for c in result["checks"]] == EXPECTED_CHECKS, log[-4000:]
    facts = result["facts"]
    assert facts["libvirt_uri"].startswith("qemu+unix:///system?socket=")
    for vm in ("e2e-app", "e2e-marker", "restored"):
        assert facts[f"ip_{vm}"].startswith("192.168.121."), facts  # the guests were reached by IP, inside the netns
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert env["E2E_NETNS"] not in netns.split()
    assert not (state / "lv").exists()  # the private libvirt state (pool volumes) is gone
    print(json.dumps({s["step"]: s["seconds"] for s in result["steps"]}, indent=1))
