"""Policy files with bytes YAML or UTF-8 does not allow: one POLICY_INVALID line naming file and line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli.main import main
from controller.policies.exceptions import PolicyInvalid
from controller.policies.parse import parse_file

HEAD = b'name: gold\nschedule:\n  daily: "22:00"\n'


@pytest.mark.parametrize(
    ("tail", "line", "says"),
    [
        (b"# caf\xff\n", 4, "not UTF-8 text (byte 0xff"),  # Latin-1 in a comment
        (b"  timezone: UTC\n\nretention: {keep_last: \xc3}\n", 6, "not UTF-8 text (byte 0xc3"),  # truncated sequence
        (b'  timezone: "UT\x07C"\n', 4, "control character #x0007"),  # BEL inside a quoted value
        (b"  timezone: UTC\x00\n", 4, "control character #x0000"),  # NUL after a value
        (b"\n\n\x1b[31m\n", 6, "control character #x001b"),  # a pasted terminal escape on its own line
    ],
)
def test_bad_bytes_name_the_line(tmp_path: Path, tail: bytes, line: int, says: str) -> None:
    """parse_file raises the typed error with the 1-based line of the offending byte."""
    f = tmp_path / "p.yaml"
    f.write_bytes(HEAD + tail)
    with pytest.raises(PolicyInvalid) as ei:
        parse_file(f)
    assert ei.value.message.startswith(f"{f}:{line}: ")
    assert says in ei.value.message
    assert ei.value.details["line"] == line and ei.value.details["file"] == str(f)


def test_cli_reports_bad_bytes_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`vmbackup policy create --file` exits 1 with the error line; nothing is stored."""
    f = tmp_path / "p.yaml"
    f.write_bytes(HEAD + b"# \xff\n")
    assert main(["policy", "create", "--file", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error POLICY_INVALID: {f}:4: not UTF-8 text") and "Traceback" not in err
    assert main(["policy", "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
