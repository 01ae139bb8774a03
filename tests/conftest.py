"""Session fixtures every test area shares: a private VMBACKUP_HOME, the lab image, and real lab VMs.

Environment (set once, at import, before any test module loads settings):
  * ``VMBACKUP_HOME``: a fresh per-session directory under /var/tmp (mode 0755, so QEMU running as
    libvirt-qemu can reach VM files in it). Always overridden, even if the caller set one (``make`` exports
    a default). Removed at session end.
  * ``VMBACKUP_IMAGE_CACHE``: ``/var/tmp/vmbackup-images`` unless already set; the lab image is built once
    per machine and shared by every session.
  * The lab SSH key is shared too (``$VMBACKUP_IMAGE_CACHE/test-home/lab/ssh/id_ed25519``, copied into the
    session's home), because the image bakes the public key in and its cache key includes the fingerprint.

Fixtures:
  * ``settings`` (session): ``controller.settings.load()`` for that environment.
  * ``lab_image`` (session): ``controller.lab.image.ImageInfo`` of the built (or cached) image.
  * ``lab_vm`` (session): ONE running lab VM with 2 data disks (/data1, /data2, 1 GiB ext4 each), SSH
    answering. A :class:`LabVmHandle`: ``.name``, ``.uuid``, ``.meta`` (LabMetadata: ssh/agent ports, key,
    console, files), ``.ssh(cmd, timeout=60) -> (rc, stdout, stderr)``, ``.console_tail()``. Share it; do
    not damage it (use ``make_lab_vm`` for that).
  * ``make_lab_vm`` (session): factory ``make_lab_vm(name, **create_lab_vm_kwargs) -> LabVmHandle``; the
    name gets the session prefix; every VM it made is destroyed at session end, pass or fail (or earlier
    with ``handle.destroy()``). kwargs: data_disks, memory_mib, vcpus, disk_size_gib, data_disk_gib, wait.
  * ``lab_prefix`` (session): the unique name prefix of this session's VMs (``t<pid>-``).
  * ``registered_vm`` (session): ``lab_vm`` registered with the controller (tests/fixtures_registration.py).
  * ``private_home`` (per test, opt-in): a fresh VMBACKUP_HOME (its vault at ``home/vault``) under /var/tmp,
    mode 0755 so QEMU can read disk images in it; removed afterwards. ``private_settings``: its settings.
    Never combine with the lab-VM fixtures: they live in the session home.

VM-booting tests are marked ``@pytest.mark.vm`` and should run under ``flock /tmp/vmbackup-vm.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix=f"vmbackup-test-{os.getpid()}-", dir="/var/tmp"))
os.chmod(_SESSION_HOME, 0o755)
os.environ["VMBACKUP_HOME"] = str(_SESSION_HOME)
os.environ.pop("VMBACKUP_VAULT", None)  # follow the private home
os.environ.setdefault("VMBACKUP_IMAGE_CACHE", "/var/tmp/vmbackup-images")

LAB_PREFIX = f"t{os.getpid()}-"

from controller import settings as settings_mod  # noqa: E402  (after the environment is set)
from controller.lab import host, image, sshkey, vms  # noqa: E402
from controller.lab.exceptions import LabError, LabSshTimeout  # noqa: E402
from controller.lab.sshexec import run as ssh_run  # noqa: E402
from controller.virt.metadata import LabMetadata  # noqa: E402
from tests.fixtures_registration import registered_vm  # noqa: E402, F401  (session fixture built on lab_vm)
from tests.timing_plugin import (  # noqa: E402, F401  (hooks: per-module times, VM fixtures imply the vm mark)
    pytest_collection_modifyitems,
    pytest_runtest_logreport,
    pytest_terminal_summary,
)


@dataclass
class LabVmHandle:
    """A lab VM made for tests: its identity, lab metadata, and an SSH command helper."""

    name: str
    uuid: str
    meta: LabMetadata
    settings: settings_mod.Settings
    boot_seconds: float | None = None
    destroyed: bool = field(default=False, repr=False)

    @property
    def metadata(self) -> LabMetadata:
        """Alias of meta."""
        return self.meta

    def ssh(self, cmd: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run cmd as root in the VM over SSH (paramiko); return (rc, stdout, stderr)."""
        return ssh_run(self.meta, cmd, timeout=timeout)

    def console_tail(self, lines: int = 40) -> str:
        """The end of the VM's serial console log (for failure messages)."""
        return _tail(self.meta.console_path, lines)

    def destroy(self) -> None:
        """Destroy the VM and its files now (idempotent)."""
        if not self.destroyed:
            vms.destroy_lab_vm(self.settings, self.name)
            self.destroyed = True


