"""The few qemu-img calls the vault needs: info, convert (flatten a backing chain), check, bitmap removal; and the
one place that builds the creation options of a new qcow2 in the vault (``image_options``)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.vault.exceptions import DiskCopyFailed

if TYPE_CHECKING:  # keys.py imports this module; sparse (the copy engine) is loaded only where bytes move
    from controller.vault.keys import VaultKey
    from controller.vault.sparse import Progress

QEMU_IMG = "qemu-img"
_LOCK_HINT = (
    "The image is open for writing (a running VM uses it as its active disk). Back it up through a snapshot "
    "so the file becomes a read-only backing image, or shut the VM off."
)
_PCT = re.compile(rb"\(([0-9.]+)/100%\)")
_PR_SET_PDEATHSIG = 1
#: qemu-img convert flags that store every cluster zstd-compressed where that shrinks it (QEMU writes a cluster
#: that does not shrink uncompressed); -W: out-of-order writes, so the coroutines compress in parallel
_COMPRESS_FLAGS = ("-c", "-W")
#: QEMU 7.2 times PBKDF2 with getrusage(RUSAGE_THREAD) before it writes a LUKS header and gives up with this when a
#: round measured 0 ms (about half the creates on this loaded 2-core host); the same command then works
PBKDF_FLAKE_MESSAGE = "Unable to get accurate CPU usage"
#: how often a command writing a LUKS header that hit PBKDF_FLAKE_MESSAGE is tried in all
CREATE_TRIES = 8


def die_with_parent() -> None:
    """In the child: get SIGKILL when the controller dies, so no orphaned convert keeps a disk image locked."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ImageInfo:
    """The fields of `qemu-img info` the vault uses."""

    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    backing_format: str | None = None  # the format the image records for its backing file, if any
    backing_name: str | None = None  # the backing file exactly as written in the header (may be relative)
    bitmaps: list[str] = field(default_factory=list)  # names of the persistent dirty bitmaps (qcow2)
    compat: str | None = None  # qcow2 version: "1.1" (v3) can hold dirty bitmaps, "0.10" (v2) cannot
    compression_type: str | None = None  # qcow2: how its compressed clusters are (or would be) compressed
    encrypted: bool = False  # LUKS-encrypted qcow2 (reading its data needs the key; info does not)


def _fail(what: str, path: Path, err: str) -> DiskCopyFailed:
    """A DISK_COPY_FAILED carrying qemu-img's own message (and a lock hint when relevant)."""
    remediation = _LOCK_HINT if "lock" in err.lower() else None
    return DiskCopyFailed(f"{what} {path}: {err.strip()}", remediation=remediation, details={"stderr": err})


def image_options(compression: str = "none", key: VaultKey | None = None) -> dict[str, str]:
    """The qcow2 creation options (``-o``) of a new image in the vault: compression "zstd" or "none"; LUKS
    encryption with a vault key (the caller also passes ``--object key.secret_object()``).

    The one place full copies (``convert``) and incrementals (qsd's target) get them from.
    """
    opts = {"compression_type": "zstd"} if compression == "zstd" else {}
    return {**opts, **(key.create_options() if key is not None else {})}


def stored_compression(compression: str, key: VaultKey | None) -> str:
    """The compression a new vault image gets: "none" when it is encrypted. QEMU 7.2 writes a qcow2's compressed
    clusters WITHOUT encrypting them (a zstd frame of the guest's data lies in the clear in a LUKS qcow2, measured;
    qemu-img convert refuses -c with encryption for that reason, qemu-io and the backup job do not)."""
    return "none" if key is not None else compression


def compression_of(inf: ImageInfo) -> str:
    """What a manifest records for a stored image: "zstd" when its qcow2 header says compression_type=zstd (its
    compressed clusters, if any, need a QEMU with zstd), else "none"."""
    return "zstd" if inf.compression_type == "zstd" else "none"


def option_args(opts: dict[str, str]) -> list[str]:
    """``-o k=v,...`` for qemu-img create/convert (nothing when there are no options)."""
    return ["-o", ",".join(f"{k}={v}" for k, v in opts.items())] if opts else []


def _opts(force_share: bool, fmt: str | None, flag: str = "-f") -> list[str]:
    """-U and an explicit format (never let qemu-img probe a format a guest could forge)."""
    return [*(["-U"] if force_share else []), *([flag, fmt] if fmt else [])]


