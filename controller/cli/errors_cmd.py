"""`vmbackup errors`: the error table (code, operation, remediation), like the seed product's.

The table holds every :class:`~controller.errors.VmBackupError` code (:func:`controller.errors.load_all` imports
every exceptions module under controller/) and every code the guest agent can answer with
(:func:`controller.agentclient.agent_codes.agent_codes`); the ``raised by`` column says which side reports it.
"""

from __future__ import annotations

import argparse

from controller.agentclient.agent_codes import agent_codes
from controller.cli import output
from controller.errors import load_all


def rows() -> list[tuple[str, str, str, str]]:
    """(operation, code, raised by, remediation) for every code, sorted by operation then code."""
    out = [(cls.operation, code, "controller", cls.remediation) for code, cls in load_all().items()]
    out += [(a.operation, a.code, "agent", a.remediation) for a in agent_codes()]
    return sorted(out)


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    table = rows()
    if args.json:
        output.print_json([{"operation": o, "code": c, "raised_by": s, "remediation": r} for o, c, s, r in table])
    else:
        output.table("vmbackup errors", ["operation", "code", "raised by", "what to do"], table)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `errors`."""
    p = sub.add_parser(
        "errors",
        help="list every error code with what to do about it",
        epilog=output.examples("vmbackup errors", "vmbackup errors | grep VM_NOT_FOUND"),
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)
