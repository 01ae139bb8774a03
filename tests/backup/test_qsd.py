"""controller.backup.qsd, host-only with real qemu-storage-daemon/qemu-img/qemu-io: the incremental copy of a
disk's dirty clusters into a qcow2 over the parent point, laid out like the vault (VM/P/disks/vdb.qcow2 and
VM/.tmp-Q/disks/vdb.qcow2 with backing ../../P/disks/vdb.qcow2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.backup import qsd, qsdproc
from controller.backup.exceptions import BitmapInconsistent, BitmapMissing, IncrementalCopyFailed

KiB, MiB = 1024, 1024 * 1024
TOOLS = ["qemu-img", "qemu-io", "qemu-storage-daemon"]
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}")
BACKING = "../../P/disks/vdb.qcow2"
#: (offset, length, zeroes) written after the checkpoint's bitmap is added
WRITES = [(3 * MiB, 100 * KiB, False), (10 * MiB, MiB, True), (40004 * KiB, 4 * KiB, False), (60 * MiB, 3 * MiB, False)]


def run(*args: str) -> str:
    """Run a command, fail on error, return stdout."""
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def qemu_io(image: Path, *cmds: str) -> None:
    """qemu-io on the image (loads its enabled persistent bitmaps, marks every write, stores them on close)."""
    run("qemu-io", *[a for c in cmds for a in ("-c", c)], str(image))


def identical(a: Path, b: Path) -> bool:
    """qemu-img compare: same guest-visible content (b read through its backing chain)."""
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


def qsd_pids_under(path: Path) -> list[int]:
    """Every live qemu-storage-daemon process whose command line names a path under `path`."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        ours = any(str(path).encode() in a for a in argv)
        if argv and os.path.basename(argv[0]) == b"qemu-storage-daemon" and state != "Z" and ours:
            out.append(int(d.name))
    return out


@dataclass
class Chain:
    """A base disk with bitmap cp1 and its parent point P (the base as it was when cp1 was added)."""

    root: Path
    base: Path
    parent: Path
    dst: Path
    work: Path


def make_chain(tmp_path: Path, size: str = "64M") -> Chain:
    """Base filled with a pattern, copied as the parent point P, then `cp1` added (persistent, enabled)."""
    vm = tmp_path / "VM"
    base, parent = tmp_path / "base.qcow2", vm / "P" / "disks" / "vdb.qcow2"
    parent.parent.mkdir(parents=True)
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), size)
    qemu_io(base, f"write -q -P 0xa5 0 {size}")
    shutil.copyfile(base, parent)
    run("qemu-img", "bitmap", "--add", "--enable", str(base), "cp1")
    return Chain(tmp_path, base, parent, vm / ".tmp-Q" / "disks" / "vdb.qcow2", vm / ".tmp-Q")


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    """A chain with WRITES done after cp1; no daemon may outlive the test."""
    c = make_chain(tmp_path)
    qemu_io(c.base, *[f"write -q {'-z' if z else '-P 0x5c'} {off} {n}" for off, n, z in WRITES])
    yield c
    assert qsd_pids_under(tmp_path) == []


def expected_dirty(granularity: int) -> int:
    """The bytes WRITES dirty, each run rounded out to the granularity (runs here never share a cluster)."""
    return sum((off + n + granularity - 1) // granularity * granularity - off // granularity * granularity
               for off, n, _ in WRITES)  # fmt: skip


def test_bitmaps_reports_the_checkpoint_count(chain: Chain) -> None:
    """query-named-block-nodes through the daemon: cp1 is persistent, consistent, and counts the written runs."""
    states = qsd.bitmaps(str(chain.base), workdir=chain.work)
    cp1 = states["cp1"]
    assert (cp1.persistent, cp1.inconsistent) == (True, False)
    assert cp1.granularity == 64 * KiB
    assert cp1.count == expected_dirty(cp1.granularity)
    assert list(chain.work.glob("qsd-*.pid")) == []  # the pidfile goes with the daemon


