"""File names that are not valid UTF-8, read anyway.

A Linux filesystem's names are bytes; libguestfs' Python binding only takes and returns names as UTF-8 ``str``, so
``ls``/``find`` fail on a directory holding one such name, and ``lstat``/``download`` cannot even be asked about it.
Here names are listed as bytes (``ls0``/``find0`` write NUL-separated names to a local file) and carried as Python
``str`` with surrogate escapes (``os.fsdecode`` style): written to the host with ``os`` calls they become the very
same bytes again. An entry whose path is not UTF-8 is read from a ``tar-out`` of its nearest UTF-8 parent directory
(every UTF-8 sibling excluded, so the archive holds just the non-UTF-8 entries and what is below them); Python's
``tarfile`` reads the archive's headers (never ``extractall``: extract.py writes every entry with its own checks).
Shown to a person or in JSON, such names are escaped: ``caf\\xe9.txt`` (:func:`shown`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

#: tar member types -> the stat type bits an Entry carries (a hard link comes out as a regular file)
_TYPES = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.AREGTYPE: stat.S_IFREG,
    tarfile.CONTTYPE: stat.S_IFREG,
    tarfile.LNKTYPE: stat.S_IFREG,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}
_GLOB = re.compile(r"([*?\[\]\\])")
_COPY_CHUNK = 1 << 20


class Meta(NamedTuple):
    """One entry's metadata (the fields of appliance.Entry, in its order)."""

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str = ""


def decode(raw: bytes) -> str:
    """A name from the filesystem as str; bytes that are not UTF-8 become surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


def addressable(text: str) -> bool:
    """Whether libguestfs can be given this name or path (it is valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """A name for a person or JSON: bytes that are not UTF-8 as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def hex_name(text: str) -> str:
    """The name's exact bytes as hex (unambiguous, unlike the escaped form)."""
    return text.encode("utf-8", "surrogateescape").hex()


def split_raw(path: str) -> tuple[str, str] | None:
    """(the UTF-8 parent, the first non-UTF-8 component's path) of a path; None when the path is UTF-8."""
    parts = path.strip("/").split("/")
    for i, part in enumerate(parts):
        if not addressable(part):
            return "/" + "/".join(parts[:i]), "/" + "/".join(parts[: i + 1])
    return None


def list0(g: Any, directory: str, work: Path) -> list[str]:
    """The names in a (UTF-8) directory, whatever their bytes."""
    out = work / "ls0"
    g.ls0(directory, str(out))
    return [decode(n) for n in out.read_bytes().split(b"\0") if n]


def find0(g: Any, directory: str, work: Path) -> list[str]:
    """Every path below a (UTF-8) directory, relative to it, whatever their bytes."""
    out = work / "find0"
    g.find0(directory, str(out))
    return [decode(n).lstrip("/") for n in out.read_bytes().split(b"\0") if n]


class RawEntries:
    """The non-UTF-8 entries of the directories asked about, one tar-out per UTF-8 parent directory."""

    def __init__(self, g: Any, work: Path):
        self.g = g
        self.work = work
        self._loaded: set[str] = set()
        self.meta: dict[str, Meta] = {}  # guest path -> metadata, in archive order (parents first)
        self._where: dict[str, tuple[Path, str]] = {}  # guest path -> (archive, member name)

    def _load(self, parent: str) -> None:
        """Archive parent's non-UTF-8 children (and everything below them), once."""
        if parent in self._loaded:
            return
        names = list0(self.g, parent, self.work)
        # a name with a newline cannot be one line of tar's exclude file: left in, and ignored below
        excludes = ["./" + _GLOB.sub(r"\\\1", n) for n in names if addressable(n) and "\n" not in n]
        tar = self.work / f"raw-{len(self._loaded)}.tar"
        self.g.tar_out(parent, str(tar), numericowner=True, excludes=excludes)
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                rel = m.name.removeprefix("./").strip("/")
                if not rel or rel == "." or addressable(rel.split("/")[0]):
                    continue
                path = f"{parent.rstrip('/')}/{rel}"
                self.meta[path] = _meta(path, m, tf)
                self._where[path] = (tar, m.name)
        self._loaded.add(parent)

    def lookup(self, path: str) -> Meta | None:
        """The metadata of a non-UTF-8 path (None if it does not exist)."""
        split = split_raw(path)
        if split is None:
            return None
        self._load(split[0])
        return self.meta.get(path.rstrip("/") or "/")

    def below(self, path: str) -> list[Meta]:
        """Every entry strictly below a non-UTF-8 path, parents first."""
        if self.lookup(path) is None:
            return []
        prefix = path.rstrip("/") + "/"
        return [m for p, m in self.meta.items() if p.startswith(prefix)]

    def children(self, parent: str) -> list[Meta]:
        """The non-UTF-8 entries directly in a UTF-8 directory."""
        self._load(parent)
        base = parent.rstrip("/") + "/"
        return [m for p, m in self.meta.items() if p.startswith(base) and "/" not in p[len(base) :]]

    def link_target(self, directory: str, name: str) -> str:
        """The target of the symlink directory/name when it is not UTF-8 (readlink cannot return it): from a tar-out
        of directory holding just that entry."""
        others = [n for n in list0(self.g, directory, self.work) if n != name and addressable(n) and "\n" not in n]
        tar = self.work / "link.tar"
        self.g.tar_out(directory, str(tar), excludes=["./" + _GLOB.sub(r"\\\1", n) for n in others])
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.removeprefix("./") == name and m.issym():
                    return m.linkname
        return ""

    def copy(self, path: str, local: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Write the regular file at a non-UTF-8 path into local."""
        tar, member = self._where[path]
        with tarfile.open(tar) as tf:
            src = tf.extractfile(member)
            if src is None:
                raise OSError(f"{shown(path)} is not a regular file in the archive")
            total, done = self.meta[path].size, 0
            with src, open(local, "wb") as dst:
                while chunk := src.read(_COPY_CHUNK):
                    dst.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)

    def close(self) -> None:
        """Remove the archives."""
        shutil.rmtree(self.work, ignore_errors=True)


def _meta(path: str, m: tarfile.TarInfo, tf: tarfile.TarFile) -> Meta:
    """Metadata of one archive member (a hard link gets its target's size)."""
    size = m.size
    if m.islnk():
        try:
            size = tf.getmember(m.linkname).size
        except KeyError:
            size = 0
    target = m.linkname if m.issym() else ""
    kind = _TYPES.get(m.type, 0)
    return Meta(path, kind | stat.S_IMODE(m.mode), m.uid, m.gid, size, round(m.mtime * 10**9), target)


def new_workdir() -> Path:
    """A private directory for the listings and archives (removed by RawEntries.close)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="vmbackup-rawnames-"))
    os.chmod(work, 0o700)
    return work
