"""One State per command or job (controller/state.py): everything it opened is closed when it ends.

File descriptors to state.db (the database, its -wal and -shm) are counted in /proc/self/fd: a connection left
open shows up there whatever the garbage collector does later.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import libvirt
import pytest

from controller.errors import VmBackupError
from controller.registration.register import Registrar
from controller.restore.bootcheck import BootChecker
from controller.restore.restore import Restorer
from controller.scheduling.workers import Task, run_boot_check
from controller.settings import Settings
from controller.state import open_state
from controller.vault import RecoveryPoint, Vault
from tests.restore import restore_synth as synth

ROUNDS = 4
MISSING_POINT = "20261125T101500Z-0a0b0c"


def state_db_fds(settings: Settings) -> int:
    """How many of this process's open file descriptors point at state.db (or its -wal / -shm)."""
    prefix = str(settings.db_path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, closed meanwhile
        n += target.startswith(prefix)
    return n


def test_open_state_closes_the_db_and_libvirt(private_settings: Settings) -> None:
    with open_state(private_settings) as st:
        assert st.db is st.db and state_db_fds(private_settings) >= 1  # one connection, opened on first use
        lv = st.libvirt("test:///default")  # libvirt's in-process test driver
        assert st.libvirt("test:///default") is lv and lv.isAlive()
    assert state_db_fds(private_settings) == 0
    with pytest.raises(libvirt.libvirtError):
        lv.isAlive()  # closed with the state
    with pytest.raises(RuntimeError):
        st.db  # noqa: B018  (a closed state does not reopen)


def test_scheduled_boot_checks_leave_no_connection_open(private_settings: Settings) -> None:
    """The scheduler's boot-check path (workers.run_boot_check) closes its State whether the check passes or not."""
    task = Task("boot-check", key=str(uuid.uuid4()), point_id=MISSING_POINT)
    errors = []
    for _ in range(ROUNDS):
        with pytest.raises(VmBackupError) as err:  # POINT_NOT_FOUND: after the State was opened
            run_boot_check(private_settings, task)
        errors.append(err)  # keep every traceback (and the objects its frames hold) alive
        assert state_db_fds(private_settings) == 0
    assert {e.value.code for e in errors} == {"POINT_NOT_FOUND"}


def _point(settings: Settings, home: Path) -> RecoveryPoint:
    """A real point of a synthetic (undefined) VM: restore_disks needs no libvirt."""
    d = home / "src"
    d.mkdir()
    disk = d / "vda.qcow2"
    synth.make_disk(disk, "fd-marker")
    xml = synth.domain_xml("fd", disk, d / "console.log", synth.free_port(), synth.free_port())
    return synth.make_point(Vault(settings.vault), synth.SynthVm("fd", str(uuid.uuid4()), disk, xml))


def test_restorers_in_a_loop_keep_state_db_fds_flat(private_settings: Settings, private_home: Path) -> None:
    point = _point(private_settings, private_home)
    kept = []
    for i in range(ROUNDS):  # a long-lived caller that keeps its Restorers around
        with Restorer(private_settings) as r:
            res = r.restore_disks(point.point_id, private_home / f"out{i}")
            assert "fd-marker" in synth.read_marker(Path(res.disks["vda"]))
        kept.append(r)
        assert state_db_fds(private_settings) == 0
    with open_state(private_settings) as st:  # or one State shared by several: they borrow it
        assert st.db is not None
        one = state_db_fds(private_settings)
        assert one >= 1
        for i in range(ROUNDS):
            with Restorer(st) as r, BootChecker(st), Registrar(st):
                r.restore_disks(point.point_id, private_home / f"shared{i}")
            assert not st.closed and state_db_fds(private_settings) == one
    assert state_db_fds(private_settings) == 0
