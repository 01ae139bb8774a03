"""Benchmark VMs: a data disk filled with real incompressible data from the host before boot, a lab VM on it,
registration, and a writer in the guest whose longest stall is the guest-visible disruption of a backup."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench.common import MiB, run
from bench.exceptions import BenchSetupFailed, GuestCommandFailed
from controller import db
from controller.agentclient import open_agent
from controller.errors import VmBackupError
from controller.lab import image, vms
from controller.lab.sshexec import run as ssh_run
from controller.lab.sshexec import wait_for_ssh
from controller.registration.register import RegisterOptions, Registrar
from controller.registration.store import Registration, get_registration
from controller.settings import Settings
from controller.virt.connection import connection
from controller.virt.metadata import LabMetadata

CHUNK = 64 * MiB
WRITER_LOG = "/data1/bench-writer.log"
WRITER_PID = "/run/bench-writer.pid"
# Appends a wall-clock timestamp every ~10 ms and fsyncs it: a frozen filesystem or paused disk I/O shows as a gap.
WRITER_PY = (
    "import os,time\n"
    f"fd=os.open('{WRITER_LOG}',os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o644)\n"
    "while True:\n"
    "    os.write(fd,b'%.6f\\n'%time.time()); os.fsync(fd); time.sleep(0.01)\n"
)


def random_stream(nbytes: int) -> bytes:
    """nbytes of incompressible data (AES-CTR keystream with a fresh random key)."""
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return enc.update(bytes(nbytes))


def filled_data_disk(dest: Path, data_bytes: int, label: str = "data1") -> None:
    """A qcow2 at dest holding an ext4 (label) with data_bytes of random files written through a loop mount."""
    fs_bytes = int(data_bytes * 1.08) + 256 * MiB  # ext4 metadata + room for the writer's log
    work = Path(tempfile.mkdtemp(prefix=".fill-", dir=dest.parent))
    raw, mnt = work / "disk.raw", work / "mnt"
    try:
        with open(raw, "wb") as f:
            f.truncate(fs_bytes)
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0", str(raw)])
        mnt.mkdir()
        run(["mount", "-o", "loop", str(raw), str(mnt)])
        try:
            left, k = data_bytes, 0
            while left > 0:
                n = min(CHUNK, left)
                (mnt / f"fill-{k:05d}.bin").write_bytes(random_stream(n))
                left, k = left - n, k + 1
        finally:
            run(["umount", str(mnt)])
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest)])
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class BenchVm:
    """A running lab VM made for a benchmark."""

    name: str
    uuid: str
    meta: LabMetadata
    data_disk: Path
    data_bytes: int
    boot_seconds: float
    register_seconds: float | None = None

    def ssh(self, cmd: str, timeout: float = 120.0) -> str:
        """Run cmd as root in the guest; return stdout or raise GuestCommandFailed."""
        rc, out, err = ssh_run(self.meta, cmd, timeout=timeout)
        if rc != 0:
            raise GuestCommandFailed(f"`{cmd[:60]}` exited {rc} in {self.name}: {err.strip()[-300:]}")
        return out


def boot_vm(settings: Settings, name: str, data_bytes: int, memory_mib: int = 768) -> BenchVm:
    """Create a lab VM whose /data1 holds data_bytes of real data (filled on the host before boot); wait for SSH."""
    base = image.ensure_image(settings).path
    vm = vms.create_lab_vm(settings, name, base_image=base, data_disks=1, data_disk_gib=0.1, wait=False,
                           memory_mib=memory_mib)
    try:
        with connection(settings.uri) as conn:
            dom = conn.lookupByName(name)
            dom.destroy()  # stopped before the guest got anywhere: swap in the filled disk, then boot for real
            disk = Path(vm.meta.vm_dir or "") / "data1.qcow2"
            disk.unlink()
            filled_data_disk(disk, data_bytes)
            os.chmod(disk, 0o644)
            t0 = time.monotonic()
            dom.create()
        wait_for_ssh(vm.meta, 300.0)
        return BenchVm(name, vm.uuid, vm.meta, disk, data_bytes, time.monotonic() - t0)
    except BaseException:
        destroy_vm(settings, name)
        raise


def swap_data_disk(settings: Settings, vm: BenchVm, data_bytes: int) -> None:
    """Power the VM off, replace /data1 by a new disk holding data_bytes of real data, boot, wait for the agent."""
    with connection(settings.uri) as conn:
        dom = conn.lookupByName(vm.name)
        if dom.isActive():
            dom.destroy()
        vms.wait_until_gone(vm.meta)
        vm.data_disk.unlink()
        filled_data_disk(vm.data_disk, data_bytes)
        os.chmod(vm.data_disk, 0o644)
        t0 = time.monotonic()
        dom.create()
    wait_for_ssh(vm.meta, 300.0)
    vm.boot_seconds, vm.data_bytes = time.monotonic() - t0, data_bytes
    wait_agent(vm, settings)


def wait_agent(vm: BenchVm, settings: Settings, timeout: float = 120.0) -> None:
    """Block until the agent service is active and answers GetInfo over mTLS (a freshly booted agent is active
    before it listens: a backup then would fall back to CRASH and measure no freeze window)."""
    reg = get_registration(db.connect(settings.db_path), vm.uuid)
    if reg is None:
        raise BenchSetupFailed(f"{vm.name} is not registered")
    deadline = time.monotonic() + timeout
    while not _agent_ready(vm, settings, reg):
        if time.monotonic() > deadline:
            raise BenchSetupFailed(f"vmbackup-agent does not answer in {vm.name} after {timeout:.0f} s")
        time.sleep(1.0)


def _agent_ready(vm: BenchVm, settings: Settings, reg: Registration) -> bool:
    """The unit is active and GetInfo answers."""
    if ssh_run(vm.meta, "systemctl is-active --quiet vmbackup-agent.service", timeout=30)[0] != 0:
        return False
    try:
        with open_agent(settings, reg) as client:
            client.get_info()
        return True
    except VmBackupError:
        return False


def register(settings: Settings, vm: BenchVm) -> None:
    """Install the vmbackup agent in the VM for real (over SSH); record how long it took."""
    t0 = time.monotonic()
    with Registrar(settings) as registrar:
        registrar.register(vm.name, RegisterOptions(ssh_wait_s=120))
    vm.register_seconds = time.monotonic() - t0


def destroy_vm(settings: Settings, name: str) -> None:
    """Destroy a benchmark VM and its files (no error if it is already gone)."""
    with contextlib.suppress(Exception):
        vms.destroy_lab_vm(settings, name)


def cold_boot_seconds(settings: Settings, vm: BenchVm, agent: bool = False) -> tuple[float, float | None]:
    """Power the VM off, start it from its own disks; seconds until SSH answers, and (agent=True) until the
    vmbackup agent answers GetInfo over mTLS too: what a boot-check proves before its verdict."""
    with connection(settings.uri) as conn:
        dom = conn.lookupByName(vm.name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.shutdown()
        deadline = time.monotonic() + 60
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.5)
        if dom.isActive():
            dom.destroy()
        vms.wait_until_gone(vm.meta)
        t0 = time.monotonic()
        dom.create()
    wait_for_ssh(vm.meta, 300.0)
    ssh_s = time.monotonic() - t0
    if not agent:
        return ssh_s, None
    wait_agent(vm, settings, timeout=300.0)
    return ssh_s, time.monotonic() - t0


def start_writer(vm: BenchVm) -> None:
    """Start the timestamp writer in the guest (detached; its pid in /run, which is never frozen)."""
    script = WRITER_PY.replace("'", "'\"'\"'")
    detached = f"setsid nohup python3 -c '{script}' >/dev/null 2>&1 < /dev/null &"
    vm.ssh(f"rm -f {WRITER_LOG}; {detached} echo $! > {WRITER_PID}")
    time.sleep(1.0)
    if not vm.ssh(f"wc -l < {WRITER_LOG}").strip().isdigit():
        raise BenchSetupFailed("the guest writer did not start")


def stop_writer(vm: BenchVm) -> list[float]:
    """Stop the writer; return the gaps (s) between its consecutive timestamps."""
    return gaps_of(stop_writer_stamps(vm))


def gaps_of(stamps: list[float]) -> list[float]:
    """The gaps (s) between consecutive writer timestamps."""
    return [b - a for a, b in itertools.pairwise(stamps)]


def stop_writer_stamps(vm: BenchVm) -> list[float]:
    """Stop the writer; return its timestamps (guest epoch seconds, one before each write + fsync)."""
    vm.ssh(f"kill $(cat {WRITER_PID}) && rm -f {WRITER_PID}; sleep 0.2")
    stamps = [float(x) for x in vm.ssh(f"cat {WRITER_LOG}").split() if x]
    vm.ssh(f"rm -f {WRITER_LOG}")
    if len(stamps) < 2:
        raise GuestCommandFailed(f"the guest writer logged {len(stamps)} timestamps")
    return stamps


def guest_clock_offset(vm: BenchVm, tries: int = 3) -> float:
    """Guest epoch clock minus the host's (s), from `date` over SSH bracketed by the host clock; the try with
    the shortest round trip wins (its error is at most half of it)."""
    best: tuple[float, float] | None = None
    for _ in range(tries):
        t0 = time.time()
        guest = float(vm.ssh("date +%s.%N").strip())
        t1 = time.time()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, guest - (t0 + t1) / 2)
    assert best is not None
    return best[1]
