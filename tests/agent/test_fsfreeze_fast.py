"""The short freeze (issue #16): every filesystem is flushed before the first FIFREEZE, and filesystems that cannot
write through one another are frozen at the same time. Fake ioctl/syncfs on plain directories, fake sysfs; the
loop-mount test is real (root)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from agent.exceptions import FreezeFailed
from agent.quiesce.fsfreeze import FIFREEZE, FITHAW, FsFreezer, syncfs
from agent.quiesce.mounts import Mount, freeze_plan, on_hardware_devices, read_mounts
from tests.agent.helpers import LoopFs


def one_by_one(_plan: list[Mount]) -> bool:
    """The freezer's ``together`` decision, forced to 'one after the other'."""
    return False


def all_at_once(_plan: list[Mount]) -> bool:
    """The freezer's ``together`` decision, forced to 'at the same time'."""
    return True


def mounts(tmp_path: Path, names: list[str]) -> list[Mount]:
    """Directories standing in for mount points (same device as tmp_path, so the freezer's check passes)."""
    st = os.stat(tmp_path)
    out = []
    for i, name in enumerate(names):
        d = tmp_path / name
        d.mkdir()
        out.append(Mount(i + 10, 1, (os.major(st.st_dev), os.minor(st.st_dev)), str(d), ("rw",), "ext4", name,
                         ("rw",)))
    return out


def test_every_filesystem_is_synced_before_the_first_freeze(tmp_path: Path) -> None:
    """syncfs runs once per planned filesystem, all of them before the first FIFREEZE; thaw still undoes all."""
    calls: list[tuple[str, int]] = []

    def ioctl(fd: int, op: int, arg: int) -> object:
        calls.append(("freeze" if op == FIFREEZE else "thaw" if op == FITHAW else "?", fd))
        return 0

    def sync(fd: int) -> None:
        calls.append(("sync", fd))

    f = FsFreezer(ioctl, sync=sync, together=one_by_one)
    plan = mounts(tmp_path, ["a", "b", "c"])
    frozen, skipped = f.freeze(plan)
    try:
        assert frozen == [m.mount_point for m in plan] and not skipped
        ops = [op for op, _ in calls]
        assert ops == ["sync"] * 3 + ["freeze"] * 3
        assert [fd for op, fd in calls if op == "sync"] == [fd for op, fd in calls if op == "freeze"]
        assert f.first_freeze_at is not None
    finally:
        thawed, errors = f.thaw()
    assert [m for m, _ in thawed] == [m.mount_point for m in reversed(plan)] and not errors


def test_a_failing_sync_does_not_stop_the_freeze(tmp_path: Path) -> None:
    """syncfs is only a head start: its error is ignored and every filesystem is still frozen."""
    frozen_fds: list[int] = []

    def ioctl(fd: int, op: int, arg: int) -> object:
        if op == FIFREEZE:
            frozen_fds.append(fd)
        return 0

    def sync(fd: int) -> None:
        raise OSError(errno.EIO, "forced (test)")

    f = FsFreezer(ioctl, sync=sync, together=one_by_one)
    plan = mounts(tmp_path, ["a", "b"])
    frozen, _ = f.freeze(plan)
    f.thaw()
    assert frozen == [m.mount_point for m in plan] and len(frozen_fds) == 2


