"""The copy pipeline: checksum equal to the coreutils recipe (holes, unaligned tails, block devices), holes kept,
progress monotonic, and a cancelled or failed copy (in the reader, the writer, the progress callback) leaves nothing."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.datapath import pipeline
from controller.datapath.buffers import Buffer
from controller.datapath.exceptions import SourceShrank
from controller.vault import digest

MiB = 1 << 20
RECIPE = "split -b 4M --filter='sha256sum | cut -c1-64 | tr a-f A-F | basenc --base16 -d' \"$F\" | sha256sum"


def recipe(path: Path | str) -> str:
    """The stored-disk checksum by the coreutils one-liner of digest.py (reads every byte, holes included)."""
    out = subprocess.run(["bash", "-c", RECIPE], env={**os.environ, "F": str(path)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return "sha256-4m:" + out.stdout.split()[0]


def make(path: Path, parts: list[tuple[int, bytes]], size: int) -> Path:
    """A file of `size` bytes with `parts` written at their offsets; the rest stays holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, blob in parts:
            f.seek(off)
            f.write(blob)
    return path


def copy(src: Path, dst: Path | None, algo: str = "sha256-4m", **kw: object) -> tuple[str, pipeline.CopyResult]:
    """Run the pipeline with a fresh checksum; (digest, result)."""
    h = digest.new(algo)
    res = pipeline.copy(src, dst, h, **kw)  # type: ignore[arg-type]
    return h.hexdigest(), res


@pytest.fixture
def holey(tmp_path: Path) -> Path:
    """41 MiB + 123 B: data at unaligned offsets, a zero-filled data chunk, holes, a short unaligned tail."""
    size = 41 * MiB + 123
    parts = [(5 * MiB + 7, os.urandom(3000)), (12 * MiB, bytes(4 * MiB)), (20 * MiB, os.urandom(5 * MiB + 1)),
             (size - 10, b"tail bytes")]
    return make(tmp_path / "holey", parts, size)


@pytest.mark.parametrize("direct", [True, False])
def test_copy_equals_recipe_and_keeps_holes(holey: Path, tmp_path: Path, direct: bool) -> None:
    """The copy's checksum is the recipe's; the copy is byte-identical, as sparse as the source, zero data dropped."""
    dst = tmp_path / "copy"
    value, res = copy(holey, dst, direct=direct)
    assert value == recipe(holey) == recipe(dst)
    assert dst.read_bytes() == holey.read_bytes()
    assert res.logical_size == holey.stat().st_size == dst.stat().st_size
    assert res.data_bytes < res.logical_size  # wholly-hole chunks were not read
    assert dst.stat().st_blocks * 512 < holey.stat().st_blocks * 512  # the 4 MiB of written zeros became a hole
    assert res.stored_bytes == dst.stat().st_blocks * 512
    assert not res.direct_read  # a file is read through readahead (dropped behind); a block device with O_DIRECT


def test_hash_only_and_serial_algorithm(holey: Path) -> None:
    """Without a destination only the checksum is computed; the serial whole-file "sha256" equals sha256sum."""
    value, res = copy(holey, None)
    assert value == recipe(holey) and res.stored_bytes == 0
    plain, _ = copy(holey, None, algo="sha256")
    assert plain == "sha256:" + hashlib.sha256(holey.read_bytes()).hexdigest()


def test_empty_and_all_hole_files(tmp_path: Path) -> None:
    """An empty file and a file of holes only: the reference checksum, nothing read, nothing stored."""
    for size in (0, 9 * MiB + 1):
        src = make(tmp_path / f"h{size}", [], size)
        value, res = copy(src, tmp_path / f"c{size}")
        assert value == digest.of_bytes(bytes(size)) == recipe(src)
        assert res.data_bytes == 0 and (tmp_path / f"c{size}").stat().st_size == size


def test_progress_is_monotonic_and_complete(tmp_path: Path) -> None:
    """(0, size) first, (size, size) last, never backwards, through holes and data alike."""
    src = make(tmp_path / "s", [(3 * MiB, os.urandom(MiB)), (600 * MiB, os.urandom(9 * MiB))], 700 * MiB + 5)
    seen: list[tuple[int, int]] = []
    copy(src, tmp_path / "d", progress=lambda d, t: seen.append((d, t)))
    size = src.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert len(seen) > 5  # data chunks and 256 MiB hole steps are reported


@pytest.fixture
def loop_dev(tmp_path: Path) -> Iterator[str]:
    """A 24 MiB + 512 B loop device: data in chunk 0 and 3, an unaligned last sector, zeros elsewhere."""
    img = make(tmp_path / "dev.img", [(MiB, os.urandom(MiB)), (13 * MiB + 5, b"vmbackup"),
                                      (24 * MiB, os.urandom(512))], 24 * MiB + 512)
    out = subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True, text=True)
    dev = out.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_block_device_read_whole_zero_chunks_stay_holes(loop_dev: str, tmp_path: Path) -> None:
    """A device has no SEEK_DATA: all of it is read (O_DIRECT), its zero chunks become holes in the copy."""
    dst = tmp_path / "copy"
    value, res = copy(Path(loop_dev), dst)
    assert res.logical_size == 24 * MiB + 512 == res.data_bytes and res.direct_read
    assert value == recipe(loop_dev) == recipe(dst)
    assert dst.stat().st_blocks * 512 <= 2 * MiB + 64 * 1024 * 2
    with open(loop_dev, "rb") as f:
        assert dst.read_bytes() == f.read()


