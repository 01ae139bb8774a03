"""Protected points on real vault points (a 6-point qcow2 chain written through PointWriter, tests/vault/chain_helpers):
a protected point and every point it is built on refuse delete and merge (POINT_PROTECTED, through the API and the
CLI with its remediation), a point built on it stays deletable, unprotect makes it deletable again, and an unreadable
record still protects the point its file name names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.vault import Vault, layout, protect
from controller.vault.exceptions import PointProtected
from controller.vault.merge import merge_into_child
from tests.vault.chain_helpers import build_chain, restore, same_content


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps tables at 80 columns off a terminal; widen it so cells stay whole for the asserts."""
    from controller.cli import output

    monkeypatch.setattr(output.console, "width", 240)


def _files(vault: Vault, point_id: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of a point's disk files: what a merge would change."""
    p = vault.get_point(point_id)
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in (p.path / "disks").iterdir()}


def test_protected_point_and_its_parents_refuse_delete_until_unprotected(vault: Vault, tmp_path: Path) -> None:
    pts = build_chain(vault, 6)
    ids = [p.point_id for p in pts]
    before = restore(vault, ids[2], "vdb", tmp_path / "before.qcow2")
    rec = protect.protect(vault, pts[2], "before the upgrade")
    assert layout.protect_path(vault.root, pts[2].vm_uuid, ids[2]).is_file()
    assert rec.describe() == "protected (user): before the upgrade"
    files = {i: _files(vault, ids[i]) for i in range(3)}
    for i in range(3):  # the point and its chain back to the full
        with pytest.raises(PointProtected) as e:
            vault.delete_point(vault.get_point(ids[i]))
        assert e.value.code == "POINT_PROTECTED" and "vmbackup vault unprotect" in e.value.message
        assert ids[i] in e.value.message
    with pytest.raises(PointProtected) as m:
        merge_into_child(vault, vault.get_point(ids[1]))
    assert m.value.details["protected_by"] == [f"protected: parent of protected point {ids[2]}"]
    assert {i: _files(vault, ids[i]) for i in range(3)} == files  # nothing was touched
    # points built on it are not protected: the newest goes, the one after the protected point merges forward
    assert vault.delete_point(vault.get_point(ids[5])).action == "deleted"
    out = vault.delete_point(vault.get_point(ids[3]))
    assert (out.action, out.into) == ("merged", ids[4])
    assert _files(vault, ids[2]) == files[2]
    assert same_content(before, restore(vault, ids[2], "vdb", tmp_path / "after.qcow2"))
    # unprotected: deletable again (its parent merges into it, then it merges into its child)
    assert [r.holder for r in protect.unprotect(vault, vault.get_point(ids[2]))] == ["user"]
    assert protect.protectors(vault, pts[0].vm_uuid) == {}
    assert vault.delete_point(vault.get_point(ids[1])).into == ids[2]
    assert vault.delete_point(vault.get_point(ids[2])).into == ids[4]
    assert sorted(p.point_id for p in vault.list_points()) == [ids[0], ids[4]]


def test_unreadable_record_still_protects(vault: Vault) -> None:
    pts = build_chain(vault, 2)
    path = layout.protect_path(vault.root, pts[1].vm_uuid, pts[1].point_id)
    path.write_text("{not json")
    with pytest.raises(PointProtected) as e:
        vault.delete_point(pts[1])
    assert "unreadable protection record" in e.value.message
    assert [r.holder for r in protect.unprotect(vault, pts[1])] == ["user"] and not path.exists()
    assert vault.delete_point(pts[1]).action == "deleted"


def test_cli_protect_points_delete_unprotect(vault: Vault, capsys: pytest.CaptureFixture[str]) -> None:
    pts = build_chain(vault, 3)
    ids = [p.point_id for p in pts]
    assert main(["vault", "protect", ids[1], "--reason", "audit 2026", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["point_id"], out["holder"], out["reason"], out["implicitly_protected"]) == (
        ids[1], "user", "audit 2026", [ids[0]])  # fmt: skip
    assert main(["points", "--json"]) == 0
    listed = {p["point_id"]: p for p in json.loads(capsys.readouterr().out)}
    assert [listed[i]["protected"] for i in ids] == [True, True, False]
    assert listed[ids[1]]["protected_by"] == ["protected (user): audit 2026"]
    assert listed[ids[0]]["protected_by"] == [f"protected: parent of protected point {ids[1]}"]
    assert main(["points"]) == 0
    table = capsys.readouterr().out
    cells = {c[0]: c[-1] for line in table.splitlines() if len(c := line.replace("│", " ").split()) > 2}
    assert [cells[i] for i in ids] == ["chain", "yes", "-"]
    assert main(["vault", "delete", ids[0]]) == 1
    err = capsys.readouterr().err
    assert "POINT_PROTECTED" in err and "vmbackup vault unprotect" in err
    assert main(["vault", "delete", ids[1], "--json"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "POINT_PROTECTED"
    assert len(vault.list_points()) == 3
    assert main(["vault", "unprotect", ids[1], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["holder"] for r in out["removed"]] == ["user"] and out["still_protected"] == []
    assert main(["vault", "delete", ids[0]]) == 0
    assert [p.point_id for p in vault.list_points()] == [ids[2], ids[1]]


def test_protect_a_missing_point_is_refused(vault: Vault) -> None:
    pts = build_chain(vault, 1)
    vault.delete_point(pts[0])
    with pytest.raises(Exception) as e:
        protect.protect(vault, pts[0])
    assert getattr(e.value, "code", "") == "POINT_NOT_FOUND"
    assert not layout.protect_path(vault.root, pts[0].vm_uuid, pts[0].point_id).exists()
