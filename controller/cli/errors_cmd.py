"""`vmbackup errors`: the error table (code, operation, remediation), like the seed product's."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import controller
from controller.cli import output
from controller.errors import ERROR_TABLE


def _load_all_errors() -> None:
    """Import every ``exceptions`` module so the table is complete."""
    for mod in pkgutil.walk_packages(controller.__path__, "controller."):
        if mod.name.endswith(".exceptions"):
            importlib.import_module(mod.name)


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    _load_all_errors()
    rows = sorted((cls.operation, code, cls.remediation) for code, cls in ERROR_TABLE.items())
    if args.json:
        output.print_json([{"operation": o, "code": c, "remediation": r} for o, c, r in rows])
    else:
        output.table("vmbackup errors", ["operation", "code", "what to do"], rows)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `errors`."""
    p = sub.add_parser("errors", help="list every error code with what to do about it")
    output.add_json_flag(p)
    p.set_defaults(func=run)
