"""`vmbackup files ls|get`: list and copy files out of a recovery point (full or incremental) without booting it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from controller.cli import output
from controller.filerestore.appliance import Entry
from controller.filerestore.appliance import Progress as ProgressFn
from controller.filerestore.rawnames import shown


def _safe(text: str) -> str:
    """A name from the point, printable on a terminal: bytes that are not UTF-8 and control characters as \\xNN,
    rich markup escaped."""
    return escape("".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown(text)))


@contextmanager
def _bar(args: argparse.Namespace) -> Iterator[tuple[ProgressFn, ProgressFn]]:
    """Progress bars on a terminal (hashing the chain, then copying files), nothing with --json or no tty."""
    show = sys.stderr.isatty() and not args.json
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=output.err_console,
        disable=not show,
    ) as bar:
        if show:
            output.err_console.print("verifying the point's chain, then starting the file-restore appliance ...")
        verify = bar.add_task("verify chain", total=None, visible=False)
        copy = bar.add_task("copy files", total=None, visible=False)

        def on_verify(done: int, total: int) -> None:
            bar.update(verify, completed=done, total=total, visible=True)

        def on_copy(done: int, total: int) -> None:
            bar.update(copy, completed=done, total=total, visible=True)

        yield on_verify, on_copy


def run_ls(args: argparse.Namespace) -> int:
    """List the point's filesystems (no PATH) or one directory."""
    from controller.filerestore.session import open_point

    with _bar(args) as (on_verify, _), open_point(args.point, args.disk, progress=on_verify) as pf:
        if not args.path:
            fss = pf.filesystems()
            if args.json:
                output.print_json({"point_id": pf.point.point_id, "filesystems": [f.to_dict() for f in fss]})
                return 0
            rows = [(f.name, f.fstype, f"{f.size / 2**20:.0f} MiB", _safe(f.label)) for f in fss]
            output.table(f"filesystems of {pf.point.point_id}", ["name", "type", "size", "label"], rows)
            output.console.print("list one with: vmbackup files ls POINT NAME:/  (or /path for the guest's OS view)")
            return 0
        entries = pf.ls(args.path)
    if args.json:
        output.print_json({"point_id": args.point, "path": shown(args.path), "entries": [e.to_dict() for e in entries]})
        return 0
    cols = ["mode", "owner", "size", "mtime", "name"]
    empty = f"{_safe(args.path)} is an empty directory: vmbackup files ls {args.point} lists the filesystems"
    output.table(f"{args.point} {_safe(args.path)}", cols, map(_row, entries), empty=empty)
    return 0


def _row(e: Entry) -> tuple[str, str, int, str, str]:
    """One ls row."""
    d = e.to_dict()
    name = _safe(e.name) + (f" -> {_safe(e.target)}" if e.kind == "symlink" else "")
    return f"{d['type'][:4]} {d['mode']}", f"{e.uid}:{e.gid}", e.size, d["mtime"][:19], name


def run_get(args: argparse.Namespace) -> int:
    """Copy paths out of the point into --to."""
    from controller.filerestore.session import open_point

    with _bar(args) as (on_verify, on_copy), open_point(args.point, args.disk, progress=on_verify) as pf:
        res = pf.get(args.paths, Path(args.to), on_copy)
    if args.json:
        output.print_json({"point_id": args.point, **res.to_dict()})
        return 0
    for s in res.skipped:
        output.console.print(f"skipped {_safe(s['path'])}: {_safe(s['reason'])}", highlight=False)
    if res.dropped_bits:
        shown = ", ".join(_safe(p) for p in res.dropped_bits[:5]) + (" ..." if len(res.dropped_bits) > 5 else "")
        output.console.print(f"setuid/setgid bits dropped on {len(res.dropped_bits)} entries: {shown}")
    if not res.owners_kept:
        output.console.print("not running as root: files belong to you, not to their owners in the point")
    output.console.print(
        f"{res.files} files, {res.dirs} directories, {res.symlinks} symlinks, {res.bytes / 2**20:.1f} MiB "
        f"into {_safe(res.to)}",
        highlight=False,
    )
    return 0


class _Intermixed(argparse.ArgumentParser):
    """A subcommand parser that takes options between its positionals (`files ls POINT --disk vdb /etc`): plain
    argparse gives every positional its chance once, before the option, and then rejects the path after it."""

    _inner = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """parse_known_intermixed_args (which calls back into this method: the flag sends it to the plain one)."""
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `files ls` and `files get`."""
    p = sub.add_parser(
        "files",
        help="list or copy files out of a recovery point without booting it",
        epilog=output.examples(
            "vmbackup files ls 20261129T160102Z-3fa9c1",
            "vmbackup files get 20261129T160102Z-3fa9c1 /etc/nginx --to ./restored",
        ),
    )
    fsub = p.add_subparsers(dest="files_command", metavar="ls|get", required=True, parser_class=_Intermixed)
    disk_help = "read only this disk (default: all of the point's disks)"
    ls = fsub.add_parser(
        "ls",
        help="list the point's filesystems, or a directory in one",
        epilog=output.examples(
            "vmbackup files ls 20261129T160102Z-3fa9c1",
            "vmbackup files ls 20261129T160102Z-3fa9c1 /var/log",
            "vmbackup files ls 20261129T160102Z-3fa9c1 vda1:/etc",
        ),
    )
    ls.add_argument("point", metavar="POINT", help="recovery point id (see `vmbackup points`)")
    ls.add_argument("path", metavar="PATH", nargs="?", help="/path (the guest's OS view) or FS:/path (vda1:/etc)")
    ls.add_argument("--disk", metavar="vdX", help=disk_help)
    output.add_json_flag(ls)
    ls.set_defaults(func=run_ls)
    get = fsub.add_parser(
        "get",
        help="copy files or directories out of the point",
        epilog=output.examples(
            "vmbackup files get 20261129T160102Z-3fa9c1 /etc/nginx /etc/hosts --to ./restored",
            "vmbackup files get 20261129T160102Z-3fa9c1 vdb:/data --disk vdb --to ./data",
        ),
    )
    get.add_argument("point", metavar="POINT", help="recovery point id (see `vmbackup points`)")
    get.add_argument("paths", metavar="PATH", nargs="+", help="/path or FS:/path; directories are copied whole")
    get.add_argument("--to", metavar="DIR", required=True, help="a new or empty directory to copy into")
    get.add_argument("--disk", metavar="vdX", help=disk_help)
    output.add_json_flag(get)
    get.set_defaults(func=run_get)
