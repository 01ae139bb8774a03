"""The libguestfs appliance that reads a point's disks: launch, name filesystems, mount read-only, stat, download.

Drives are attached read-only (libguestfs puts a throwaway qcow2 overlay over each, so an ext4 journal replay or an
xfs log recovery lands there, never in the vault); an incremental point's top file is attached and QEMU follows its
backing chain. The appliance has no network. KVM is used when it works; a host whose /dev/kvm exists but fails
(nested virtualisation) is retried once under TCG (``LIBGUESTFS_BACKEND_SETTINGS=force_tcg`` skips the try).
Names that are not valid UTF-8 are listed as bytes and read through rawnames.py (libguestfs' binding takes str only).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from controller.filerestore import rawnames
from controller.filerestore.exceptions import (
    FileRestoreFailed,
    FileRestoreUnavailable,
    FilesystemAmbiguous,
    FilesystemNotFound,
    GuestPathNotFound,
)
from controller.filerestore.rawnames import addressable, shown
from controller.sysimport import import_system_module

#: names passed to one lstatnslist/readlinklist call (the protocol caps a message at a few MiB)
BATCH = 500
#: appliance memory (MiB): enough for the filesystem code, small beside the lab VMs
MEMSIZE = 768
_PART = re.compile(r"^/dev/[sv]d([a-z]+)(\d*)$")
_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char-device",
    stat.S_IFBLK: "block-device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

Progress = Callable[[int, int], None]


def import_guestfs() -> ModuleType:
    """The libguestfs Python module: importable directly, or from Debian's dist-packages; else
    FILE_RESTORE_UNAVAILABLE."""
    try:
        return import_system_module("guestfs")
    except ImportError as e:
        raise FileRestoreUnavailable(f"python3-guestfs is not importable ({e})") from e


@dataclass(frozen=True)
class Filesystem:
    """A filesystem found on the point's disks: name (vda1, vdb, vg0/root), appliance device, type, size, label."""

    name: str
    device: str
    fstype: str
    size: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {"name": self.name, "fstype": self.fstype, "size": self.size, "label": self.label}


@dataclass(frozen=True)
class Entry:
    """One file's metadata as the point's filesystem records it (mode holds the type bits; target for symlinks)."""

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str = ""

    @property
    def kind(self) -> str:
        """file, dir, symlink, char-device, block-device, fifo, socket (or unknown)."""
        return _TYPES.get(stat.S_IFMT(self.mode), "unknown")

    @property
    def name(self) -> str:
        """The last path component."""
        return self.path.rstrip("/").rsplit("/", 1)[-1] or "/"

    def to_dict(self) -> dict[str, Any]:
        """JSON view (mode in octal without the type bits, mtime as ISO UTC)."""
        out: dict[str, Any] = {
            "path": shown(self.path),
            "name": shown(self.name),
            "type": self.kind,
            "mode": f"{stat.S_IMODE(self.mode):04o}",
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime": datetime.fromtimestamp(self.mtime_ns / 1e9, UTC).isoformat(),
        }
        if self.kind == "symlink":
            out["target"] = shown(self.target)
        if not addressable(self.name):  # escaped above: the exact bytes too
            out["name_hex"] = rawnames.hex_name(self.name)
        return out


def _entry(path: str, st: dict[str, int], target: str = "") -> Entry:
    """An Entry from an lstatns dict."""
    return Entry(
        path=path,
        mode=int(st["st_mode"]),
        uid=int(st["st_uid"]),
        gid=int(st["st_gid"]),
        size=int(st["st_size"]),
        mtime_ns=int(st["st_mtime_sec"]) * 10**9 + int(st["st_mtime_nsec"]),
        target=target,
    )


def join(base: str, name: str) -> str:
    """Guest path base/name."""
    return f"{base.rstrip('/')}/{name}"