def _threads() -> set[str]:
    """Names of the pipeline's live worker threads."""
    return {t.name for t in threading.enumerate() if t.name.startswith("vmb-")}


def test_cancel_from_progress_leaves_nothing(tmp_path: Path) -> None:
    """The progress callback raising mid-copy cancels it: the error propagates, no file, no worker left."""
    src = make(tmp_path / "s", [(0, os.urandom(40 * MiB))], 40 * MiB)
    dst = tmp_path / "d"
    calls: list[int] = []

    def cancel(done: int, total: int) -> None:
        calls.append(done)
        if done >= 12 * MiB:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        copy(src, dst, progress=cancel)
    assert not dst.exists() and 12 * MiB <= calls[-1] < 40 * MiB
    assert _threads() == set()


def test_read_error_mid_copy_propagates_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error on the 4th read reaches the caller as that OSError; the half-written copy is removed."""
    src = make(tmp_path / "s", [(0, os.urandom(32 * MiB))], 32 * MiB)
    dst = tmp_path / "d"
    real = os.preadv
    count = itertools.count()

    def flaky(fd: int, bufs: list[memoryview], off: int) -> int:
        if next(count) == 3:
            raise OSError(errno.EIO, "injected read error")
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", flaky)
    with pytest.raises(OSError) as ei:
        copy(src, dst)
    assert ei.value.errno == errno.EIO and not dst.exists() and _threads() == set()


def test_write_error_in_the_writer_thread_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC raised in the writer thread surfaces in the caller's thread (the vault maps it to VAULT_FULL)."""
    src = make(tmp_path / "s", [(0, os.urandom(32 * MiB))], 32 * MiB)
    dst = tmp_path / "d"
    real = os.pwrite
    count = itertools.count()

    def full(fd: int, data: memoryview, off: int) -> int:
        if next(count) == 2:
            raise OSError(errno.ENOSPC, "injected: no space")
        return real(fd, data, off)

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError) as ei:
        copy(src, dst)
    assert ei.value.errno == errno.ENOSPC and not dst.exists() and _threads() == set()


def test_source_shorter_than_its_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read hitting the end early (the file shrank under the copy) is SOURCE_SHRANK, and nothing is left."""
    src = make(tmp_path / "s", [(0, os.urandom(16 * MiB))], 16 * MiB)
    dst = tmp_path / "d"
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, b, off: 0 if off >= 8 * MiB else real(fd, b, off))
    with pytest.raises(SourceShrank) as ei:
        copy(src, dst)
    assert ei.value.details["offset"] == 8 * MiB and not dst.exists()


def test_memory_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However large the file, at most BUFFERS chunk buffers exist during a copy; a small file maps few."""
    made: list[int] = []

    def counting(size: int) -> Buffer:
        made.append(size)
        return Buffer(size)

    monkeypatch.setattr("controller.datapath.pipeline.Buffer", counting)
    src = make(tmp_path / "s", [(0, os.urandom(64 * MiB))], 64 * MiB)
    value, _ = copy(src, tmp_path / "d")
    assert value == recipe(src) and made and set(made) == {pipeline.CHUNK} and len(made) <= pipeline.BUFFERS
    made.clear()
    small = make(tmp_path / "small", [(0, os.urandom(MiB)), (9 * MiB, os.urandom(MiB))], 10 * MiB)
    value, _ = copy(small, tmp_path / "d2")
    assert value == recipe(small) and 1 <= len(made) <= 2  # two data chunks: at most two buffers mapped


def _cached_bytes(path: Path) -> int:
    """Bytes of path resident in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[0])


def test_copy_leaves_neither_file_in_the_page_cache(tmp_path: Path) -> None:
    """The source is read through the page cache but dropped behind (readahead beyond the last chunk too), the
    destination is written with O_DIRECT: after the copy neither file occupies the cache."""
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)], capture_output=True, text=True)
    if fs.stdout.strip() == "tmpfs":
        pytest.skip("tmp_path is on tmpfs: its files live in the page cache, nothing can be dropped")
    src = make(tmp_path / "s", [(0, os.urandom(40 * MiB + 5)), (60 * MiB, os.urandom(3 * MiB))], 64 * MiB)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # start cold: what is cached afterwards is the copy's
    finally:
        os.close(fd)
    assert _cached_bytes(src) == 0
    dst = tmp_path / "d"
    value, _ = copy(src, dst)
    assert _cached_bytes(src) == 0 and _cached_bytes(dst) <= 64 * 1024  # the unaligned tail is written buffered
    assert value == recipe(dst)  # reading dst caches it: measured before


def test_o_direct_refused_on_write_falls_back_to_the_page_cache(
    holey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that opens O_DIRECT but refuses its writes (EINVAL): the copy goes on through the page cache."""
    real = os.pwrite
    refused: list[int] = []

    def picky(fd: int, data: memoryview, off: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(off)
            raise OSError(errno.EINVAL, "injected: no O_DIRECT here")
        return real(fd, data, off)

    monkeypatch.setattr(os, "pwrite", picky)
    dst = tmp_path / "copy"
    value, _ = copy(holey, dst)
    assert refused and value == recipe(holey) and dst.read_bytes() == holey.read_bytes()