def _tail(path: str, lines: int = 40) -> str:
    """The last lines of a text file, or why it cannot be read."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no console log: {e})"


def _install_shared_key(settings: settings_mod.Settings) -> None:
    """Copy the machine-wide test lab key into this session's home (creating it once, under a lock)."""
    shared = sshkey.key_path(settings.image_cache / "test-home" / "lab")
    settings.image_cache.mkdir(parents=True, exist_ok=True)
    with open(settings.image_cache / ".test-key.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sshkey.ensure_key(shared)
    mine = sshkey.key_path(settings.lab_dir)
    mine.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(mine.parent, 0o700)
    pub = shared.name + ".pub"
    for src, dst in ((shared, mine), (shared.with_name(pub), mine.with_name(pub))):
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)


def _sweep_stale(settings: settings_mod.Settings) -> None:
    """Destroy lab VMs and homes left by earlier test sessions whose process is gone (t<pid>-..., pid dirs)."""
    with contextlib.suppress(Exception):
        for vm in vms.list_lab_vms(settings):
            m = re.match(r"t(\d+)-", vm.name)
            if m and int(m.group(1)) != os.getpid() and not Path(f"/proc/{m.group(1)}").exists():
                with contextlib.suppress(LabError):
                    vms.destroy_lab_vm(settings, vm.name)
    for d in Path("/var/tmp").glob("vmbackup-test-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def settings() -> settings_mod.Settings:
    """The session's settings (private VMBACKUP_HOME, shared image cache, shared lab key)."""
    s = settings_mod.load()
    _install_shared_key(s)
    return s


@pytest.fixture(scope="session")
def lab_prefix() -> str:
    """The name prefix of every lab VM this session creates."""
    return LAB_PREFIX


@pytest.fixture(scope="session")
def lab_image(settings: settings_mod.Settings) -> image.ImageInfo:
    """The lab guest image, built once per machine (cached by recipe hash)."""
    return image.ensure_image(settings)


@pytest.fixture(scope="session")
def make_lab_vm(
    settings: settings_mod.Settings, lab_image: image.ImageInfo
) -> Iterator[Callable[..., LabVmHandle]]:
    """Factory of extra lab VMs (prefixed names), all destroyed at session end."""
    host.ensure_daemons(settings.uri)
    _sweep_stale(settings)
    made: list[LabVmHandle] = []

    def make(name: str, **kw: Any) -> LabVmHandle:
        full = name if name.startswith(LAB_PREFIX) else LAB_PREFIX + name
        try:
            vm = vms.create_lab_vm(settings, full, base_image=lab_image.path, **kw)
        except LabSshTimeout as e:  # keep the console in the failure, then clean up
            console = _tail(e.details.get("console", ""))
            with contextlib.suppress(LabError):
                vms.destroy_lab_vm(settings, full)
            raise LabSshTimeout(f"{e.message}\n--- console tail ---\n{console}", details=e.details) from e
        except BaseException:
            with contextlib.suppress(LabError):  # created but failed later: still clean it up
                vms.destroy_lab_vm(settings, full)
            raise
        h = LabVmHandle(vm.name, vm.uuid, vm.meta, settings, vm.boot_seconds)
        made.append(h)
        return h

    yield make
    errors: list[str] = []
    for h in made:
        try:
            h.destroy()
        except LabError as e:
            errors.append(f"{h.name}: {e}")
    assert not errors, f"lab VM teardown failed: {errors}"


@pytest.fixture(scope="session")
def lab_vm(make_lab_vm: Callable[..., LabVmHandle]) -> LabVmHandle:
    """ONE shared running lab VM with 2 data disks (/data1, /data2), SSH answering."""
    return make_lab_vm("shared", data_disks=2)


@pytest.fixture
def private_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private VMBACKUP_HOME for one test, its vault at ``home/vault``; QEMU's user can reach files in it."""
    home = Path(tempfile.mkdtemp(prefix="vmb-test-home-", dir="/var/tmp"))
    home.chmod(0o755)
    monkeypatch.setenv("VMBACKUP_HOME", str(home))
    monkeypatch.setenv("VMBACKUP_VAULT", str(home / "vault"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def private_settings(private_home: Path) -> settings_mod.Settings:
    """The settings of the test's ``private_home``."""
    return settings_mod.load()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's private VMBACKUP_HOME (lab VMs are gone by now: fixtures tore them down)."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