class Appliance:
    """A launched libguestfs handle over drives [(target, top file, format)], attached read-only in that order."""

    def __init__(self, drives: list[tuple[str, Path, str]]):
        self.drives = drives
        self.g: Any = None
        self._mounted: str | None = None
        self._fs: list[Filesystem] | None = None
        self._raw: rawnames.RawEntries | None = None

    def launch(self) -> None:
        """Start the appliance (KVM, or TCG when KVM fails); FILE_RESTORE_UNAVAILABLE if neither starts."""
        gfs = import_guestfs()
        settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
        tries = [["force_tcg"]] if "force_tcg" in settings else [[], ["force_tcg"]]
        last = ""
        for extra in tries:
            g = gfs.GuestFS(python_return_dict=True, close_on_exit=True)
            g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
            g.set_backend_settings(extra)
            g.set_memsize(MEMSIZE)
            g.set_network(False)
            for target, path, fmt in self.drives:
                if fmt == "nbd":  # an encrypted disk, decrypted by qemu-storage-daemon (nbd.py): socket, export name
                    g.add_drive_opts(target, format="raw", protocol="nbd", server=[f"unix:{path}"], readonly=True)
                else:
                    g.add_drive_opts(str(path), format=fmt, readonly=True)
            try:
                g.launch()
            except RuntimeError as e:
                last = str(e)
                g.close()
                continue
            self.g = g
            self._raw = rawnames.RawEntries(g, rawnames.new_workdir())
            return
        raise FileRestoreUnavailable(f"the libguestfs appliance did not start: {last}")

    def close(self) -> None:
        """Shut the appliance down (its overlays go with it)."""
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self.g is not None:
            with contextlib.suppress(RuntimeError):
                self.g.shutdown()
            self.g.close()
            self.g = None

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one libguestfs call; its RuntimeError (or an undecodable name) becomes FILE_RESTORE_FAILED."""
        try:
            return fn(*args)
        except RuntimeError as e:
            raise FileRestoreFailed(f"{what}: {e}") from e
        except UnicodeDecodeError as e:  # a name that is not UTF-8: the bindings cannot return it
            raise FileRestoreFailed(f"{what}: a file name there is not valid UTF-8 ({e})") from e

    def device_name(self, device: str) -> str:
        """The user-facing name of an appliance device: /dev/sdb2 -> vdb2 by drive order, /dev/vg/lv -> vg/lv."""
        m = _PART.match(device)
        if m:
            whole = self._call("part_to_dev", self.g.part_to_dev, device) if m.group(2) else device
            idx = int(self._call("device_index", self.g.device_index, whole))
            return f"{self.drives[idx][0]}{m.group(2)}"
        return device.removeprefix("/dev/").removeprefix("mapper/")

    def filesystems(self) -> list[Filesystem]:
        """Every filesystem libguestfs recognises on the drives (swap and unknown content left out)."""
        if self._fs is None:
            found = self._call("list_filesystems", self.g.list_filesystems)
            out = []
            for dev, fstype in sorted(found.items()):
                if fstype in ("swap", "unknown", "") or fstype.startswith("crypto_"):
                    continue
                size = int(self._call("blockdev_getsize64", self.g.blockdev_getsize64, dev))
                try:
                    label = str(self.g.vfs_label(dev))
                except RuntimeError:
                    label = ""
                out.append(Filesystem(self.device_name(dev), dev, fstype, size, label))
            self._fs = out
        return self._fs

    def mount(self, fs_name: str | None) -> None:
        """Mount (read-only) the named filesystem at /, or with None the guest's OS view (every mountpoint of its
        one OS root), or the only filesystem there is; FILESYSTEM_NOT_FOUND / FILESYSTEM_AMBIGUOUS otherwise."""
        key = fs_name or ""
        if self._mounted == key:
            return
        self._call("umount_all", self.g.umount_all)
        self._mounted = None
        fss = self.filesystems()
        if fs_name:
            match = [f for f in fss if f.name == fs_name]
            if not match:
                raise FilesystemNotFound(
                    f"no filesystem {fs_name!r} on the point's disks (found: {_names(fss)})",
                    details={"filesystems": [f.name for f in fss]},
                )
            self._call(f"mount {fs_name}", self.g.mount_ro, match[0].device, "/")
        else:
            self._mount_os(fss)
        self._mounted = key

    def _mount_os(self, fss: list[Filesystem]) -> None:
        """Mount the one OS root's mountpoints (shortest first), or the only filesystem."""
        roots = self._call("inspect_os", self.g.inspect_os)
        if len(roots) == 1:
            mps = self._call("inspect_get_mountpoints", self.g.inspect_get_mountpoints, roots[0])
            for mp, dev in sorted(mps.items(), key=lambda kv: len(kv[0])):
                try:
                    self.g.mount_ro(dev, mp)
                except RuntimeError:
                    if mp == "/":
                        raise FileRestoreFailed(f"the guest's root filesystem {dev} does not mount") from None
            return
        if len(fss) == 1:
            self._call(f"mount {fss[0].name}", self.g.mount_ro, fss[0].device, "/")
            return
        if not fss:
            raise FilesystemNotFound("the point's disks hold no filesystem that can be read")
        raise FilesystemAmbiguous(
            f"the point has {len(fss)} filesystems and {len(roots)} operating systems; name one: {_names(fss)}",
            details={"filesystems": [f.name for f in fss]},
        )

    @property
    def raw(self) -> rawnames.RawEntries:
        """The non-UTF-8 entries read so far (the appliance must be launched)."""
        assert self._raw is not None, "the appliance is not launched"
        return self._raw

    def _raw_entry(self, path: str) -> Entry:
        """The entry at a non-UTF-8 path; GUEST_PATH_NOT_FOUND if absent."""
        meta = self._call(f"tar-out for {shown(path)}", self.raw.lookup, path)
        if meta is None:
            raise GuestPathNotFound(f"{shown(path)}: no such file or directory", details={"path": shown(path)})
        return Entry(*meta)

    def lstat(self, path: str) -> Entry:
        """The entry at path (not following a final symlink); GUEST_PATH_NOT_FOUND if absent."""
        if not addressable(path):
            return self._raw_entry(path)
        try:
            st = self.g.lstatns(path)
        except RuntimeError as e:
            raise GuestPathNotFound(f"{path}: {e}", details={"path": path}) from e
        ent = _entry(path, st)
        if ent.kind == "symlink":
            ent = _entry(path, st, str(self._call(f"readlink {path}", self.g.readlink, path)))
        return ent

    def entries(self, directory: str, names: list[str]) -> list[Entry]:
        """Entries for names inside directory, in batches (symlink targets read too)."""
        out: list[Entry] = []
        for i in range(0, len(names), BATCH):
            part = names[i : i + BATCH]
            sts = self._call(f"lstat in {directory}", self.g.lstatnslist, directory, part)
            try:
                links = self.g.readlinklist(directory, part)
            except UnicodeDecodeError:  # a link target that is not UTF-8: those read one by one
                links = [self._link(directory, n, st) for n, st in zip(part, sts, strict=True)]
            except RuntimeError as e:
                raise FileRestoreFailed(f"readlink in {directory}: {e}") from e
            for name, st, target in zip(part, sts, links, strict=True):
                ent = _entry(join(directory, name), st)
                out.append(_entry(ent.path, st, target) if ent.kind == "symlink" else ent)
        return out

    def _link(self, directory: str, name: str, st: dict[str, int]) -> str:
        """One entry's symlink target ('' for other kinds), read from a tar-out when it is not UTF-8."""
        if stat.S_IFMT(int(st["st_mode"])) != stat.S_IFLNK:
            return ""
        try:
            return str(self._call(f"readlink {join(directory, name)}", self.g.readlink, join(directory, name)))
        except FileRestoreFailed:
            return str(self._call(f"tar-out for {join(directory, name)}", self.raw.link_target, directory, name))

    def ls(self, directory: str) -> list[Entry]:
        """The directory's entries, sorted by name (names that are not UTF-8 included)."""
        if not addressable(directory):
            prefix = directory.rstrip("/") + "/"
            below = self.raw.below(directory) if self._raw_entry(directory).kind == "dir" else []
            return sorted((Entry(*m) for m in below if "/" not in m.path[len(prefix) :]), key=lambda e: e.name)
        names = sorted(self._call(f"ls {directory}", rawnames.list0, self.g, directory, self.raw.work))
        good = [n for n in names if addressable(n)]
        out = self.entries(directory, good)
        if len(good) < len(names):
            out += [Entry(*m) for m in self._call(f"tar-out of {directory}", self.raw.children, directory)]
        return sorted(out, key=lambda e: e.name)

    def walk(self, directory: str) -> Iterator[Entry]:
        """Every entry below directory (not following symlinks), parents before children; a non-UTF-8 entry comes
        with everything below it (one archive), after the UTF-8 entries."""
        if not addressable(directory):
            yield from (Entry(*m) for m in self._call(f"tar-out of {shown(directory)}", self.raw.below, directory))
            return
        rels = self._call(f"find {directory}", rawnames.find0, self.g, directory, self.raw.work)
        by_dir: dict[str, list[str]] = {}
        raw_tops: list[str] = []
        for rel in rels:
            parent, _, name = rel.rpartition("/")
            if addressable(rel):
                by_dir.setdefault(parent, []).append(name)
            elif addressable(parent):  # the first non-UTF-8 component: it and all below come from its archive
                raw_tops.append(join(directory, rel))
        for parent in sorted(by_dir, key=lambda p: (p.count("/") if p else -1, p)):
            yield from self.entries(join(directory, parent) if parent else directory, by_dir[parent])
        for top in raw_tops:
            yield self._raw_entry(top)
            yield from (Entry(*m) for m in self.raw.below(top))

    def download(self, path: str, local: Path, progress: Progress | None = None) -> None:
        """Copy the regular file at path into the local file (libguestfs writes it)."""
        if not addressable(path):
            self._call(f"copy {shown(path)}", self.raw.copy, path, local, progress)
            return
        gfs = import_guestfs()
        handle = None
        if progress is not None:

            def on_event(_ev: int, _h: int, _buf: bytes, array: list[int]) -> None:
                """libguestfs progress: array = [proc_nr, serial, position, total]."""
                if len(array) >= 4:
                    progress(int(array[2]), int(array[3]))

            handle = self.g.set_event_callback(on_event, gfs.EVENT_PROGRESS)
        try:
            self._call(f"download {path}", self.g.download, path, str(local))
        finally:
            if handle is not None:
                self.g.delete_event_callback(handle)


def _names(fss: list[Filesystem]) -> str:
    """'vda1 (ext4), vdb (xfs)'."""
    return ", ".join(f"{f.name} ({f.fstype})" for f in fss) or "none"
