"""`vault usage` per chain (controller/vault/usage.py) on real points: two chains of one VM (a full and its
incrementals each, written through PointWriter) and another VM's full; each chain's points and bytes add up to the
VM's, protected points are counted, a soft-deleted point's bytes move to the deleted columns, and the CLI shows the
chains (table and --json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.vault import Vault, protect, usage
from controller.vault.vault import _du
from tests.vault.chain_helpers import VM, WRITES, add_point, build_chain
from tests.vault.helpers import PointMaker


def test_usage_breaks_down_by_vm_and_chain(
    vault: Vault, make_point: PointMaker, qcow2_plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = build_chain(vault, 3)
    full2 = add_point(vault, None, WRITES[0], 3)
    inc2 = add_point(vault, full2, WRITES[1], 4)
    other = make_point({"vda": qcow2_plain})
    protect.protect(vault, first[1])  # first[0] is protected with it (its parent)

    u = usage.breakdown(vault)
    a, b = u["vms"][VM], u["vms"][other.vm_uuid]
    assert [c["full"] for c in a["chains"]] == [full2.point_id, first[0].point_id]
    c2, c1 = a["chains"]
    assert (c1["points"], c1["newest"], c1["protected"]) == (3, first[2].point_id, 2)
    assert (c2["points"], c2["newest"], c2["protected"]) == (2, inc2.point_id, 0)
    assert c1["bytes"] == sum(_du(p.path) for p in first) and c2["bytes"] == _du(full2.path) + _du(inc2.path)
    assert c1["bytes"] + c2["bytes"] == a["bytes"] and a["points"] == 5
    assert [(c["full"], c["points"], c["bytes"]) for c in b["chains"]] == [(other.point_id, 1, b["bytes"])]
    assert c1["deleted_bytes"] == c2["deleted_bytes"] == 0 and u["deleted_bytes"] == 0
    assert u["total_bytes"] == a["bytes"] + b["bytes"]

    vault.delete_point(inc2, soft_delete_days=14, by="vault delete")  # soft: its bytes move to deleted
    u = usage.breakdown(vault)
    a = u["vms"][VM]
    c2 = a["chains"][0]
    assert (c2["points"], c2["bytes"], c2["deleted_points"], c2["deleted_bytes"]) == (
        1, _du(full2.path), 1, _du(inc2.path))  # fmt: skip
    assert a["deleted_bytes"] == u["deleted_bytes"] == _du(inc2.path) and a["points"] == 4

    assert main(["vault", "usage", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["vms"][VM]["chains"] == a["chains"]
    assert main(["vault", "usage"]) == 0
    out = capsys.readouterr().out
    assert "chains" in out
    assert sum(1 for line in out.splitlines() if first[0].point_id in line and first[2].point_id in line) == 1
