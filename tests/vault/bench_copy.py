"""Benchmark (not a test): copy a qcow2 into a vault dir by each method and print MB/s.

usage: .venv/bin/python tests/vault/bench_copy.py [DATA_MIB] [WORKDIR]

Methods: our sparse copy (copy + SHA-256 in one pass), qemu-img convert (+ a SHA-256 pass, as the vault does
for chains), qemu-img convert with O_DIRECT both sides, cp --sparse=always (no checksum) and cp + sha256sum.
MB/s is the source file's logical size over wall time; page cache is warm after the first run of each.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from controller.vault.sparse import stream


def sh(*cmd: str) -> None:
    """Run a command, raise on failure."""
    subprocess.run(cmd, check=True, capture_output=True)


def make_image(path: Path, data_mib: int) -> None:
    """A qcow2 of 4x virtual size: data_mib of data in 64 MiB stripes (varied patterns), holes between."""
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{data_mib * 4}M")
    cmds: list[str] = []
    for i in range(data_mib // 64):
        cmds += ["-c", f"write -P {(i * 37 + 1) % 255:#x} {i * 256}M 64M"]
    sh("qemu-io", "-f", "qcow2", *cmds, str(path))


def timed(label: str, size: int, fn: Callable[[], None], runs: int = 2) -> None:
    """Run fn a few times and print the best MB/s."""
    best = float("inf")
    for _ in range(runs):
        t = time.monotonic()
        fn()
        best = min(best, time.monotonic() - t)
    print(f"{label:48s} {best:7.2f} s  {size / best / 1e6:7.0f} MB/s")


def main() -> None:
    """Build the image and time each method."""
    data_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/var/tmp")
    with tempfile.TemporaryDirectory(dir=work, prefix="vmbackup-bench-") as d:
        src, dst = Path(d) / "src.qcow2", Path(d) / "dst.qcow2"
        make_image(src, data_mib)
        size = src.stat().st_size
        print(f"source: {size / 2**20:.0f} MiB qcow2 file ({data_mib} MiB data)")

        def ours() -> None:
            stream(src, dst)

        def convert(*extra: str) -> Callable[[], None]:
            def run() -> None:
                dst.unlink(missing_ok=True)
                sh("qemu-img", "convert", *extra, "-O", "qcow2", str(src), str(dst))
                sh("sync", str(dst))
                stream(dst)

            return run

        def cp(with_sum: bool) -> Callable[[], None]:
            def run() -> None:
                dst.unlink(missing_ok=True)
                sh("cp", "--sparse=always", str(src), str(dst))
                sh("sync", str(dst))
                if with_sum:
                    sh("sha256sum", str(dst))

            return run

        timed("vault sparse copy + sha256 (one pass, fsync)", size, ours)
        timed("qemu-img convert -O qcow2 + sync + sha256", size, convert())
        timed("qemu-img convert -T none -t none + sync + sha256", size, convert("-T", "none", "-t", "none"))
        timed("cp --sparse=always + sync (no checksum)", size, cp(False))
        timed("cp --sparse=always + sync + sha256sum", size, cp(True))


if __name__ == "__main__":
    main()
