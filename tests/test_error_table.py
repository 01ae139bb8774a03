"""`vmbackup errors` lists every error code, and every remediation names commands and flags that exist.

Completeness is checked from the source, not from what happens to be imported: the AST of every module under
controller/ and agent/ is searched for classes deriving (transitively) from VmBackupError or AgentError.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

import pytest

from controller.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _base_name(node: ast.expr) -> str:
    """The last name of a base class expression (``errors.VmBackupError`` -> ``VmBackupError``)."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _codes_in_tree(package: str, root_class: str) -> dict[str, str]:
    """code -> "path:Class" of every class under ``package`` that derives from ``root_class`` and sets ``code``."""
    classes: list[tuple[str, list[str], str | None, str]] = []  # (name, bases, code, where)
    for path in sorted((ROOT / package).rglob("*.py")):
        if "_pb2" in path.name:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            code = None
            for stmt in node.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else (
                    stmt.target if isinstance(stmt, ast.AnnAssign) else None)
                value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
                if isinstance(target, ast.Name) and target.id == "code" and isinstance(value, ast.Constant):
                    code = str(value.value)
            where = f"{path.relative_to(ROOT)}:{node.name}"
            classes.append((node.name, [_base_name(b) for b in node.bases], code, where))
    derived = {root_class}
    changed = True
    while changed:
        changed = False
        for name, bases, _, _ in classes:
            if name not in derived and derived.intersection(bases):
                derived.add(name)
                changed = True
    return {code: where for name, _, code, where in classes if name in derived and code is not None}


def _table(capsys: pytest.CaptureFixture[str]) -> list[dict[str, str]]:
    """`vmbackup errors --json`, parsed."""
    assert main(["errors", "--json"]) == 0
    rows: list[dict[str, str]] = json.loads(capsys.readouterr().out)
    return rows


def test_every_controller_and_agent_code_is_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Each code defined anywhere in the source is a row; agent codes are marked as raised by the agent."""
    controller_codes = _codes_in_tree("controller", "VmBackupError")
    agent_codes = _codes_in_tree("agent", "AgentError")
    # the AST walk itself must find the known stragglers, or the check below proves nothing
    assert {"RESTORE_FAILED", "SERVE_ALREADY_RUNNING", "POLICY_INVALID"} <= controller_codes.keys()
    assert {"FREEZE_FAILED", "VSS_FAILED", "AGENT_INTERNAL"} <= agent_codes.keys()
    rows = _table(capsys)
    by_side = {(r["code"], r["raised_by"]) for r in rows}
    missing = [f"{c} ({w})" for c, w in controller_codes.items() if (c, "controller") not in by_side]
    missing += [f"{c} ({w})" for c, w in agent_codes.items() if (c, "agent") not in by_side]
    assert missing == []
    # one code means one thing: no code is both a controller and an agent code
    assert sorted(controller_codes.keys() & agent_codes.keys()) == []
    assert all(r["remediation"].strip() and r["operation"].strip() for r in rows)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """name -> parser of every `vmbackup` subcommand (nested subcommands as "a b")."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return out


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


#: `vmbackup WORD [WORD]` and what follows up to the end of that command (a backquote, a closing paren, a ;)
_CMD_RE = re.compile(r"(`?)vmbackup ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)([^`);]*)")


def check_remediation(text: str, commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """Problems with the `vmbackup ...` commands a remediation names: unknown subcommand, unknown --flag.

    In backquotes `vmbackup X` must be a command. Outside them "vmbackup" may be prose ("Install vmbackup on
    that host"), so an unknown word there is not a problem; a known subcommand's flags are checked either way.
    """
    problems = []
    for m in _CMD_RE.finditer(text):
        quoted, words, rest = m.group(1) == "`", m.group(2).split(), m.group(3)
        if len(words) == 2 and " ".join(words) in commands:
            name = " ".join(words)
        elif words[0] in commands:
            name = words[0]
            rest = (" " + words[1] if len(words) == 2 else "") + rest
        else:
            if quoted:
                problems.append(f"no subcommand {words[0]!r}")
            continue
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest.split(". ")[0]):
            if flag not in _flags(commands[name]):
                problems.append(f"`vmbackup {name}` has no {flag}")
    return problems


def test_check_remediation_catches_bad_commands_and_flags() -> None:
    """The checker itself: it must flag what the old AGENT_TOO_OLD text said, and accept real commands."""
    commands = _subcommands()
    assert check_remediation("Upgrade the agent: vmbackup register --upgrade VM.", commands) == [
        "`vmbackup register` has no --upgrade"]
    assert check_remediation("run `vmbackup frobnicate`", commands) == ["no subcommand 'frobnicate'"]
    assert check_remediation("Run `vmbackup register VM` again (it upgrades in place).", commands) == []
    assert check_remediation("Install vmbackup on that host; `vmbackup host add --bogus X`", commands) == [
        "`vmbackup host add` has no --bogus"]


def test_every_remediation_names_real_commands_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """Each `vmbackup <sub> ... --flag` in a remediation is a real subcommand with that flag."""
    commands = _subcommands()
    bad = {r["code"]: p for r in _table(capsys) if (p := check_remediation(r["remediation"], commands))}
    assert bad == {}


def _literal_remediations(package: str) -> dict[str, str]:
    """"path:line" -> text of every ``remediation=...`` keyword given as a literal (per-raise overrides)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "remediation":
                parts = [node.value] if isinstance(node.value, ast.Constant) else (
                    node.value.values if isinstance(node.value, ast.JoinedStr) else [])
                text = "".join(str(p.value) if isinstance(p, ast.Constant) else "X" for p in parts)
                if text:
                    out[f"{path.relative_to(ROOT)}:{node.value.lineno}"] = text
    return out


def test_per_raise_remediations_name_real_commands_and_flags() -> None:
    """Remediations passed when raising (overriding the class text) obey the same rule."""
    commands = _subcommands()
    found = _literal_remediations("controller")
    assert len(found) >= 3  # the walk sees them (e.g. registration's AGENT_TOO_OLD override)
    bad = {where: p for where, text in found.items() if (p := check_remediation(text, commands))}
    assert bad == {}
