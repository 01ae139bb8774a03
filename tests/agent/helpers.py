"""Helpers of the agent tests: loop-mounted filesystems, the freeze safety guard, thaw/frozen probes, writers.

SAFETY: these tests run real FIFREEZE on this host. They only ever freeze the loop mounts made here:
:func:`guard` refuses anything else (/, host filesystems) before a freeze can happen.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.quiesce.fsfreeze import FITHAW

MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}
SIZES = {"ext4": 64 << 20, "xfs": 320 << 20}  # mkfs.xfs needs >= 300 MiB


@dataclass
class LoopFs:
    """A sparse image file loop-mounted at ``mount``."""

    image: Path
    mount: Path
    fs_type: str


def guard(paths: list[str] | list[Path], allowed: list[LoopFs]) -> list[str]:
    """Refuse to go on unless every path is one of this test's own loop mounts."""
    ok = {str(fs.mount) for fs in allowed}
    out = [str(p) for p in paths]
    for p in out:
        if p == "/" or p not in ok or not os.path.ismount(p):
            raise AssertionError(f"SAFETY GUARD: refusing to freeze {p!r}: not this test's loop mount")
    return out


def thaw_quietly(path: Path) -> None:
    """FITHAW ``path`` if it is frozen (teardown safety net)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        finally:
            os.close(fd)


def is_frozen(path: Path) -> bool:
    """True when FITHAW succeeds (it was frozen; it is thawed now: callers use it at the end only)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
        return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.close(fd)


def make_loopfs(base: Path, name: str, fs_type: str, *, read_only: bool = False,
                mount_base: Path | None = None) -> LoopFs:
    """Create and mkfs a sparse image under ``base``; loop-mount it under ``mount_base`` or ``base``."""
    image, mount = base / f"{name}.img", (mount_base or base) / name
    with open(image, "wb") as f:
        f.truncate(SIZES[fs_type])
    subprocess.run([*MKFS[fs_type], str(image)], check=True, capture_output=True)
    mount.mkdir(parents=True, exist_ok=True)
    opts = "loop,ro" if read_only else "loop"
    cmd = ["mount", "-o", opts, "-t", fs_type, str(image), str(mount)]
    subprocess.run(cmd, check=True, capture_output=True)
    return LoopFs(image, mount, fs_type)


def unmount(fs: LoopFs) -> None:
    """Thaw (if needed) and unmount."""
    thaw_quietly(fs.mount)
    subprocess.run(["umount", str(fs.mount)], check=False, capture_output=True)


def writer(path: Path) -> subprocess.Popen[bytes]:
    """Start a subprocess that writes and fsyncs a file under ``path`` (blocks while it is frozen)."""
    code = (
        "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT, 0o644); "
        "os.write(fd, b'x'*4096); os.fsync(fd); os.close(fd)"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(path / "probe.bin")])


def blocks(proc: subprocess.Popen[bytes], seconds: float = 1.0) -> bool:
    """True when ``proc`` is still running after ``seconds``."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return True
