"""Application hooks: executables in the hooks dir, run with `freeze` before the freeze and `thaw` after.

Like qemu-guest-agent's fsfreeze-hook.d: hooks run in name order for `freeze` and reverse order for `thaw`.
Each runs in its own process group with a timeout; a hook that overruns is killed with its whole group.
Output is captured in memory (never written to a file: the filesystems may be frozen) and truncated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from agent.quiesce.base import HookRun

MAX_OUTPUT = 4096
_SAFE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def discover_hooks(hooks_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Runnable hooks in name order, and ignored files with the reason."""
    if not hooks_dir.is_dir():
        return [], []
    hooks: list[Path] = []
    ignored: list[tuple[str, str]] = []
    for path in sorted(hooks_dir.iterdir()):
        if path.name.startswith(".") or path.name.endswith(("~", ".dpkg-old", ".dpkg-new", ".disabled")):
            continue
        reason = _unsafe_reason(path)
        if reason:
            ignored.append((path.name, reason))
        else:
            hooks.append(path)
    return hooks, ignored


def _unsafe_reason(path: Path) -> str:
    """Why a file in the hooks dir is not run, or '' when it is."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not st.st_mode & stat.S_IXUSR:
        return "not executable"
    if st.st_uid != os.geteuid():
        return "not owned by the agent's user (root)"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    return ""


def run_hook(path: Path, action: str, timeout_s: float) -> HookRun:
    """Run one hook with ``action``; kill its process group if it exceeds ``timeout_s``."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [str(path), action], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd="/", env=_SAFE_ENV, start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        return HookRun(path.name, action, 127, _ms(t0), output=f"cannot start: {exc.strerror}")
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        try:
            out, _ = proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe
            proc.kill()
            out = b""
            proc.wait(timeout=2.0)
    text = out[-MAX_OUTPUT:].decode("utf-8", errors="replace") if out else ""
    return HookRun(path.name, action, proc.returncode, _ms(t0), timed_out=timed_out, output=text)


def run_all(hooks: list[Path], action: str, timeout_s: float) -> list[HookRun]:
    """Run every hook with ``action``, in order; a failure does not stop the others."""
    return [run_hook(h, action, timeout_s) for h in hooks]


def _kill_group(pgid: int) -> None:
    """SIGKILL a hook's whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _ms(t0: float) -> int:
    """Milliseconds since ``t0``."""
    return int((time.monotonic() - t0) * 1000)