def test_backup_changed_copies_exactly_the_dirty_clusters(chain: Chain) -> None:
    """dst over its parent equals the base; the count is the bitmap's; only the changed clusters are stored;
    dst records the relative backing; the base's bitmap is left as it was (bitmap-mode=never)."""
    seen: list[tuple[int, int]] = []
    count = qsd.backup_changed(str(chain.base), "cp1", chain.dst, BACKING, chain.work, lambda d, t: seen.append((d, t)))
    assert count == expected_dirty(64 * KiB) == qsd.bitmaps(str(chain.base), workdir=chain.work)["cp1"].count
    assert identical(chain.base, chain.dst)
    assert not identical(chain.parent, chain.dst)  # the copy did change something
    info = json.loads(run("qemu-img", "info", "--output=json", str(chain.dst)))
    assert info["backing-filename"] == BACKING and info["backing-filename-format"] == "qcow2"
    stored = chain.dst.stat().st_blocks * 512
    assert stored <= count + MiB  # the written clusters plus qcow2 metadata (the zeroed MiB is a zero cluster)
    assert stored < os.path.getsize(chain.base) // 10
    assert seen and seen[-1] == (seen[-1][1], seen[-1][1]) and seen[-1][1] >= count
    assert all(d <= t for d, t in seen)
    run("qemu-img", "check", str(chain.dst))


def test_zeroed_range_reads_as_zero_not_as_the_parent(chain: Chain) -> None:
    """The zero write over the parent's pattern must be recorded in dst (a zero cluster over the backing), not
    skipped or left unallocated (which would read the parent's old data)."""
    qsd.backup_changed(str(chain.base), "cp1", chain.dst, BACKING, chain.work)
    off, n, _ = next(w for w in WRITES if w[2])
    run("qemu-io", "-c", f"read -q -P 0 {off} {n}", str(chain.dst))
    out = subprocess.run(["qemu-io", "-c", f"read -q -P 0 {off} {n}", str(chain.parent)], capture_output=True,
                         text=True, check=False).stdout  # fmt: skip
    assert "Pattern verification failed" in out  # the parent really has data there


def test_nothing_dirty_gives_an_empty_overlay(tmp_path: Path) -> None:
    """An idle disk: count 0, no job run, dst is an empty overlay that still reads like the base."""
    c = make_chain(tmp_path)
    assert qsd.backup_changed(str(c.base), "cp1", c.dst, BACKING, c.work) == 0
    assert identical(c.base, c.dst)
    assert json.loads(run("qemu-img", "map", "--output=json", str(c.dst)))[0]["depth"] == 1  # nothing in dst
    assert qsd_pids_under(tmp_path) == []


def test_missing_bitmap_is_typed_and_creates_nothing(chain: Chain) -> None:
    """BITMAP_MISSING names the disk and the bitmap; dst is not created."""
    with pytest.raises(BitmapMissing) as ei:
        qsd.backup_changed(str(chain.base), "vmb-gone", chain.dst, BACKING, chain.work)
    assert ei.value.code == "BITMAP_MISSING"
    assert ei.value.details["disk"] == str(chain.base) and ei.value.details["bitmap"] == "vmb-gone"
    assert not chain.dst.exists()
    assert qsdproc.is_qsd_running(chain.work) == []


def test_raising_progress_cancels_the_job_and_ends_the_daemon(tmp_path: Path) -> None:
    """The callback's exception cancels the job and comes back unchanged; no daemon or pidfile is left."""
    c = make_chain(tmp_path)
    qemu_io(c.base, "write -q -P 0x77 0 64M")  # enough to still be running at the first poll

    class Stop(Exception):
        pass

    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        raise Stop

    with pytest.raises(Stop):
        qsd.backup_changed(str(c.base), "cp1", c.dst, BACKING, c.work, progress)
    assert calls and calls[0][1] == 64 * MiB
    assert qsdproc.is_qsd_running(c.work) == [] and list(c.work.glob("qsd-*.pid")) == []
    assert qsd_pids_under(tmp_path) == []
    c.dst.unlink()  # the caller removes dst


