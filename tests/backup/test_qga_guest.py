"""Backups through the QEMU guest agent on a real lab VM (TCG, Debian 12, qemu-guest-agent from the image, the
domain's org.qemu.guest_agent.0 channel): registered with --quiescer qga and no SSH, a FILE_SYSTEM full and
incremental with a freeze window, qemu-ga stopped -> CRASH, qemu-ga SIGSTOPped while the guest is frozen -> a
bounded backup, CRASH, and the guest thawed once qemu-ga runs again. One VM for the module (its own: these tests
stop the guest's agent)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import paramiko
import pytest

from controller.backup import faults
from controller.backup.engine import BackupEngine, BackupRequest, BackupResult
from controller.cli import points_cmd
from controller.cli.main import main
from controller.lab.sshexec import connect
from controller.registration.precheck import EndpointOverrides
from controller.registration.register import RegisterOptions, Registrar
from controller.vault import Vault
from tests.backup.test_backup_vm import ssh_ok

pytestmark = pytest.mark.vm

FREEZE_TIMEOUT_S = 3.0  # BackupRequest.freeze_timeout_s: the agent response timeout of every qga call


@pytest.fixture(scope="module")
def qga_vm(make_lab_vm: Callable[..., Any], settings: Any) -> Iterator[Any]:
    """A fresh lab VM (one data disk) registered with --quiescer qga; the SSH endpoint given is a dead port, so a
    registration that tried SSH would fail."""
    vm = make_lab_vm("qga", data_disks=1)
    ssh_ok(vm, "systemctl is-active qemu-guest-agent")
    dead = EndpointOverrides(ssh_host="127.0.0.1", ssh_port=1, agent_host="127.0.0.1", agent_port=1)
    with Registrar(settings) as r:
        vm.registration = r.register(vm.name, RegisterOptions(quiescer="qga", endpoints=dead))
    yield vm
    vm.destroy()


def backup(settings: Any, vm: str, **kw: Any) -> BackupResult:
    """One backup through the engine, with a short agent timeout."""
    eng = BackupEngine(settings)
    try:
        return eng.run(BackupRequest(vm=vm, freeze_timeout_s=FREEZE_TIMEOUT_S, **kw))
    finally:
        eng.close()


def _phases(settings: Any, job_id: str) -> dict[str, float]:
    """name -> duration of a job's phases."""
    from controller import db

    conn = db.connect(settings.db_path)
    try:
        rows = conn.execute("SELECT name, duration_s FROM job_phases WHERE job_id = ?", (job_id,)).fetchall()
    finally:
        conn.close()
    return {r["name"]: r["duration_s"] for r in rows}


