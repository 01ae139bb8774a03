"""Entry point of the ``vmbackup`` CLI.

Every module ``controller/cli/<name>_cmd.py`` is a command (or a command group). It must define::

    def add_parser(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("name", help="...")
        p.add_argument(...)
        p.set_defaults(func=run)          # run(args) -> int (exit code)

Modules are discovered automatically, so adding a command touches no other file. Errors of type VmBackupError are
printed as one clear line (code, message, remediation) with exit code 2; ``--json`` prints them as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import controller
import controller.cli as cli_pkg
from controller.cli import output
from controller.errors import VmBackupError


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every ``*_cmd`` module's subcommands."""
    parser = argparse.ArgumentParser(prog="vmbackup", description="Backup for libvirt/KVM virtual machines.")
    parser.add_argument("--version", action="version", version=f"vmbackup {controller.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(m.name for m in pkgutil.iter_modules(cli_pkg.__path__)):
        if mod.endswith("_cmd"):
            importlib.import_module(f"controller.cli.{mod}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn typed errors into one-line messages and exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VmBackupError as e:
        output.error(e, as_json=bool(getattr(args, "json", False)))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