def test_base_held_as_a_backing_file_by_a_writer(chain: Chain) -> None:
    """Like a running VM after the snapshot: another process writes an overlay of the base (so the base is held
    and no writer may open it); the daemon still reads it (force-share) and the copy is exact."""
    overlay = chain.root / "overlay.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(chain.base), str(overlay))
    holder = subprocess.Popen(["qemu-io", str(overlay)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        locked = subprocess.run(["qemu-io", "-c", "read -q 0 1", str(chain.base)], capture_output=True, text=True,
                                check=False)  # fmt: skip
        assert "write\" lock" in locked.stderr  # the base really is held: a writer is refused
        count = qsd.backup_changed(str(chain.base), "cp1", chain.dst, BACKING, chain.work)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert count == expected_dirty(64 * KiB)
    assert identical(chain.base, chain.dst)


def test_bitmap_in_use_by_a_writer_is_inconsistent(chain: Chain) -> None:
    """A process with the base open for writing has the bitmap in use: the daemon can still open the image
    (force-share) but reports cp1 inconsistent, and the copy refuses with BITMAP_INCONSISTENT."""
    holder = subprocess.Popen(["qemu-io", str(chain.base)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert qsd.bitmaps(str(chain.base), workdir=chain.work)["cp1"].inconsistent
        with pytest.raises(BitmapInconsistent) as ei:
            qsd.backup_changed(str(chain.base), "cp1", chain.dst, BACKING, chain.work)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert ei.value.code == "BITMAP_INCONSISTENT" and ei.value.details["bitmap"] == "cp1"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_full_target_filesystem_reports_enospc(chain: Chain) -> None:
    """dst on a 300 KiB tmpfs: INCREMENTAL_COPY_FAILED carrying QEMU's "No space left on device"."""
    chain.work.mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(chain.work))
    try:
        with pytest.raises(IncrementalCopyFailed) as ei:
            qsd.backup_changed(str(chain.base), "cp1", chain.dst, BACKING, chain.work / "qsd")
        assert "No space left on device" in ei.value.details["stderr"]
        assert "No space left on device" in ei.value.message
    finally:
        run("umount", str(chain.work))


def test_kill_stray_ends_only_our_daemon(tmp_path: Path) -> None:
    """Crash recovery: a daemon left with its pidfile in workdir is found and killed; a pidfile naming another
    process (here: this test) is stale and removed without a signal."""
    work = tmp_path / "w"
    work.mkdir()
    pidfile = work / "qsd-stray.pid"
    proc = subprocess.Popen(["qemu-storage-daemon", "--pidfile", str(pidfile)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not qsdproc.is_qsd_running(work) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert qsdproc.is_qsd_running(work) == [proc.pid]
        (work / "qsd-stale.pid").write_text(f"{os.getpid()}\n")
        assert qsdproc.kill_stray(work) == [proc.pid]
        assert proc.wait(timeout=10) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(work.iterdir()) == [] and qsdproc.is_qsd_running(work) == []


def test_daemon_dies_with_the_controller(tmp_path: Path) -> None:
    """PDEATHSIG: SIGKILL the process that started the daemon, and the daemon goes too."""
    work = tmp_path / "w"
    code = ("import sys, time; from pathlib import Path; from controller.backup.qsdproc import daemon\n"
            "with daemon(Path(sys.argv[1])):\n    print('up', flush=True); time.sleep(60)")  # fmt: skip
    ctl = subprocess.Popen([sys.executable, "-c", code, str(work)], stdout=subprocess.PIPE, text=True)
    assert ctl.stdout is not None and ctl.stdout.readline().strip() == "up"
    assert len(qsdproc.is_qsd_running(work)) == 1
    ctl.send_signal(signal.SIGKILL)
    ctl.wait()
    deadline = time.monotonic() + 10
    while qsdproc.is_qsd_running(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qsdproc.is_qsd_running(work) == []
    assert qsd_pids_under(tmp_path) == []