def test_registered_with_qga_without_ssh(qga_vm: Any, settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    res = qga_vm.registration
    reg = res.registration
    assert reg.quiescer == "qga" and reg.ssh_host == "" and reg.agent_port == 0 and reg.cert_serial == ""
    assert res.info.os == "debian" and res.info.kernel, res.info  # from qemu-ga's guestInfo
    assert "connect" not in _phases(settings, res.job_id)  # no SSH phase ran
    assert main(["register", "--list", "--json"]) == 0
    listed = [r for r in json.loads(capsys.readouterr().out) if r["vm_uuid"] == reg.vm_uuid]
    assert listed and listed[0]["quiescer"] == "qga"


def test_full_and_incremental_are_file_system_with_a_window(
    qga_vm: Any, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    full = backup(settings, qga_vm.name)
    assert full.consistency == "FILE_SYSTEM", full.consistency_reason
    assert "frozen by qemu-guest-agent" in full.consistency_reason
    assert "cannot be verified from outside" in full.consistency_reason
    assert full.freeze_window_ms is not None and 0 < full.freeze_window_ms < 30_000
    ssh_ok(qga_vm, "dd if=/dev/urandom of=/data1/q1 bs=1M count=8 conv=fsync 2>/dev/null && sync")
    inc = backup(settings, qga_vm.name)
    print(
        f"\nqga: full window {full.freeze_window_ms:.0f} ms, incremental window {inc.freeze_window_ms} ms, "
        f"{inc.changed_bytes} changed bytes"
    )
    assert inc.point_type == "incremental" and inc.parent == full.point_id, inc
    assert inc.consistency == "FILE_SYSTEM" and inc.freeze_window_ms is not None
    assert inc.changed_bytes is not None and inc.changed_bytes >= 8 << 20
    m = Vault(settings.vault).get_point(inc.point_id).manifest
    assert m.quiescer == "qga" and m.agent_version is None
    capsys.readouterr()
    assert main(["points", qga_vm.name, "--json"]) == 0
    assert {p["quiescer"] for p in json.loads(capsys.readouterr().out)} == {"qga"}
    assert "FILE_SYSTEM (qga)" in points_cmd._row(Vault(settings.vault).get_point(inc.point_id))


def test_qga_stopped_is_crash_with_the_reason(qga_vm: Any, settings: Any) -> None:
    ssh_ok(qga_vm, "systemctl stop qemu-guest-agent")
    try:
        t0 = time.monotonic()
        r = backup(settings, qga_vm.name)
        took = time.monotonic() - t0
    finally:
        ssh_ok(qga_vm, "systemctl start qemu-guest-agent")
    print(f"\nqga stopped: {r.consistency}: {r.consistency_reason} ({took:.1f} s)")
    assert r.consistency == "CRASH" and "qemu-guest-agent did not answer" in r.consistency_reason
    assert r.freeze_window_ms is None and any("crash-consistent" in w for w in r.warnings)
    assert _phases(settings, r.job_id)["freeze"] < FREEZE_TIMEOUT_S + 5


def test_qga_hung_before_the_freeze_is_bounded_crash_and_nothing_frozen(qga_vm: Any, settings: Any) -> None:
    """qemu-ga SIGSTOPped before the backup (its channel stays connected, so libvirt waits for a reply): the probe
    times out, no freeze is ever sent, the point is CRASH with the reason and the guest writes all along."""
    shell = GuestShell(qga_vm)
    try:
        assert shell.run("kill -STOP $(pidof qemu-ga) && echo stopped") == "stopped"
        t0 = time.monotonic()
        r = backup(settings, qga_vm.name)
        took = time.monotonic() - t0
        # qemu-ga is still stopped: a write + sync must finish (nothing froze), reported on tmpfs
        assert _write_finishes(shell, "/data1/hung-before"), "a write blocked after a backup whose qga hung"
    finally:
        shell.run("kill -CONT $(pidof qemu-ga)")
    print(f"\nqga SIGSTOPped before the freeze: {r.consistency}: {r.consistency_reason} ({took:.1f} s)")
    assert r.consistency == "CRASH" and "qemu-guest-agent did not answer" in r.consistency_reason, r
    assert r.freeze_window_ms is None and any("crash-consistent" in w for w in r.warnings)
    phases = _phases(settings, r.job_id)
    assert phases["freeze"] < FREEZE_TIMEOUT_S + 5 and phases["thaw"] < 1.0, phases  # bounded; no thaw to wait for
    assert "thaw" not in r.consistency_reason  # no freeze was sent, so no thaw was needed
    # qemu-ga runs again and answers the probe it missed: still nothing frozen, and qga works again
    assert _write_finishes(shell, "/data1/hung-after")
    shell.close()
    ok = backup(settings, qga_vm.name)
    assert ok.consistency == "FILE_SYSTEM", ok.consistency_reason


WRITER = r"""
import os
fd = os.open("/data1/records", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
while not os.path.exists("/dev/shm/writer-stop"):
    i += 1
    os.write(fd, b"%08d\n" % i)
    os.fsync(fd)
    with open("/dev/shm/acked.tmp", "w") as f:
        f.write(str(i))
    os.rename("/dev/shm/acked.tmp", "/dev/shm/acked")
"""


def _records(data: bytes) -> int:
    """The number of records in data, asserting they are 1..N, whole, in order (a gap-free prefix)."""
    n = len(data) // 9
    assert data == b"".join(b"%08d\n" % k for k in range(1, n + 1)), f"not a gap-free prefix: {data[-40:]!r}"
    return n


def test_a_guest_writer_loses_no_record(
    qga_vm: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A writer appends numbered records with an fsync each, running through the backup. The point holds records
    1..N with no gap or torn record, N >= the records acknowledged when the guest was frozen (read while frozen),
    N <= that + 1 (the write blocked by the freeze), and the writer went on to write more than N."""
    from controller.filerestore.session import open_point

    ssh_ok(qga_vm, "rm -f /data1/records /dev/shm/writer-stop /dev/shm/acked && sync")
    ssh_ok(
        qga_vm,
        f"cat > /dev/shm/writer.py <<'EOF'\n{WRITER}\nEOF\n"
        "setsid nohup python3 /dev/shm/writer.py </dev/null >/dev/shm/writer.log 2>&1 &",
    )
    deadline = time.monotonic() + 30
    while not ssh_ok(qga_vm, "cat /dev/shm/acked 2>/dev/null || true").strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    shell = GuestShell(qga_vm)
    acked: list[int] = []
    real = faults.checkpoint

    def hook(step: str) -> None:
        """While the guest is frozen: how many records the writer had acknowledged (tmpfs is never frozen)."""
        if step == "while-frozen":  # shell builtins only: executing a program (cat) blocked on the frozen guest
            acked.append(int(shell.run("read a </dev/shm/acked; echo $a")))
        real(step)

    monkeypatch.setattr(faults, "checkpoint", hook)
    try:
        r = backup(settings, qga_vm.name)
    finally:
        monkeypatch.setattr(faults, "checkpoint", real)
        time.sleep(2)  # the writer goes on after the thaw
        shell.run("touch /dev/shm/writer-stop")
    shell.close()
    assert r.consistency == "FILE_SYSTEM", r.consistency_reason
    time.sleep(1)
    wrote = int(ssh_ok(qga_vm, "cat /dev/shm/acked"))
    guest_n = _records(ssh_ok(qga_vm, "sync; cat /data1/records").encode())
    with open_point(r.point_id, "vdb", vault=Vault(settings.vault)) as pf:
        got = pf.get(["vdb:/records"], tmp_path / "out")
    assert got.files == 1 and not got.skipped, got
    n = _records((tmp_path / "out" / "records").read_bytes())
    print(f"\nwriter: {acked} acknowledged while frozen, {n} records in the point, {wrote} written in all")
    assert len(acked) == 1 and acked[0] <= n <= acked[0] + 1, (acked, n)
    assert n < wrote <= guest_n, (n, wrote, guest_n)


def test_vms_and_points_show_the_quiescer(
    qga_vm: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vms` has the quiescer column (table and --json); `points` the quiescer that froze each point."""
    from rich.console import Console

    from controller.cli import output

    uuid = qga_vm.registration.registration.vm_uuid
    assert main(["discover", "--json"]) == 0
    capsys.readouterr()
    assert main(["vms", "--json"]) == 0
    mine = [v for v in json.loads(capsys.readouterr().out) if v["uuid"] == uuid]
    assert len(mine) == 1 and mine[0]["quiescer"] == "qga", mine
    monkeypatch.setattr(output, "console", Console(soft_wrap=True, width=400, file=(buf := io.StringIO())))
    assert main(["vms"]) == 0
    header = next(line for line in buf.getvalue().splitlines() if "registered (quiescer)" in line)
    row = next(line for line in buf.getvalue().splitlines() if uuid in line)
    assert row[header.index("registered (quiescer)") :].split()[0] == "qga", (header, row)  # aligned columns
    assert main(["points", qga_vm.name, "--json"]) == 0
    points = json.loads(capsys.readouterr().out)
    assert points and all(p["quiescer"] == "qga" for p in points), points
    monkeypatch.setattr(output, "console", Console(soft_wrap=True, width=400, file=(buf := io.StringIO())))
    assert main(["points", qga_vm.name]) == 0
    rows = [line for line in buf.getvalue().splitlines() if any(p["point_id"] in line for p in points)]
    assert len(rows) == len(points) and all("(qga)" in line for line in rows), buf.getvalue()


class GuestShell:
    """A root shell in the guest opened BEFORE the freeze (a new SSH login would block on the frozen root fs):
    each line written runs one command whose output ends with a marker line."""

    def __init__(self, vm: Any) -> None:
        self.client: paramiko.SSHClient = connect(vm.meta)
        self.stdin, self.stdout, _ = self.client.exec_command("sh")
        self.stdout.channel.settimeout(60)

    def run(self, cmd: str) -> str:
        """Run cmd, return its output (no disk write happens here: the guest may be frozen)."""
        self.stdin.write(f"{cmd}\necho __done__\n")
        self.stdin.flush()
        out = []
        while (line := self.stdout.readline()) != "__done__\n":
            if not line:
                raise EOFError(f"the guest shell ended during {cmd!r}: {out}")
            out.append(line.rstrip("\n"))
        return "\n".join(out)

    def close(self) -> None:
        """End the shell."""
        self.client.close()


def _write_finishes(shell: GuestShell, path: str, timeout_s: float = 30) -> bool:
    """Write + sync a file in the background (a write to a frozen file system blocks uninterruptibly); True once it
    reported done on tmpfs (never frozen) within timeout_s."""
    shell.run(f"rm -f /dev/shm/wrote; (echo y > {path} && sync && echo ok > /dev/shm/wrote) >/dev/null 2>&1 &")
    deadline = time.monotonic() + timeout_s
    while shell.run("cat /dev/shm/wrote 2>/dev/null") != "ok":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_qga_stopped_while_frozen_is_bounded_crash_and_the_guest_thaws(
    qga_vm: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell = GuestShell(qga_vm)
    stopped: list[str] = []
    real = faults.checkpoint

    def hook(step: str) -> None:
        """While the guest is frozen: SIGSTOP qemu-ga, so the thaw cannot be answered."""
        if step == "while-frozen":
            stopped.append(shell.run("kill -STOP $(pidof qemu-ga) && echo stopped"))
        real(step)

    monkeypatch.setattr(faults, "checkpoint", hook)
    try:
        t0 = time.monotonic()
        r = backup(settings, qga_vm.name)
        took = time.monotonic() - t0
    finally:
        shell.run("kill -CONT $(pidof qemu-ga)")
    print(f"\nqga SIGSTOPped while frozen: {r.consistency}: {r.consistency_reason} ({took:.1f} s)")
    assert stopped == ["stopped"]
    assert r.consistency == "CRASH" and "thaw not confirmed" in r.consistency_reason, r.consistency_reason
    assert _phases(settings, r.job_id)["thaw"] < FREEZE_TIMEOUT_S + 5  # bounded by the agent response timeout
    # qemu-ga runs again: the thaw libvirt already sent it is handled, and the guest writes again. The write runs in
    # the background (a write to a frozen file system blocks uninterruptibly) and reports to tmpfs (never frozen).
    shell.run("rm -f /dev/shm/thawed; (echo y > /data1/after && sync && echo ok > /dev/shm/thawed) >/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while (out := shell.run("cat /dev/shm/thawed 2>/dev/null")) != "ok" and time.monotonic() < deadline:
        time.sleep(1)
    shell.close()
    assert out == "ok", "the guest stayed frozen after qemu-ga was continued"
    dom = libvirt.open(settings.uri).lookupByName(qga_vm.name)
    assert dom.fsThaw() == 0  # nothing left frozen
    monkeypatch.setattr(faults, "checkpoint", real)
    ok = backup(settings, qga_vm.name)  # and the next backup through qga is consistent again
    assert ok.consistency == "FILE_SYSTEM", ok.consistency_reason
