"""`vmbackup vault protect POINT [--reason TEXT]` and `vmbackup vault unprotect POINT`.

A protected point (and every point it is built on) cannot be deleted, merged or pruned (POINT_PROTECTED) until
it is unprotected; see controller/vault/protect.py. Registered under `vault` by vault_cmd.py (not a *_cmd
module: no top-level command).
"""

from __future__ import annotations

import argparse

from controller.cli import output
from controller.vault import Vault, protect


def run_protect(args: argparse.Namespace) -> int:
    """Protect one point (a durable record beside it)."""
    v = Vault()
    p = v.get_point(args.point)
    rec = protect.protect(v, p, args.reason or "")
    parents = sorted(pid for pid, why in protect.protectors(v, p.vm_uuid).items() if pid != p.point_id
                     and any(w.endswith(f"point {p.point_id}") for w in why))  # fmt: skip
    if args.json:
        output.print_json({**rec.to_dict(), "implicitly_protected": parents})
        return 0
    print(f"point {p.point_id} of {p.vm_name or p.vm_uuid} is protected: it cannot be deleted or pruned until "
          "`vmbackup vault unprotect` it")  # fmt: skip
    if parents:
        print(f"the points it is built on are protected with it: {', '.join(parents)}")
    return 0


def run_unprotect(args: argparse.Namespace) -> int:
    """Remove the point's protection records (the user's and the policy's)."""
    v = Vault()
    p = v.get_point(args.point)
    gone = protect.unprotect(v, p)
    still = protect.protectors(v, p.vm_uuid, p.point_id).get(p.point_id, [])
    if args.json:
        output.print_json({"point_id": p.point_id, "removed": [r.to_dict() for r in gone], "still_protected": still})
        return 0
    print(f"point {p.point_id}: " + ("unprotected" if gone else "had no protection record of its own"))
    if any(r.holder == "policy" for r in gone):
        print("note: its policy's protect_newest protects it again at the next prune while it is among the newest")
    if still:
        print(f"still protected: {'; '.join(still)}")
    return 0


def add_subparsers(vs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `vault protect` and `vault unprotect` on the `vault` subparsers."""
    pro = vs.add_parser(
        "protect",
        help="protect a point (and the points it is built on) from delete and prune",
        epilog=output.examples("vmbackup vault protect 20261129T160102Z-3fa9c1 --reason 'before the upgrade'"),
    )
    pro.add_argument("point", help="the point id (`vmbackup points`)")
    pro.add_argument("--reason", help="why (shown by `vmbackup points --json` and in refusals)")
    output.add_json_flag(pro)
    pro.set_defaults(func=run_protect)
    unp = vs.add_parser(
        "unprotect",
        help="remove a point's protection (it can be deleted and pruned again)",
        epilog=output.examples("vmbackup vault unprotect 20261129T160102Z-3fa9c1"),
    )
    unp.add_argument("point", help="the point id (`vmbackup points`)")
    output.add_json_flag(unp)
    unp.set_defaults(func=run_unprotect)
