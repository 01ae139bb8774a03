"""`vmbackup points`, `vmbackup vault verify`, `vmbackup vault usage` through controller.cli.main.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.vault import Vault, usage
from tests.vault.helpers import PointMaker

VM = "0b6e4d1a-1111-4222-8333-444455556666"
VM2 = "9a8b7c6d-1111-4222-8333-444455556666"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps tables at 80 columns off a terminal; widen it so cells stay whole for the asserts."""
    from controller.cli import output

    monkeypatch.setattr(output.console, "width", 240)


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    """Run the CLI with --json, return (exit code, parsed stdout)."""
    rc = main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_points_lists_and_filters(
    capsys: pytest.CaptureFixture[str], make_point: PointMaker, qcow2_plain: Path
) -> None:
    """All points, then only one VM's by name and by (upper-case) uuid."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM, name="web1", freeze_window_ms=12.0, guest_frozen_ms=4.5)
    b = make_point({"vda": qcow2_plain}, vm_uuid=VM2, name="db1")
    rc, out = cli_json(capsys, "points")
    assert rc == 0 and isinstance(out, list)
    assert [p["point_id"] for p in out] == sorted([a.point_id, b.point_id], reverse=True)
    rc, out = cli_json(capsys, "points", "web1")
    assert [p["point_id"] for p in out] == [a.point_id]  # type: ignore[union-attr]
    assert out[0]["freeze_window_ms"] == 12.0 and out[0]["disks"][0]["target"] == "vda"  # type: ignore[index]
    assert out[0]["guest_frozen_ms"] == 4.5  # type: ignore[index]
    rc, out = cli_json(capsys, "points", VM2.upper())
    assert [p["vm"]["name"] for p in out] == ["db1"]  # type: ignore[union-attr]
    assert out[0]["guest_frozen_ms"] is None  # type: ignore[index]  # no agent timing: recorded as unknown
    assert main(["points", "nosuchvm", "--json"]) == 1  # a VM nobody knows is an error, not an empty list
    assert '"code": "UNKNOWN_VM"' in capsys.readouterr().err


def test_points_table(capsys: pytest.CaptureFixture[str], make_point: PointMaker, qcow2_plain: Path) -> None:
    """The human table shows id, name, consistency, the controller's window and the guest's frozen time."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM, name="web1", freeze_window_ms=812.0, guest_frozen_ms=377.4)
    assert main(["points"]) == 0
    text = capsys.readouterr().out
    assert a.point_id in text and "web1" in text and "FILE_SYSTEM" in text
    assert "guest frozen" in text and "812" in text and "377" in text


def test_vault_verify_exit_codes(
    capsys: pytest.CaptureFixture[str], vault: Vault, make_point: PointMaker, qcow2_plain: Path
) -> None:
    """Exit 0 when clean; 1 with the bad disk named when a byte is flipped; a single point can be named."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    b = make_point({"vda": qcow2_plain, "vdb": qcow2_plain}, vm_uuid=VM2)
    rc, out = cli_json(capsys, "vault", "verify")
    assert rc == 0 and out["ok"] is True and len(out["points"]) == 2  # type: ignore[index]
    vdb = b.path / "disks" / "vdb.qcow2"
    data = bytearray(vdb.read_bytes())
    data[-10] ^= 0xFF
    vdb.write_bytes(bytes(data))
    rc, out = cli_json(capsys, "vault", "verify")
    assert rc == 1 and out["ok"] is False  # type: ignore[index]
    bad = [p for p in out["points"] if not p["ok"]]  # type: ignore[index]
    assert [(p["point_id"], p["bad_disks"]) for p in bad] == [(b.point_id, ["vdb"])]
    rc, out = cli_json(capsys, "vault", "verify", a.point_id)
    assert rc == 0 and [p["point_id"] for p in out["points"]] == [a.point_id]  # type: ignore[index]
    assert main(["vault", "verify"]) == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_vault_verify_broken_manifest(
    capsys: pytest.CaptureFixture[str], make_point: PointMaker, qcow2_plain: Path
) -> None:
    """A point whose manifest is garbage is reported corrupt, not silently skipped."""
    a = make_point({"vda": qcow2_plain}, vm_uuid=VM)
    (a.path / "manifest.json").write_text("{not json")
    rc, out = cli_json(capsys, "vault", "verify")
    assert rc == 1 and out["points"][0]["point_id"] == a.point_id and out["points"][0]["error"]  # type: ignore[index]


def test_vault_verify_unknown_point_is_typed_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad or unknown id gives a one-line typed error and exit 1."""
    assert main(["vault", "verify", "../../etc"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert main(["vault", "verify", "20261125T101500Z-abcdef", "--json"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "POINT_NOT_FOUND"


def test_vault_usage(
    capsys: pytest.CaptureFixture[str], vault: Vault, make_point: PointMaker, qcow2_plain: Path
) -> None:
    """usage --json matches usage.breakdown (Vault.usage plus the chains); the table prints."""
    make_point({"vda": qcow2_plain}, vm_uuid=VM)
    rc, out = cli_json(capsys, "vault", "usage")
    assert rc == 0 and out == usage.breakdown(vault) | {"free_bytes": out["free_bytes"]}  # type: ignore[index,operator]
    assert out["vms"][VM]["points"] == 1 and out["total_bytes"] > 0  # type: ignore[index]
    assert main(["vault", "usage"]) == 0
    assert VM in capsys.readouterr().out
