"""`vmbackup policy create|list|show|delete`: backup policies (schedule, retention, consistency, limits)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from controller.cli import output
from controller.policies import store
from controller.policies.exceptions import PolicyInvalid
from controller.policies.model import Policy
from controller.policies.parse import parse_file, parse_text, to_yaml
from controller.state import open_state

FLAG_FIELDS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "max_age")


def _flags_doc(args: argparse.Namespace) -> dict[str, Any]:
    """The policy document the flags describe (validated by the same parser as files)."""
    sched: dict[str, Any] = {}
    if args.daily:
        sched["daily"] = args.daily
    if args.weekly:
        sched["weekly"] = {"days": args.weekly.split(","), "at": args.at or ""}
    if args.hourly is not None:
        sched["hourly"] = {"every": args.hourly, "minute": args.minute or 0}
    if args.every_minutes is not None:
        sched["every_minutes"] = args.every_minutes
    if args.timezone:
        sched["timezone"] = args.timezone
    doc: dict[str, Any] = {"name": args.name, "schedule": sched}
    ret = {k: getattr(args, k) for k in FLAG_FIELDS if getattr(args, k) is not None}
    if ret:
        doc["retention"] = ret
    if args.consistency:
        doc["consistency"] = args.consistency
    if args.boot_check_every is not None:
        doc["boot_check_every"] = args.boot_check_every
    lim = {
        k: getattr(args, k) for k in ("max_concurrent_jobs", "bandwidth_mbps") if getattr(args, k) is not None
    }
    if lim:
        doc["limits"] = lim
    if args.full_every is not None:
        doc["full_every"] = args.full_every
    return doc


def policy_from_flags(args: argparse.Namespace) -> Policy:
    """Build and validate a policy from command-line flags; errors name the flag."""
    try:
        return parse_text(yaml.safe_dump(_flags_doc(args), sort_keys=False), "command line")[0]
    except PolicyInvalid as e:
        field = str(e.details.get("field") or "")
        leaf = re.sub(r"^(schedule|retention|limits)\.", "", field).replace("weekly.days", "weekly")
        flag = "--" + leaf.replace("weekly.at", "at").replace("hourly.every", "hourly").replace("_", "-")
        problem = e.message.split(": ", 2)[-1] if ": field" in e.message else e.message
        if field == "schedule":
            flag = "--daily/--weekly/--hourly/--every-minutes"
        raise PolicyInvalid(f"{flag}: {problem}", details=e.details) from e


def run_create(args: argparse.Namespace) -> int:
    """Import policies from a YAML file, or create one from flags."""
    if args.file:
        if args.name:
            raise PolicyInvalid("give either --file or a NAME with flags, not both")
        policies = parse_file(args.file)
        # one policy keeps its file text (comments and all); several are stored one YAML text each
        texts = [to_yaml(p) for p in policies] if len(policies) > 1 else [Path(args.file).read_text("utf-8")]
    elif args.name:
        policies = [policy_from_flags(args)]
        texts = [to_yaml(policies[0])]
    else:
        raise PolicyInvalid("give a policy NAME with schedule flags (e.g. --daily 22:00), or --file FILE")
    rows = []
    with open_state() as st:
        for p, text in zip(policies, texts, strict=True):
            replaced = store.save_policy(st.db, p, text, replace=args.replace)
            rows.append({"name": p.name, "action": "replaced" if replaced else "created", **p.to_dict()})
    if args.json:
        output.print_json(rows)
    else:
        for r, p in zip(rows, policies, strict=True):
            print(
                f"{r['action']} policy {p.name}: {p.schedule.describe()}; keep {p.retention.describe()}; "
                f"{p.describe_chain()}"
            )
    return 0


def _summary(sp: store.StoredPolicy, users: int) -> list[Any]:
    """One list row."""
    p = sp.policy
    return [
        p.name,
        p.schedule.describe(),
        p.retention.describe(),
        p.min_consistency or "-",
        p.boot_check_every or "-",
        p.describe_chain(),
        users,
    ]


def run_list(args: argparse.Namespace) -> int:
    """List policies with their VM counts."""
    with open_state() as st:
        pols = store.list_policies(st.db)
        users = {p.policy.name: len(store.list_protections(st.db, p.policy.name, store.PROTECTED)) for p in pols}
    if args.json:
        output.print_json([{**p.to_dict(), "protected_vms": users[p.policy.name]} for p in pols])
        return 0
    cols = ["policy", "schedule", "retention", "min consistency", "boot-check every", "fulls", "VMs"]
    empty = "no policies yet: vmbackup policy create NAME --daily HH:MM (or --file F)"
    output.table("policies", cols, [_summary(p, users[p.policy.name]) for p in pols], empty=empty)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """One policy: its YAML and the VMs bound to it with their status."""
    with open_state() as st:
        sp = store.get_policy(st.db, args.name)
        prots = store.list_protections(st.db, args.name)
        vms = [{**p.to_dict(), "status": store.status_text(p, len(st.vault.list_points(p.vm_uuid)))} for p in prots]
    if args.json:
        output.print_json({**sp.to_dict(), "vms": vms})
        return 0
    print(sp.yaml.rstrip())
    print(f"# backups: {sp.policy.describe_chain()}")
    output.table(
        f"VMs bound to {args.name}",
        ["VM", "uuid", "status", "since"],
        [[v["vm_name"], v["vm_uuid"], v["status"], v["since"]] for v in vms],
        empty=f"no VMs bound to {args.name}: vmbackup protect VM --policy {args.name}",
    )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """Delete a policy (refused while VMs are protected by it)."""
    with open_state() as st:
        store.delete_policy(st.db, args.name)
    print(f"deleted policy {args.name}")
    return 0


def _create_parser(ps: Any) -> None:
    """`policy create`."""
    c = ps.add_parser(
        "create",
        help="create a policy from flags, or import policies from a YAML file",
        epilog=output.examples(
            "vmbackup policy create gold --daily 22:00 --keep-daily 7 --keep-weekly 4 --full-every 7d",
            "vmbackup policy create fast --every-minutes 15 --keep-last 8 --consistency FILE_SYSTEM",
            "vmbackup policy create --file policies.yaml --replace",
        ),
    )
    c.add_argument("name", nargs="?", help="policy name (with flags)")
    c.add_argument("--file", "-f", help="YAML file with one or several policies")
    c.add_argument("--replace", action="store_true", help="overwrite a policy of the same name")
    g = c.add_argument_group("schedule (one of)")
    g.add_argument("--daily", metavar="HH:MM", help="every day at HH:MM (in --timezone)")
    g.add_argument("--weekly", metavar="DAYS", help="e.g. mon,thu (with --at HH:MM)")
    g.add_argument("--at", metavar="HH:MM", help="time of --weekly")
    g.add_argument("--hourly", type=int, metavar="N", help="every N hours (with --minute M)")
    g.add_argument("--minute", type=int, metavar="M", help="minute of the hour of --hourly (default 0)")
    g.add_argument("--every-minutes", type=int, metavar="N", help="every N minutes (tests, demos)")
    g.add_argument("--timezone", metavar="TZ", help="IANA zone, default UTC")
    r = c.add_argument_group("retention")
    for k in FLAG_FIELDS[:-1]:
        unit = k.removeprefix("keep_")
        what = "the newest N points" if unit == "last" else f"the newest point of each of the last N {unit} periods"
        r.add_argument(f"--{k.replace('_', '-')}", dest=k, type=int, metavar="N", help=f"keep {what} (default 0: off)")
    r.add_argument("--max-age", dest="max_age", metavar="AGE", help="e.g. 90d, 12w, 36h")
    c.add_argument(
        "--consistency", help="minimum: APPLICATION | FILE_SYSTEM | CRASH (default: none; below it a backup fails)"
    )
    c.add_argument(
        "--boot-check-every", type=int, metavar="N", help="boot-check every Nth point (default: never)"
    )
    c.add_argument(
        "--max-concurrent-jobs", type=int, metavar="N", help="this policy's jobs at once (default: serve's limits)"
    )
    c.add_argument("--bandwidth-mbps", type=float, metavar="MBPS", help="copy rate limit (default: unlimited)")
    c.add_argument(
        "--full-every",
        metavar="N|Nd",
        help="a periodic full: every Nth backup (7) or when the chain's full is N days old (7d); "
        "default: incremental forever",
    )
    output.add_json_flag(c)
    c.set_defaults(func=run_create)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `policy` and its subcommands."""
    p = sub.add_parser(
        "policy",
        help="backup policies: create, list, show, delete",
        epilog=output.examples(
            "vmbackup policy create gold --daily 22:00 --keep-daily 7",
            "vmbackup policy list",
            "vmbackup policy show gold",
        ),
    )
    ps = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    _create_parser(ps)
    lst = ps.add_parser(
        "list", help="list policies", epilog=output.examples("vmbackup policy list", "vmbackup policy list --json")
    )
    output.add_json_flag(lst)
    lst.set_defaults(func=run_list)
    sh = ps.add_parser(
        "show", help="show a policy and its VMs", epilog=output.examples("vmbackup policy show gold")
    )
    sh.add_argument("name", metavar="NAME", help="policy name (see `vmbackup policy list`)")
    output.add_json_flag(sh)
    sh.set_defaults(func=run_show)
    d = ps.add_parser(
        "delete",
        help="delete a policy (refused while VMs use it)",
        epilog=output.examples("vmbackup policy delete gold"),
    )
    d.add_argument("name", metavar="NAME", help="policy name (see `vmbackup policy list`)")
    d.set_defaults(func=run_delete)
