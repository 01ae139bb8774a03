"""`vmbackup notify test [--channel NAME]`, `notify check`, `notify list [--all]`: alerts by webhook and email.

The channels and rules are the `notify` section of $VMBACKUP_HOME/config.yaml (controller/notify/config.py);
`vmbackup serve` runs the same pass as `notify check` every `notify.every`.
"""

from __future__ import annotations

import argparse

from controller import settings as settings_mod
from controller.cli import output


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `notify` with its subcommands."""
    p = sub.add_parser(
        "notify",
        help="notifications: send a test message, evaluate incidents now, list incidents",
        description="Alerts by webhook (HMAC-signed JSON) and email (SMTP, STARTTLS), configured in the notify "
        "section of $VMBACKUP_HOME/config.yaml.",
        epilog=output.examples("vmbackup notify test --channel oncall", "vmbackup notify list --all"),
    )
    ps = p.add_subparsers(dest="notify_command", metavar="SUBCOMMAND", required=True)
    t = ps.add_parser(
        "test",
        help="send a test message to every channel (or one); exit 1 if one fails",
        epilog=output.examples("vmbackup notify test", "vmbackup notify test --channel oncall --json"),
    )
    t.add_argument("--channel", metavar="NAME", help="only this channel (default: all)")
    output.add_json_flag(t)
    t.set_defaults(func=run_test)
    c = ps.add_parser(
        "check",
        help="one pass now: evaluate incidents, send due messages and digests",
        epilog=output.examples("vmbackup notify check"),
    )
    output.add_json_flag(c)
    c.set_defaults(func=run_check)
    ls = ps.add_parser(
        "list",
        help="open incidents (with --all: also those resolved in the last 30 days)",
        epilog=output.examples("vmbackup notify list", "vmbackup notify list --all --json"),
    )
    ls.add_argument("--all", action="store_true", help="include resolved incidents (default: open only)")
    output.add_json_flag(ls)
    ls.set_defaults(func=run_list)


def run_test(args: argparse.Namespace) -> int:
    """Send the test message; 0 if every channel took it."""
    from controller.notify.notifier import Notifier

    results = Notifier(settings_mod.load()).send_test(args.channel)
    if args.json:
        output.print_json(results)
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['channel']}: sent ({r['attempts']} attempt(s), {r['seconds']:.2f} s)")
            else:
                print(f"{r['channel']}: FAILED {r['error']['code']}: {r['error']['message']}")
                print(f"  fix: {r['error']['remediation']}")
    return 0 if all(r["ok"] for r in results) else 1


def run_check(args: argparse.Namespace) -> int:
    """One notification pass; 1 if a message could not be delivered."""
    from controller.notify.notifier import Notifier

    rep = Notifier(settings_mod.load()).run_once()
    if args.json:
        output.print_json(rep.to_dict())
    else:
        print(f"{rep.conditions} condition(s); {len(rep.opened)} incident(s) opened, {len(rep.resolved)} resolved")
        for i in rep.opened:
            print(f"  opened {i['id']}: {i['summary']}")
        for i in rep.resolved:
            print(f"  resolved {i['id']}: {i['summary']}")
        for s in rep.sent:
            print(f"  sent {s}")
        for s in rep.digests:
            print(f"  digest sent to {s}")
        for f in rep.failed:
            print(f"  NOT DELIVERED {f}")
    return 1 if rep.failed else 0


def run_list(args: argparse.Namespace) -> int:
    """Print incidents."""
    from datetime import UTC, datetime, timedelta

    from controller.notify import incidents
    from controller.state import open_state

    with open_state() as st:
        found = (
            incidents.recent_incidents(st.db, datetime.now(UTC) - timedelta(days=30))
            if args.all
            else incidents.open_incidents(st.db)
        )
        rows = [{**i.to_dict(), "deliveries": incidents.deliveries(st.db, i.id)} for i in found]
    if args.json:
        output.print_json(rows)
        return 0
    if not rows:
        when = "in the last 30 days" if args.all else "open (vmbackup notify list --all shows the resolved ones)"
        output.hint(f"no incidents {when}")
        return 0
    output.table(
        "incidents",
        ("id", "state", "severity", "kind", "VM", "opened (UTC)", "summary"),
        [
            (r["id"], r["state"], r["severity"], r["kind"], r["vm_name"], r["opened_at"][:19], r["summary"])
            for r in rows
        ],
    )
    return 0
