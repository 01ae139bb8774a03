"""`vmbackup vault verify [POINT] [--json]`, `vmbackup vault usage [--json]` and `vmbackup vault delete POINT`."""

from __future__ import annotations

import argparse

from controller.cli import output, vault_protect, vault_usage
from controller.cli.points_cmd import human_size
from controller.errors import VmBackupError
from controller.vault import RecoveryPoint, Vault, VerifyResult, usage
from controller.vault.exceptions import ManifestInvalid
from controller.vault.verdicts import record_verify


def run_verify(args: argparse.Namespace) -> int:
    """Verify one point or all, recording each outcome on the point; exit 1 when any point is corrupt."""
    v = Vault()
    results: list[VerifyResult] = []
    if args.point:
        try:
            p = v.get_point(args.point)
        except ManifestInvalid as e:  # unreadable, or its ids differ from its directories
            results.append(VerifyResult(args.point, "", "", error=e.message))
        else:
            results.append(v.verify(p))
            _record(v, p, results[-1])
    else:  # each point separately; a bad point or VM directory never stops the others
        results = v.verify_all(on_point=lambda p, res: _record(v, p, res))
    bad = [r for r in results if not r.ok]
    warned = [r for r in results if r.ok and r.warnings]
    if args.json:
        output.print_json({"ok": not bad, "points": [r.to_dict() for r in results]})
    else:
        rows = []
        for r in results:
            what = [r.error] if r.error else []
            what += r.problems + [f"{d.target}: {d.status} {d.detail}".strip() for d in r.disks if d.status != "ok"]
            what += [f"warning: {w}" for w in r.warnings]
            result = "CORRUPT" if not r.ok else "ok (warning)" if r.warnings else "ok"
            rows.append([r.point_id or "-", r.vm_name or r.vm_uuid, result, ",".join(r.bad_disks), "; ".join(what)])
        output.table("vault verify", ["point", "VM", "result", "bad disks", "detail"], rows)
        print(f"{len(results)} point(s) checked, {len(bad)} corrupt, {len(warned)} with warnings")
    return 1 if bad else 0


def _record(v: Vault, p: RecoveryPoint, res: VerifyResult) -> None:
    """Store the outcome on the point (retention keeps the newest verified point); warn if that fails."""
    try:
        record_verify(v, p, res)
    except (VmBackupError, OSError) as e:
        output.err_console.print(f"warning: could not record the verify result on {p.point_id}: {e}", markup=False)


def run_delete(args: argparse.Namespace) -> int:
    """Delete one point: soft-deleted (kept soft_delete_days, see recycle.py), or with soft_delete_days 0 at once;
    when another point is built on it, it is merged into that child (said in the output)."""
    from controller import settings
    from controller.vault.merge import resume_merges

    v, days = Vault(), settings.load().soft_delete_days
    finished = resume_merges(v)  # merges a crash interrupted (the point asked for may be one of them)
    out = next((o for o in finished if o.point_id == args.point), None) or v.delete_point(
        v.get_point(args.point), days, by="vault delete"
    )
    if args.json:
        output.print_json(out.to_dict())
        return 0
    for o in finished:
        if o is not out:
            print(f"finished an interrupted merge: {o.describe()}")
    print(out.describe())
    return 0


def run_usage(args: argparse.Namespace) -> int:
    """Bytes per VM and in total, then per chain (controller/vault/usage.py)."""
    u = usage.breakdown(Vault())
    if args.json:
        output.print_json(u)
        return 0
    rows = [
        [uuid, e["vm_name"], e["points"], human_size(e["bytes"]), human_size(e["partial_bytes"]),
         f"{e['deleted_points']}, {human_size(e['deleted_bytes'])}"]
        for uuid, e in u["vms"].items()
    ]  # fmt: skip
    rows.append(["total", "", sum(e["points"] for e in u["vms"].values()), human_size(u["total_bytes"]), "",
                 human_size(u["deleted_bytes"])])  # fmt: skip
    columns = ["VM uuid", "name", "points", "size", "partial (.tmp)", "soft-deleted"]
    output.table(f"vault {u['vault']}", columns, rows)
    if u["free_bytes"] is not None:
        print(f"free: {human_size(u['free_bytes'])}")
    vault_usage.print_chains(u)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `vault verify`, `vault usage` and `vault delete` (and the subcommands of vault_recycle.py)."""
    from controller.cli import vault_keys, vault_recycle

    p = sub.add_parser(
        "vault",
        help="check and measure the vault",
        epilog=output.examples(
            "vmbackup vault verify",
            "vmbackup vault usage",
            "vmbackup vault delete 20261129T160102Z-3fa9c1",
            "vmbackup vault encryption enable",
        ),
    )
    vs = p.add_subparsers(dest="vault_command", metavar="SUBCOMMAND", required=True)
    ver = vs.add_parser(
        "verify",
        help="recompute checksums and run qemu-img check (exit 1 if anything is corrupt)",
        epilog=output.examples("vmbackup vault verify", "vmbackup vault verify 20261129T160102Z-3fa9c1 --json"),
    )
    ver.add_argument("point", nargs="?", metavar="POINT", help="one point id (default: every point)")
    output.add_json_flag(ver)
    ver.set_defaults(func=run_verify)
    use = vs.add_parser(
        "usage", help="bytes used per VM and in total", epilog=output.examples("vmbackup vault usage --json")
    )
    output.add_json_flag(use)
    use.set_defaults(func=run_usage)
    dele = vs.add_parser(
        "delete",
        help="soft-delete one point (purged after soft_delete_days; merged into the point built on it then)",
        epilog=output.examples("vmbackup vault delete 20261129T160102Z-3fa9c1"),
    )
    dele.add_argument("point", metavar="POINT", help="the point id (`vmbackup points`)")
    output.add_json_flag(dele)
    dele.set_defaults(func=run_delete)
    vault_keys.add_subparsers(vs)  # vault encryption, vault key
    vault_recycle.add_subparsers(vs)  # vault undelete, vault purge
    vault_protect.add_subparsers(vs)
