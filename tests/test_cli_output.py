"""Tables piped into a log or a pipe keep every id and path whole (issue #20: "202611…" in make demo's log)."""

from __future__ import annotations

import subprocess
import sys

from controller.cli.output import plain_table


def test_plain_table_never_cuts_cells() -> None:
    long_id = "20261129T160102Z-" + "a" * 90
    text = plain_table("points", ("point", "consistency"), [[long_id, "FILE_SYSTEM"], ["short", "CRASH"]])
    lines = text.splitlines()
    assert lines[0] == "points"
    assert lines[1].split() == ["point", "consistency"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    assert lines[3].split() == [long_id, "FILE_SYSTEM"]
    # columns line up: the second column starts at the same offset in every row
    assert lines[3].index("FILE_SYSTEM") == lines[4].index("CRASH") == lines[1].index("consistency")


def test_piped_cli_table_is_not_truncated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real `vmbackup errors` run into a pipe: every code and remediation line appears whole."""
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "errors"],
        capture_output=True, text=True, check=True, env={"VMBACKUP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "…" not in out.stdout
    assert any(len(line) > 120 for line in out.stdout.splitlines()), "expected full-width lines"
