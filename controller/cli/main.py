"""Entry point of the ``vmbackup`` CLI.

Every module ``controller/cli/<name>_cmd.py`` is a command (or a command group). It must define::

    def add_parser(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("name", help="...")
        p.add_argument(...)
        p.set_defaults(func=run)          # run(args) -> int (exit code)

Modules are discovered automatically, so adding a command touches no other file. Errors of type VmBackupError are
printed as one clear line (code, message, remediation) with exit code 1; ``--json`` prints them as JSON. Exit codes
(controller/cli/exitcodes.py, README "Exit codes"): 0 success, 1 the operation failed, 2 usage error (argparse).

Start-up is kept short (``vmbackup dashboard --json`` must answer fast with 10,000 VMs): when the command line
names a command, only the module(s) whose source registers that name (``sub.add_parser("name"`` in its
``def add_parser(sub``) are imported, so e.g. ``dashboard`` never loads libvirt, grpc or paramiko; ``--help``, no
command or an unknown one build the full parser from every module.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import controller
from controller.cli import exitcodes
from controller.errors import VmBackupError

_CLI_DIR = Path(__file__).resolve().parent
#: A command module's entry point, ``def add_parser(sub``: group 1 is the subparsers parameter's name.
_ENTRY = re.compile(r"^def add_parser\(\s*(\w+)", re.MULTILINE)


def registered_commands(source: str) -> set[str]:
    """The top-level command names a command module's source registers: ``sub.add_parser("name"`` on the
    parameter of its ``def add_parser(sub`` (nested subcommands are on other parsers, so they do not count)."""
    m = _ENTRY.search(source)
    if m is None:
        return set()
    return set(re.findall(rf"""\b{m.group(1)}\.add_parser\(\s*["']([a-z][a-z0-9-]*)["']""", source))


def command_modules(command: str | None = None) -> list[str]:
    """The ``*_cmd`` module names (sorted); with a command, only those whose source registers it (maybe none)."""
    mods = sorted(p.stem for p in _CLI_DIR.glob("*_cmd.py"))
    if command is None:
        return mods
    return [m for m in mods if command in registered_commands((_CLI_DIR / f"{m}.py").read_text(encoding="utf-8"))]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs ("examples:" lines) kept as written, and an option's default appended to its help when it has a
    real one (not None, False or empty) and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The help text, plus " (default: X)" where that adds something."""
        text = action.help or ""
        d = action.default
        if d in (None, False, [], ()) or d is argparse.SUPPRESS or "default" in text or "%(default)" in text:
            return action.help
        if not action.option_strings and action.nargs not in ("?", "*"):
            return action.help
        return f"{text} (default: %(default)s)"


def all_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (command path, parser) under parser, depth first: ("", root), ("points", ...), ("vault key export", ..)."""
    out = [(" ".join(path), parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.extend(all_parsers(child, (*path, name)))
    return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every ``*_cmd`` module's subcommands, or (command given and found) only that command's."""
    parser = argparse.ArgumentParser(prog="vmbackup", description="Backup for libvirt/KVM virtual machines.")
    parser.add_argument("--version", action="version", version=f"vmbackup {controller.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules(command) or command_modules():
        importlib.import_module(f"controller.cli.{mod}").add_parser(sub)
    for _, p in all_parsers(parser):
        p.formatter_class = HelpFormatter
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of argv (its first word), or None when argv starts with an option (-h, --version)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn typed errors into one-line messages and exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exitcodes.USAGE
    try:
        return int(args.func(args) or 0)
    except VmBackupError as e:
        from controller.cli import output  # lazy: rich is loaded only by the commands that print with it

        output.error(e, as_json=bool(getattr(args, "json", False)))
        return exitcodes.FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