def test_syncfs_works_on_a_real_directory(tmp_path: Path) -> None:
    """The real syncfs(2) wrapper succeeds on an open directory and raises OSError on a bad descriptor."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
    try:
        syncfs(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
    else:
        raise AssertionError("syncfs of a closed descriptor did not fail")


def test_independent_filesystems_freeze_at_the_same_time(tmp_path: Path) -> None:
    """With ``together``, every FIFREEZE is in flight at once and so is every FITHAW (barriers only concurrent
    calls can pass prove it), the clock starts before them, and the report keeps reverse plan order."""
    plan = mounts(tmp_path, ["a", "b", "c"])
    freezing = threading.Barrier(len(plan), timeout=10)
    thawing = threading.Barrier(len(plan), timeout=10)
    thawed: list[int] = []

    def ioctl(fd: int, op: int, arg: int) -> object:
        if op == FIFREEZE:
            freezing.wait()  # BrokenBarrierError (the test fails) unless all three are inside FIFREEZE together
        else:
            thawing.wait()  # likewise for FITHAW: the thaw is simultaneous too
            thawed.append(fd)
        return 0

    f = FsFreezer(ioctl, sync=lambda fd: None, together=all_at_once)
    frozen, skipped = f.freeze(plan)
    held = [fs.fd for fs in f.frozen]
    assert frozen == [m.mount_point for m in plan] and not skipped and f.first_freeze_at is not None
    out, errors = f.thaw()
    assert [m for m, _ in out] == [m.mount_point for m in reversed(plan)] and not errors
    assert sorted(thawed) == sorted(held) and f.last_thaw_at is not None
    assert all(not th.is_alive() for th in threading.enumerate() if th.name.startswith("fifreeze-"))


def test_together_one_failure_thaws_the_others(tmp_path: Path) -> None:
    """An EIO on one filesystem of a simultaneous freeze thaws every other one and raises; an unsupported one is
    only skipped."""
    plan = mounts(tmp_path, ["a", "b", "c", "d"])
    frozen_now: set[str] = set()

    def ioctl(fd: int, op: int, arg: int) -> object:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if op == FIFREEZE:
            if name == "b":
                raise OSError(errno.EOPNOTSUPP, "not supported (test)")
            if name == "c":
                raise OSError(errno.EIO, "forced I/O error (test)")
            frozen_now.add(name)
        elif op == FITHAW:
            frozen_now.discard(name)
        return 0

    f = FsFreezer(ioctl, sync=lambda fd: None, together=all_at_once)
    with pytest.raises(FreezeFailed, match="forced I/O error") as err:
        f.freeze(plan)
    assert "thawed again" in str(err.value)
    assert frozen_now == set() and f.frozen == []

    plan2 = [m for m in plan if Path(m.mount_point).name != "c"]
    frozen, skipped = FsFreezer(ioctl, sync=lambda fd: None, together=all_at_once).freeze(plan2)
    assert [Path(m).name for m in frozen] == ["a", "d"] and [Path(m).name for m, _ in skipped] == ["b"]


def test_only_hardware_backed_devices_count_as_independent(tmp_path: Path) -> None:
    """A disk (or partition) under a PCI device is independent; loop/device-mapper (virtual), a device sysfs does
    not know, or a filesystem without a block device (major 0) is not."""
    sysfs = tmp_path / "sys"
    (sysfs / "devices/pci0000:00/0000:00:04.0/virtio2/block/vdb").mkdir(parents=True)
    (sysfs / "devices/pci0000:00/0000:00:03.0/virtio1/block/vda/vda1").mkdir(parents=True)
    (sysfs / "devices/virtual/block/loop0").mkdir(parents=True)
    links = sysfs / "dev/block"
    links.mkdir(parents=True)
    (links / "254:16").symlink_to(sysfs / "devices/pci0000:00/0000:00:04.0/virtio2/block/vdb")
    (links / "254:1").symlink_to(sysfs / "devices/pci0000:00/0000:00:03.0/virtio1/block/vda/vda1")
    (links / "7:0").symlink_to(sysfs / "devices/virtual/block/loop0")

    def m(dev: tuple[int, int]) -> Mount:
        return Mount(1, 1, dev, f"/m{dev[1]}", ("rw",), "ext4", "x", ("rw",))

    assert on_hardware_devices([m((254, 16)), m((254, 1))], links)
    assert not on_hardware_devices([m((254, 16)), m((7, 0))], links)
    assert not on_hardware_devices([m((254, 16)), m((254, 99))], links)
    assert not on_hardware_devices([m((0, 42))], links)


@pytest.mark.root
def test_loop_mounts_are_frozen_one_by_one(loopfs: list[LoopFs]) -> None:
    """Real loop devices (whose backing files live on another filesystem) are never frozen together."""
    mine = {str(f.mount) for f in loopfs}
    plan = [m for m in freeze_plan(read_mounts())[0] if m.mount_point in mine]
    assert len(plan) == len(loopfs)
    assert not on_hardware_devices(plan)


def test_rcu_grace_periods_are_expedited_only_while_the_filesystems_freeze(tmp_path: Path) -> None:
    """The rcu_expedited switch (a stand-in file) reads 1 inside every FIFREEZE, is back to 0 when freeze()
    returns, and is not touched by the thaw."""
    switch = tmp_path / "rcu_expedited"
    switch.write_text("0\n")
    seen: list[tuple[int, str]] = []

    def ioctl(fd: int, op: int, arg: int) -> object:
        seen.append((op, switch.read_text().strip()))
        return 0

    f = FsFreezer(ioctl, sync=lambda fd: None, together=all_at_once, rcu_switch=switch)
    frozen, _ = f.freeze(mounts(tmp_path, ["a", "b"]))
    assert len(frozen) == 2
    assert switch.read_text().strip() == "0"
    f.thaw()
    assert [s for op, s in seen if op == FIFREEZE] == ["1", "1"]
    assert [s for op, s in seen if op == FITHAW] == ["0", "0"]


def test_rcu_switch_restored_after_a_failed_freeze_and_left_alone_when_already_on(tmp_path: Path) -> None:
    """A FIFREEZE error still puts the old value back; a switch that was already 1 stays 1; a missing switch
    (no sysfs file, an old kernel) does not stop the freeze."""
    switch = tmp_path / "rcu_expedited"
    switch.write_text("0\n")

    def failing(fd: int, op: int, arg: int) -> object:
        if op == FIFREEZE:
            raise OSError(errno.EIO, "forced (test)")
        return 0

    with pytest.raises(FreezeFailed):
        FsFreezer(failing, sync=lambda fd: None, together=one_by_one, rcu_switch=switch).freeze(
            mounts(tmp_path, ["a"]))
    assert switch.read_text().strip() == "0"

    switch.write_text("1\n")
    f = FsFreezer(lambda fd, op, arg: 0, sync=lambda fd: None, together=one_by_one, rcu_switch=switch)
    f.freeze(mounts(tmp_path, ["b"]))
    f.thaw()
    assert switch.read_text().strip() == "1"

    f = FsFreezer(lambda fd, op, arg: 0, sync=lambda fd: None, together=one_by_one,
                  rcu_switch=tmp_path / "no-such-switch")
    frozen, _ = f.freeze(mounts(tmp_path, ["c"]))
    f.thaw()
    assert frozen == [str(tmp_path / "c")]
