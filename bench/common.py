"""Helpers every benchmark shares: statistics, timing, commands, page-cache control, sizes on disk."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.exceptions import BenchError

MiB = 1 << 20
GiB = 1 << 30


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Raw samples with their median, p95 (nearest rank), min and max; empty input gives None fields."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        return {"samples": [], "n": 0, "median": None, "p95": None, "min": None, "max": None}
    rank = max(1, math.ceil(0.95 * len(xs)))
    return {
        "samples": [round(x, 4) for x in samples],
        "n": len(xs),
        "median": round(statistics.median(xs), 4),
        "p95": round(xs[rank - 1], 4),
        "min": round(xs[0], 4),
        "max": round(xs[-1], 4),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def run(cmd: Sequence[str], timeout: float = 3600.0, env: dict[str, str] | None = None) -> str:
    """Run a command; return stdout, or raise BenchError with its stderr tail."""
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{cmd[0]} failed: {e}") from e
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(cmd[:3])} exited {p.returncode}: {' | '.join(tail)}")
    return p.stdout


def timed(cmd: Sequence[str], timeout: float = 3600.0, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command; return (wall seconds, stdout)."""
    t0 = time.monotonic()
    out = run(cmd, timeout, env)
    return time.monotonic() - t0, out


def drop_caches() -> None:
    """sync, then drop the page cache, dentries and inodes, so every contender starts cold."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def allocated(path: Path) -> int:
    """Bytes a file or a directory tree really occupies on disk."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def apparent(path: Path) -> int:
    """Apparent (logical) size of a file or the sum over a directory tree."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mb_per_s(nbytes: int, seconds: float) -> float | None:
    """Throughput in MB/s (10^6), None for a zero time."""
    return round(nbytes / seconds / 1e6, 1) if seconds > 0 else None
