"""Fixtures for the agent tests: real loop-mounted ext4/xfs filesystems, always thawed and unmounted.

SAFETY: these tests run real FIFREEZE on this host. They only ever freeze the loop mounts created here:
every quiescer is built with ``allowed_mount_points`` = those mounts AND every freeze passes them
explicitly; :func:`tests.agent.helpers.guard` refuses anything else (/, host filesystems) before a freeze can happen.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import LoopFs, make_loopfs, unmount


def _require_root() -> None:
    """These tests need root, loop devices and mkfs.{ext4,xfs}; say why when they cannot run."""
    if os.geteuid() != 0:
        pytest.skip("needs root: real FIFREEZE on loop mounts (CI runs as root)")
    for tool in ("mkfs.ext4", "mkfs.xfs", "mount", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} on PATH")


@pytest.fixture
def loopfs(tmp_path: Path) -> Iterator[list[LoopFs]]:
    """An ext4 and an xfs loop mount, thawed and unmounted at teardown whatever happens."""
    _require_root()
    created: list[LoopFs] = []
    try:
        created.append(make_loopfs(tmp_path, "ext4", "ext4"))
        created.append(make_loopfs(tmp_path, "xfs", "xfs"))
        yield created
    finally:
        for fs in reversed(created):
            unmount(fs)


@pytest.fixture
def loop_factory(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Make extra loop mounts (nested, read-only, ...); all cleaned up at teardown."""
    _require_root()
    created: list[LoopFs] = []

    def make(name: str, fs_type: str = "ext4", *, base: Path | None = None,
             read_only: bool = False) -> LoopFs:
        fs = make_loopfs(tmp_path, name, fs_type, read_only=read_only, mount_base=base)
        created.append(fs)
        return fs

    try:
        yield make
    finally:
        for fs in reversed(created):
            unmount(fs)
