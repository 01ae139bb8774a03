"""controller/locks.py: exclusive and shared flocks, the non-blocking try, release on exit, directory locks.

flock conflicts between open file descriptions, so two ``flocked`` in one process behave like two processes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from controller.locks import acquire, flocked, open_fd


def test_exclusive_excludes_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with flocked(lock) as held:
        assert held
        with flocked(lock, blocking=False) as other:
            assert not other
        with flocked(lock, shared=True, blocking=False) as reader:
            assert not reader
    with flocked(lock, blocking=False) as again:  # released on exit
        assert again


def test_shared_admits_shared_not_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "s.lock"
    with flocked(lock, shared=True) as a, flocked(lock, shared=True, blocking=False) as b:
        assert a and b
        with flocked(lock, blocking=False) as writer:
            assert not writer


def test_directory_lock_and_file_mode(tmp_path: Path) -> None:
    d = tmp_path / "point"
    d.mkdir()
    fd = open_fd(d, directory=True)
    try:
        assert acquire(fd)
        with flocked(d, directory=True, blocking=False) as other:
            assert not other
    finally:
        os.close(fd)  # closing the descriptor drops the lock
    with flocked(d, directory=True, blocking=False) as held:
        assert held
    with flocked(tmp_path / "private.lock", mode=0o600):
        assert stat.S_IMODE((tmp_path / "private.lock").stat().st_mode) == 0o600
