"""Write files read from a point's (untrusted) filesystem into a local directory, safely.

What the filesystem says is data, never a path to follow:

* every name is checked (no '', '.', '..', '/', NUL), so nothing lands outside --to; --to must be new or empty, so
  no symlink is in the tree while files are written (ours are made last);
* regular files are downloaded into a private staging directory, given their owner (when running as root), mode
  and mtime there, and renamed into place (never over an existing name);
* setuid and setgid bits are dropped (reported per file); device files, fifos and sockets are never created;
* a symlink is restored only when its target is relative and stays inside --to, lexically when made and again by
  realpath once all are made (a link through another link that leaves --to is removed); else it is skipped with
  the reason. Hard links come out as separate copies.
* a name that is not valid UTF-8 is written with its exact bytes (rawnames.py); reports show it escaped.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.filerestore.appliance import Appliance, Entry, Progress
from controller.filerestore.exceptions import FileRestoreTargetInvalid
from controller.filerestore.rawnames import shown

#: bits never restored: the point's filesystem must not make a host file run as its owner or group
DROPPED_BITS = stat.S_ISUID | stat.S_ISGID


@dataclass
class GetResult:
    """What `files get` wrote: counts, the top-level paths made, and every entry skipped or changed, with why."""

    to: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    restored: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    dropped_bits: list[str] = field(default_factory=list)
    owners_kept: bool = False

    def skip(self, path: str, reason: str) -> None:
        """Record an entry that was not written."""
        self.skipped.append({"path": path, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        """JSON view (names that are not UTF-8 escaped as \\xNN; on disk they keep their bytes)."""
        return {
            "to": shown(self.to),
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "bytes": self.bytes,
            "restored": [shown(p) for p in self.restored],
            "skipped": [{k: shown(v) for k, v in s.items()} for s in self.skipped],
            "setuid_setgid_dropped": [shown(p) for p in self.dropped_bits],
            "owners_kept": self.owners_kept,
        }


def safe_name(name: str) -> bool:
    """Whether one path component from the point may become a local name."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def link_stays_inside(rel_link: str, target: str) -> bool:
    """Whether a symlink at rel_link (relative to --to) pointing at target stays inside --to, read lexically."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel_link), target))
    return resolved != ".." and not resolved.startswith("../")


def prepare_dest(to: Path) -> Path:
    """--to as a new (mode 0700) or empty real directory, resolved; FILE_RESTORE_TARGET_INVALID otherwise."""
    if os.path.lexists(to):
        if to.is_symlink() or not to.is_dir():
            raise FileRestoreTargetInvalid(f"--to {to} exists and is not a directory")
        if any(to.iterdir()):
            raise FileRestoreTargetInvalid(f"--to {to} is not empty")
    else:
        to.parent.mkdir(parents=True, exist_ok=True)
        to.mkdir(mode=0o700)
    return to.resolve()


def _inside(root: Path, path: str) -> bool:
    """Whether path (real) is root or below it."""
    return path == str(root) or path.startswith(str(root) + os.sep)


@dataclass
class _Plan:
    """One requested path: its filesystem, and (local path relative to --to, entry) for it and all below it."""

    fs: str | None
    items: list[tuple[str, Entry]]


def _plan(app: Appliance, fs: str | None, path: str, res: GetResult) -> _Plan:
    """The entries to write for one requested path (names checked; unsafe ones skipped with the reason)."""
    app.mount(fs)
    top = app.lstat(path)
    top_name = top.name if path != "/" else (fs or "root").replace("/", "-")
    items = [(top_name, top)]
    if top.kind == "dir":
        base = path.rstrip("/")
        for ent in app.walk(path):
            rel = ent.path[len(base) :].lstrip("/")
            if not all(safe_name(part) for part in rel.split("/")):
                res.skip(ent.path, "unsafe name (., .., empty or with a slash): not written")
                continue
            items.append((f"{top_name}/{rel}", ent))
    return _Plan(fs, items)


def extract(
    app: Appliance, specs: list[tuple[str | None, str]], to: Path, progress: Progress | None = None
) -> GetResult:
    """Copy each (filesystem, path) into `to` under its own name (directories whole); see the module docstring.
    progress(done, total) counts the bytes of regular files."""
    created = not os.path.lexists(to)
    root = prepare_dest(Path(to))
    res = GetResult(to=str(root), owners_kept=os.geteuid() == 0)
    try:
        plans = [_plan(app, fs, path, res) for fs, path in specs]
    except BaseException:
        if created:
            root.rmdir()  # nothing was written yet: leave no empty --to behind
        raise
    total = sum(e.size for p in plans for _, e in p.items if e.kind == "file")
    stage = Path(tempfile.mkdtemp(prefix=".vmbackup-files-", dir=root))
    made_dirs: set[str] = {""}
    links: list[tuple[str, Entry]] = []
    dirs: list[tuple[str, Entry]] = []
    try:
        for plan in plans:
            app.mount(plan.fs)
            for rel, ent in plan.items:
                parent = posixpath.dirname(rel)
                if parent not in made_dirs:
                    res.skip(ent.path, "its directory was not written")
                elif os.path.lexists(root / rel):
                    res.skip(ent.path, f"{rel} exists already (a duplicate name): not overwritten")
                elif ent.kind == "dir":
                    os.mkdir(root / rel, 0o700)
                    made_dirs.add(rel)
                    dirs.append((rel, ent))
                elif ent.kind == "file":
                    _write_file(app, ent, root / rel, stage, res, total, progress)
                elif ent.kind == "symlink":
                    links.append((rel, ent))
                else:
                    res.skip(ent.path, f"{ent.kind}: never created")
                if rel == plan.items[0][0] and os.path.lexists(root / rel):
                    res.restored.append(str(root / rel))
        _make_links(root, links, res)
        for rel, ent in sorted(dirs, key=lambda d: -d[0].count("/")):
            _apply_meta(root / rel, ent, res)
            res.dirs += 1
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return res


def _write_file(
    app: Appliance, ent: Entry, dest: Path, stage: Path, res: GetResult, total: int, progress: Progress | None
) -> None:
    """Download one regular file into the staging directory, set its metadata there, rename it into place."""
    tmp = stage / str(res.files)
    done = res.bytes

    def step(n: int, _total: int) -> None:
        """This file's progress as part of the whole."""
        if progress:
            progress(min(total, done + n), total)

    app.download(ent.path, tmp, step if progress else None)
    _apply_meta(tmp, ent, res)
    if os.path.lexists(dest):  # a name that appeared meanwhile: never written over
        tmp.unlink()
        res.skip(ent.path, f"{dest} exists already: not overwritten")
        return
    os.rename(tmp, dest)
    res.files += 1
    res.bytes += dest.stat().st_size
    if progress:
        progress(min(total, res.bytes), total)


