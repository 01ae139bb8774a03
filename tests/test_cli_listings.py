"""Empty listings say what to do next (on stderr, nothing on stdout; --json prints []), a VM name nobody knows is
UNKNOWN_VM (exit 1), and a typed error exits 1 while a usage error exits 2 (README "Exit codes")."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller import db, settings
from controller.cli import exitcodes
from controller.cli.main import main
from controller.inventory.store import VmInfo, record_host
from controller.vault import RecoveryPoint
from tests.fixtures_state import _private_home, add_point  # noqa: F401  (fixtures)

UUID = "6a1b2c3d-0000-4000-8000-00000000a001"


def _discovered(name: str) -> None:
    """Put a made-up VM into the inventory, as `vmbackup discover` would."""
    uri = "qemu:///system"
    record_host(db.connect(settings.load().db_path), uri, [VmInfo(UUID, name, uri, "shutoff")])


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["vms"], "vmbackup discover"),
        (["vms", "--state", "running"], "no VMs match"),
        (["points"], "vmbackup backup VM"),
        (["jobs"], "no jobs yet"),
        (["jobs", "--vm", "web1"], "no jobs match"),
        (["policy", "list"], "vmbackup policy create"),
        (["protect", "--list"], "vmbackup protect VM --policy"),
        (["register", "--list"], "vmbackup register VM"),
        (["restore", "list"], "--instant"),
        (["prune"], "nothing to prune"),
        (["notify", "list"], "no incidents open"),
    ],
)
def test_empty_listing_says_what_next(argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The hint is on stderr, stdout stays empty (no header without rows); --json prints [] and no hint."""
    assert main(argv) == exitcodes.OK
    out, err = capsys.readouterr()
    assert out == "" and hint in err, (out, err)
    assert main([*argv, "--json"]) == exitcodes.OK
    out, err = capsys.readouterr()
    assert out.strip() == "[]" and err == "", (out, err)


def test_points_of_unknown_vm_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`points NO_SUCH_VM`: UNKNOWN_VM naming `vmbackup vms`, exit 1 (also with --json, as a JSON error); the same
    for `prune NO_SUCH_VM`."""
    assert main(["points", "NO_SUCH_VM"]) == exitcodes.FAILED
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error UNKNOWN_VM: ") and "`vmbackup vms`" in err, err
    assert main(["points", "NO_SUCH_VM", "--json"]) == exitcodes.FAILED
    assert '"code": "UNKNOWN_VM"' in capsys.readouterr().err
    assert main(["prune", "NO_SUCH_VM"]) == exitcodes.FAILED
    assert "UNKNOWN_VM" in capsys.readouterr().err


def test_points_of_known_vm_without_points(capsys: pytest.CaptureFixture[str]) -> None:
    """A discovered VM with no points yet is not an error: the hint names the backup command for it."""
    _discovered("web1")
    assert main(["points", "web1"]) == exitcodes.OK
    out, err = capsys.readouterr()
    assert out == "" and "vmbackup backup web1" in err, (out, err)
    assert main(["points", UUID, "--json"]) == exitcodes.OK
    assert capsys.readouterr().out.strip() == "[]"


def test_points_of_vm_known_only_to_the_vault(
    add_point: Callable[..., RecoveryPoint],  # noqa: F811  (the fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A VM gone from the inventory (or never discovered here) whose points are in the vault is listed."""
    p = add_point(UUID, "old-vm", datetime(2026, 11, 1, tzinfo=UTC))
    assert main(["points", "old-vm"]) == exitcodes.OK
    assert p.point_id in capsys.readouterr().out


def test_usage_error_exits_2_and_typed_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse rejects an unknown option with 2 before anything runs; a typed error from a command is 1."""
    with pytest.raises(SystemExit) as e:
        main(["points", "--no-such-option"])
    assert e.value.code == exitcodes.USAGE
    assert main([]) == exitcodes.USAGE  # no command: the help, as a usage error
    capsys.readouterr()
    assert main(["vault", "verify", "20261125T101500Z-abcdef"]) == exitcodes.FAILED
    assert "error POINT_NOT_FOUND" in capsys.readouterr().err
