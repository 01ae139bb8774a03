"""The policy field exclude_disks: parsed, validated with line-precise errors, round-tripped, passed to backups."""

from __future__ import annotations

from typing import Any

import pytest

from controller.policies import protect
from controller.policies.exceptions import PolicyInvalid
from controller.policies.model import Policy
from controller.policies.parse import parse_text, to_yaml

BASE = """\
name: db
schedule: {daily: "01:00"}
"""


def test_exclude_disks_parsed_and_round_tripped() -> None:
    (p,) = parse_text(BASE + "exclude_disks: [vdc, share, hostdev0]\n")
    assert p.exclude_disks == ("vdc", "share", "hostdev0")
    (again,) = parse_text(to_yaml(p))
    assert again.exclude_disks == p.exclude_disks
    assert Policy.from_dict(p.to_dict()).exclude_disks == p.exclude_disks


def test_exclude_disks_defaults_to_none_and_old_json_reads() -> None:
    (p,) = parse_text(BASE)
    assert p.exclude_disks == ()
    assert "exclude_disks" not in to_yaml(p)
    d = p.to_dict()
    del d["exclude_disks"]  # a policy stored before the field existed
    assert Policy.from_dict(d).exclude_disks == ()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("vdc", "must be a list"),
        ("[vdc, vdc]", "listed twice"),
        ("['../etc']", "allowed: a device target"),
        ("[{a: 1}]", "exclude_disks"),
    ],
)
def test_bad_exclude_disks_names_the_line(value: str, fragment: str) -> None:
    with pytest.raises(PolicyInvalid) as ei:
        parse_text(BASE + f"exclude_disks: {value}\n", source="p.yaml")
    assert "exclude_disks" in ei.value.message and fragment in ei.value.message
    assert ei.value.message.startswith("p.yaml:3: field ") and ei.value.details["line"] == 3


def test_protect_backup_passes_the_exclusions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup a policy runs carries its exclude_disks to the engine."""
    import controller.backup.engine as engine

    seen: dict[str, Any] = {}

    class FakeEngine:
        def __init__(self, settings: Any) -> None:
            pass

        def __enter__(self) -> FakeEngine:
            return self

        def __exit__(self, *exc: object) -> None:
            seen["closed"] = True

        def run(self, req: engine.BackupRequest) -> Any:
            seen["exclude"] = req.exclude_disks
            return type("R", (), {"point_id": "p1"})()

    monkeypatch.setattr(engine, "BackupEngine", FakeEngine)
    (p,) = parse_text(BASE + "exclude_disks: [vdd]\n")
    reg = type("Reg", (), {"vm_uuid": "u", "host_uri": "qemu:///system"})()
    assert protect.run_backup_now(None, reg, p) == "p1"  # type: ignore[arg-type]
    assert seen["exclude"] == ("vdd",) and seen["closed"]  # the engine (its State) is closed after