def _apply_meta(path: Path, ent: Entry, res: GetResult) -> None:
    """Owner (as root), mode without setuid/setgid (recorded when dropped), mtime; never following a symlink."""
    if res.owners_kept:
        os.chown(path, ent.uid, ent.gid, follow_symlinks=False)
    if ent.kind != "symlink":
        mode = stat.S_IMODE(ent.mode)
        if mode & DROPPED_BITS:
            res.dropped_bits.append(ent.path)
        os.chmod(path, mode & ~DROPPED_BITS)
    os.utime(path, ns=(ent.mtime_ns, ent.mtime_ns), follow_symlinks=False)


def _make_links(root: Path, links: list[tuple[str, Entry]], res: GetResult) -> None:
    """Create the symlinks that stay inside root (lexically), then remove any that realpath shows leaving it."""
    made: list[tuple[str, Entry]] = []
    for rel, ent in links:
        if not link_stays_inside(rel, ent.target):
            res.skip(ent.path, f"symlink to {ent.target!r} leads outside --to: not created")
            continue
        os.symlink(ent.target, root / rel)
        _apply_meta(root / rel, ent, res)
        made.append((rel, ent))
    for rel, ent in made:
        if not _inside(root, os.path.realpath(root / rel)):
            os.unlink(root / rel)
            res.skip(ent.path, f"symlink to {ent.target!r} resolves outside --to through another link: removed")
        else:
            res.symlinks += 1
