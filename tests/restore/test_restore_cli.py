"""CLI tests of `vmbackup restore` / `vmbackup boot-check` that need no VM: argument checks, typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli.main import main


def test_restore_needs_exactly_one_mode(capsys: pytest.CaptureFixture[str], private_home: Path) -> None:
    assert main(["restore", "20261125T101500Z-3fa9c1"]) == 1
    assert "choose exactly one" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # two modes: argparse refuses them (mutually exclusive), a usage error
        main(["restore", "20261125T101500Z-3fa9c1", "--as", "a", "--replace", "b"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    for two in (["--disks-only", "--to", "d", "--replace", "b"], ["--as", "a", "--disks-only"]):
        with pytest.raises(SystemExit):
            main(["restore", "20261125T101500Z-3fa9c1", *two])


def test_disks_only_needs_to(capsys: pytest.CaptureFixture[str], private_home: Path) -> None:
    assert main(["restore", "20261125T101500Z-3fa9c1", "--disks-only"]) == 1
    assert "--to" in capsys.readouterr().err


def test_unknown_point_is_a_typed_json_error(capsys: pytest.CaptureFixture[str], private_home: Path) -> None:
    assert main(["restore", "20261125T101500Z-3fa9c1", "--as", "x1", "--json"]) == 1
    cap = capsys.readouterr()
    err = json.loads(cap.out or cap.err)
    assert "POINT_NOT_FOUND" in json.dumps(err)
    assert main(["boot-check", "20261125T101500Z-3fa9c1"]) == 1
    assert "20261125T101500Z-3fa9c1" in capsys.readouterr().err
    assert not (private_home / "restored" / "x1").exists()
