"""Per-module test times and outcome counts, so CI shows where its minutes go.

Loaded by ``tests/conftest.py``. At the end of a session it prints a table (slowest module first) and, when
``VMBACKUP_TEST_TIMES_DIR`` is set, writes ``<dir>/<pid>.json`` = ``{"modules": {path: seconds}, "outcomes":
{"passed": n, ...}}`` so ``scripts/test-times.py`` can merge the tables of sessions that ran side by side
(``scripts/run-tests.sh`` runs the host-only tests in parallel with the VM tests).

It also marks every test that uses a lab-VM fixture as ``vm``, so ``-m 'not vm'`` never boots a VM.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

#: Fixtures that boot or need a real lab VM: a test using one is a VM test whatever its own marks say.
VM_FIXTURES = frozenset({"lab_vm", "make_lab_vm", "registered_vm", "lab_image"})

_module_s: dict[str, float] = defaultdict(float)
_outcomes: Counter[str] = Counter()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use a VM fixture as ``vm``."""
    for item in items:
        if VM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase's time to its module; count one outcome per test."""
    _module_s[report.nodeid.split("::", 1)[0]] += report.duration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes["xfailed" if hasattr(report, "wasxfail") else report.outcome] += 1
    elif report.when == "teardown" and report.outcome == "failed":
        _outcomes["error"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the per-module table and save it for the merge."""
    if not _module_s:
        return
    terminalreporter.write_sep("=", "time per test module (s)")
    for line in format_table(_module_s):
        terminalreporter.write_line(line)
    out = os.environ.get("VMBACKUP_TEST_TIMES_DIR")
    if out:
        Path(out, f"{os.getpid()}.json").write_text(json.dumps({"modules": _module_s, "outcomes": _outcomes}))


def format_table(module_s: dict[str, float]) -> list[str]:
    """Rows `seconds  module`, slowest first, and a total."""
    rows = [f"{s:8.1f}  {m}" for m, s in sorted(module_s.items(), key=lambda kv: -kv[1])]
    return [*rows, f"{sum(module_s.values()):8.1f}  total (sum over modules)"]
