"""The CLI documents itself: every command and subcommand's --help has examples, every option a help text (with its
default where it has one), and the README's command table names every command of the real parser and no flag
that does not exist (issue #20 item 4)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from controller.cli.main import all_parsers, build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
PARSERS = [(path, p) for path, p in all_parsers(build_parser()) if path]


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user sees in p's --help (not -h, not hidden, not the subcommand chooser)."""
    return [
        a
        for a in p._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and a.help is not argparse.SUPPRESS
    ]


def _has_subcommands(p: argparse.ArgumentParser) -> bool:
    """True for a command group (host, vault, vault key, ...)."""
    return any(isinstance(a, argparse._SubParsersAction) for a in p._actions)


def test_the_walk_sees_the_whole_cli() -> None:
    """Sanity: the walk reaches nested subcommands (so the checks below cover them)."""
    paths = {path for path, _ in PARSERS}
    assert {"points", "restore", "vault key export", "lab ssh", "notify test"} <= paths, sorted(paths)


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=[path for path, _ in PARSERS])
def test_help_has_examples_and_every_option_a_help(path: str, parser: argparse.ArgumentParser) -> None:
    """`vmbackup PATH --help` ends with "examples:" lines, at least one of them running this very command; each
    argument is explained, and an option with a default shows it."""
    text = parser.format_help()
    assert "\nexamples:\n" in text, f"`vmbackup {path} --help` has no examples (epilog=output.examples(...))"
    examples = [e.strip() for e in text.split("\nexamples:\n", 1)[1].strip().splitlines()]
    assert all(e.startswith("vmbackup ") for e in examples), examples
    assert any(e.startswith(f"vmbackup {path} ") or e == f"vmbackup {path}" for e in examples), (path, examples)
    for a in _options(parser):
        name = "/".join(a.option_strings) or a.dest
        assert a.help, f"`vmbackup {path}`: {name} has no help text"
        real_default = a.default not in (None, False, [], ()) and a.default is not argparse.SUPPRESS
        if real_default and (a.option_strings or a.nargs in ("?", "*")):
            assert "default" in parser._get_formatter()._expand_help(a), f"`vmbackup {path}`: {name} hides its default"


def _readme_table() -> list[str]:
    """The first cells of the README's CLI reference table."""
    section = README.read_text(encoding="utf-8").split("## CLI reference", 1)[1].split("\n### ", 1)[0]
    return [line.split(" | ", 1)[0] for line in section.splitlines() if line.startswith("| `")]


def _resolve(words: list[str]) -> tuple[str, argparse.ArgumentParser] | None:
    """The deepest (path, parser) the leading words name (`restore finish NAME` -> restore), or None."""
    tree = dict(PARSERS)
    path: list[str] = []
    for w in words:
        if " ".join([*path, w]) not in tree:
            break
        path.append(w)
    return (" ".join(path), tree[" ".join(path)]) if path else None


def _documented() -> list[tuple[str, argparse.ArgumentParser, list[str]]]:
    """(path, parser, flags written with it) for every command span of the README table's first column."""
    out = []
    for cell in _readme_table():
        for span in re.findall(r"`([^`]+)`", cell):
            words = span.replace("\\|", "|").split()
            words = words[1:] if words and words[0] == "vmbackup" else words
            head = [w for w in words if re.fullmatch(r"[a-z][a-z0-9/|-]*", w)]
            lead = words[: len(head)] if words[: len(head)] == head else head[:1]
            # `policy list/show/delete`, `vault encryption disable|status`: one command per alternative
            alternatives = re.split(r"[/|]", lead[-1]) if lead else []
            for alt in alternatives or [""]:
                found = _resolve([*lead[:-1], alt])
                assert found is not None, f"README names a command the CLI does not have: `{span}`"
                out.append((found[0], found[1], re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", span)))
    return out


def test_readme_command_table_is_complete() -> None:
    """Every command and subcommand of the parser appears in the README's command table."""
    documented = {path for path, _, _ in _documented()}
    commands = {path for path, p in PARSERS if not _has_subcommands(p)}
    assert commands - documented == set(), f"commands missing from the README's CLI reference: {commands - documented}"


def test_readme_flags_exist() -> None:
    """A flag the README writes with a command is one that command accepts (no stale documentation)."""
    for path, parser, flags in _documented():
        known = {s for a in parser._actions for s in a.option_strings}
        subs = [p for q, p in PARSERS if q.startswith(f"{path} ")]
        known |= {s for p in subs for a in p._actions for s in a.option_strings}
        assert set(flags) <= known, f"README: `vmbackup {path}` has no {sorted(set(flags) - known)}"


def test_readme_names_every_option() -> None:
    """Every long option of every command is written in the README's table with that command (or its group):
    the table is the one place to look up what a command accepts (--json is said once for all)."""
    written: dict[str, set[str]] = {}
    for path, _, flags in _documented():
        written.setdefault(path, set()).update(flags)
    missing = []
    for path, parser in PARSERS:
        if _has_subcommands(parser):
            continue
        near = set().union(*(f for q, f in written.items() if path == q or path.startswith(f"{q} ")), set())
        longs = [next((s for s in a.option_strings if s.startswith("--")), "") for a in _options(parser)]
        missing += [f"{path} {s}" for s in longs if s and s != "--json" and s not in near]
    assert missing == [], f"options missing from the README's CLI reference: {missing}"
