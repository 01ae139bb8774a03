"""`vmbackup jobs [filters] [--json]`, `vmbackup job show ID [--json]`, `vmbackup job cancel ID`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager

from controller.cli import output
from controller.cli.vms_cmd import size
from controller.jobs.model import JOB_STATES, JOB_TYPES, Job, parse_duration
from controller.jobs.store import JobStore
from controller.state import open_state


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `jobs` (the list) and `job` (show, cancel)."""
    p = sub.add_parser(
        "jobs",
        help="list jobs, newest first",
        epilog=output.examples(
            "vmbackup jobs --since 24h",
            "vmbackup jobs --vm web1 --type backup --state failed",
            "vmbackup jobs --json --limit 500",
        ),
    )
    p.add_argument("--type", choices=JOB_TYPES, help="only jobs of this type (default: all)")
    p.add_argument("--state", choices=JOB_STATES, help="only jobs in this state (default: all)")
    p.add_argument("--vm", metavar="NAME|UUID", help="only this VM's jobs (a filter: no match is an empty list)")
    p.add_argument("--since", metavar="AGE", help="only jobs created within AGE, e.g. 30m, 24h, 7d")
    p.add_argument("--limit", type=int, default=50, help="at most N jobs (default 50)")
    output.add_json_flag(p)
    p.set_defaults(func=run_list)
    j = sub.add_parser(
        "job",
        help="show or cancel one job",
        epilog=output.examples(
            "vmbackup job show 20261129-160102-123456", "vmbackup job cancel 20261129-160102-123456"
        ),
    )
    js = j.add_subparsers(dest="job_command", metavar="SUBCOMMAND", required=True)
    show = js.add_parser(
        "show",
        help="phases with durations, bytes, details, error and remediation",
        epilog=output.examples(
            "vmbackup job show 20261129-160102-123456", "vmbackup job show 20261129-160102-123456 --json"
        ),
    )
    show.add_argument("id", metavar="ID", help="job id (see `vmbackup jobs`)")
    output.add_json_flag(show)
    show.set_defaults(func=run_show)
    cancel = js.add_parser(
        "cancel",
        help="cancel a queued job, or ask a running one to stop at a safe point",
        epilog=output.examples("vmbackup job cancel 20261129-160102-123456"),
    )
    cancel.add_argument("id", metavar="ID", help="job id (see `vmbackup jobs --state in-progress`)")
    output.add_json_flag(cancel)
    cancel.set_defaults(func=run_cancel)


@contextmanager
def _store() -> Iterator[JobStore]:
    """The job store of this controller's state database, open for the command."""
    with open_state() as st:
        yield JobStore(st.db)


def _vm(job: Job) -> str:
    """The VM column: its name, or the host for host-level jobs."""
    return job.vm.name if job.vm else (job.host_uri or "")


def _duration(job: Job) -> str:
    """Seconds as a short string ('' before start)."""
    d = job.duration_s
    return "" if d is None else f"{d:.1f} s"


def run_list(args: argparse.Namespace) -> int:
    """List jobs with the filters."""
    since = parse_duration(args.since) if args.since else None
    with _store() as store:
        jobs = store.list(type=args.type, state=args.state, vm=args.vm, since=since, limit=args.limit)
    if args.json:
        output.print_json([j.to_dict() for j in jobs])
        return 0
    rows = [
        (j.id, j.type, _vm(j), j.state, j.created_at[:19], _duration(j),
         size(j.bytes_total) if j.bytes_total else "", j.error["code"] if j.error else "")
        for j in jobs
    ]  # fmt: skip
    filtered = args.type or args.state or args.vm or args.since
    empty = "no jobs match these filters" if filtered else "no jobs yet: vmbackup discover, vmbackup backup VM"
    cols = ("id", "type", "VM / host", "state", "created (UTC)", "duration", "bytes", "error")
    output.table("jobs", cols, rows, empty=empty)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Show one job in full."""
    with _store() as store:
        job = store.get(args.id)
    if args.json:
        output.print_json(job.to_dict())
        return 0
    vm = f"{job.vm.name} ({job.vm.uuid}) on {job.vm.host_uri}" if job.vm else f"host {job.host_uri}"
    print(f"job {job.id}: {job.type} of {vm}")
    print(
        f"  state {job.state}; created {job.created_at}; started {job.started_at or '-'}; ended {job.ended_at or '-'}"
    )
    print(f"  duration {_duration(job) or '-'}; bytes {job.bytes_total} ({size(job.bytes_total)})")
    if job.cancel_requested:
        print("  cancel requested")
    rows = [
        [p.name, p.state, "" if p.duration_s is None else f"{p.duration_s:.3f} s", size(p.bytes) if p.bytes else ""]
        for p in job.phases
    ]
    output.table("phases", ["phase", "state", "duration", "bytes"], rows)
    warnings = job.details.get("warnings", [])
    details = {k: v for k, v in job.details.items() if k != "warnings"}
    for k, v in details.items():
        print(f"  {k}: {v if isinstance(v, str) else json.dumps(v, default=str)}")
    for w in warnings:
        print(f"  warning: {w}")
    if job.error:
        print(f"  error {job.error['code']}: {job.error['message']}")
        print(f"    fix: {job.error['remediation']}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel a job and say which kind of cancel happened."""
    with _store() as store:
        outcome = store.request_cancel(args.id)
    if args.json:
        output.print_json({"id": args.id, "outcome": outcome})
    elif outcome == "cancelled":
        print(f"job {args.id} was queued: cancelled now")
    else:
        print(f"job {args.id} is running: cancel requested; it stops at its next safe point")
    return 0