def info(path: Path, force_share: bool = False, fmt: str | None = None) -> ImageInfo:
    """`qemu-img info --output=json` of one image (without -U this also proves nobody writes it)."""
    cmd = [QEMU_IMG, "info", "--output=json", *_opts(force_share, fmt), str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise _fail("qemu-img info failed for", path, p.stderr)
    d: dict[str, Any] = json.loads(p.stdout)
    return ImageInfo(
        format=str(d["format"]),
        virtual_size=int(d["virtual-size"]),
        actual_size=int(d.get("actual-size", 0)),
        backing_file=d.get("full-backing-filename") or d.get("backing-filename"),
        backing_format=d.get("backing-filename-format"),
        backing_name=d.get("backing-filename"),
        bitmaps=[str(b["name"]) for b in d.get("format-specific", {}).get("data", {}).get("bitmaps", [])],
        compat=d.get("format-specific", {}).get("data", {}).get("compat"),
        compression_type=d.get("format-specific", {}).get("data", {}).get("compression-type"),
        encrypted=bool(d.get("encrypted", False)),
    )


def chain_encrypted(path: Path) -> bool:
    """True when a file of the qcow2's backing chain (itself included) is LUKS-encrypted (read from the headers:
    no key needed)."""
    cmd = [QEMU_IMG, "info", "--output=json", "--backing-chain", "-U", "-f", "qcow2", str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise _fail("qemu-img info failed for", path, p.stderr)
    return any(bool(d.get("encrypted")) for d in json.loads(p.stdout))


def remove_bitmaps(path: Path, prefix: str) -> list[str]:
    """Remove the qcow2's persistent bitmaps whose name starts with prefix; returns the names removed."""
    names = [b for b in info(path, fmt="qcow2").bitmaps if b.startswith(prefix)]
    for name in names:
        cmd = [QEMU_IMG, "bitmap", "--remove", "-f", "qcow2", str(path), name]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise _fail(f"qemu-img bitmap --remove {name} failed for", path, p.stderr)
    return names


def convert(
    src: Path,
    dst: Path,
    progress: Progress | None = None,
    force_share: bool = False,
    fmt: str | None = None,
    compression: str = "none",
    source: list[str] | None = None,
    key: VaultKey | None = None,
) -> None:
    """Flatten src and its whole backing chain into one self-contained qcow2 at dst, then fsync dst.

    compression "zstd": dst's clusters are stored zstd-compressed where that shrinks them (qcow2
    compression_type=zstd); "none": plain clusters. source: the arguments that open src instead of
    ``-f FMT SRC`` (an encrypted chain: keys.image_source). key: dst is LUKS-encrypted with this vault key.
    """
    total = info(src, force_share, fmt).virtual_size
    compression = stored_compression(compression, key)
    objects = ["--object", key.secret_object()] if key is not None and key.secret_object() not in (source or []) else []
    flags = [*(_COMPRESS_FLAGS if compression == "zstd" else ()), *option_args(image_options(compression, key))]
    src_args = [*(["-U"] if force_share else []), *source] if source else [*_opts(force_share, fmt), str(src)]
    cmd = [QEMU_IMG, "convert", "-p", "-O", "qcow2", *objects, *flags, *src_args, str(dst)]
    for _ in range(CREATE_TRIES - 1 if key is not None else 0):  # a new LUKS header: see PBKDF_FLAKE_MESSAGE
        rc, err = _run_convert(cmd, total, progress)
        if rc == 0 or PBKDF_FLAKE_MESSAGE not in err:
            break
    else:
        rc, err = _run_convert(cmd, total, progress)
    if rc != 0:
        raise _fail("qemu-img convert failed for", src, err)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if progress:
        progress(total, total)


def _run_convert(cmd: list[str], total: int, progress: Progress | None) -> tuple[int, str]:
    """Run one qemu-img convert -p, reporting its progress; (exit code, stderr)."""
    # a controller killed mid-copy must not leave this convert reading the base image: its lock would block the
    # block-commit that crash recovery does next
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        pending = b""
        while chunk := os.read(proc.stdout.fileno(), 4096):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for ln in lines:
                m = _PCT.search(ln)
                if m and progress:
                    progress(min(total, int(float(m.group(1)) * total / 100)), total)
        err = proc.stderr.read().decode(errors="replace")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return rc, err


def run_create(cmd: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a qemu-img command that writes a new LUKS header, again while it fails with PBKDF_FLAKE_MESSAGE."""
    for _ in range(CREATE_TRIES - 1):
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
        if p.returncode == 0 or PBKDF_FLAKE_MESSAGE not in p.stderr:
            return p
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)


def to_raw(src: Path, dst: Path) -> None:
    """Write the standalone qcow2 src as a sparse raw image at dst, fsynced: a raw disk restored from a point that
    stored it as a (compressed) qcow2."""
    cmd = [QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", str(src), str(dst)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, preexec_fn=die_with_parent)
    if p.returncode != 0:
        raise _fail("qemu-img convert to raw failed for", src, p.stderr)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class CheckResult:
    """`qemu-img check` outcome: ok unless it found corruptions or could not complete."""

    ok: bool
    returncode: int
    summary: str


def check(path: Path, fmt: str, key: VaultKey | None = None, own_layer: bool = False) -> CheckResult:
    """Run `qemu-img check` (qcow2 only; raw has no metadata to check). rc 3 (leaks only) counts as ok.

    key: the vault key a LUKS-encrypted qcow2 opens with. With a key, or own_layer, only this file is opened
    (its backing file is not: it may need another key, and the chain is checked file by file).
    """
    if fmt != "qcow2":
        return CheckResult(ok=True, returncode=0, summary="raw: nothing to check")
    source = ["-f", fmt, str(path)]
    if key is not None or own_layer:
        spec: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": str(path)}, "backing": None}
        if key is not None:
            spec["encrypt"] = {"key-secret": key.secret_id}
        source = [*(["--object", key.secret_object()] if key else []), "json:" + json.dumps(spec)]
    p = subprocess.run([QEMU_IMG, "check", "--output=json", *source], capture_output=True, text=True, check=False)
    summary = p.stderr.strip()
    try:
        d = json.loads(p.stdout)
        summary = f"corruptions={d.get('corruptions', 0)} leaks={d.get('leaks', 0)}" + (
            f" {summary}" if summary else ""
        )
    except ValueError:
        summary = summary or p.stdout.strip()
    return CheckResult(ok=p.returncode in (0, 3), returncode=p.returncode, summary=summary)
