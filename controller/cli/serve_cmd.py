"""`vmbackup serve`: run scheduled backups, retention and vault verification until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse

from controller import settings as settings_mod
from controller.cli import output
from controller.errors import InvalidArgument
from controller.jobs.model import parse_duration


def _positive(text: str) -> int:
    """An int >= 1 for the concurrency bounds."""
    n = int(text)
    if n < 1:
        raise InvalidArgument(f"{text} is not a positive number")
    return n


def _show_token(args: argparse.Namespace) -> int:
    """Print the web token (and where it lives)."""
    from controller.web.token import load_or_create, token_path

    s = settings_mod.load()
    token = load_or_create(s)
    if args.json:
        output.print_json({"token": token, "path": str(token_path(s))})
    else:
        print(token)
    return 0


def run(args: argparse.Namespace) -> int:
    """Start the serve loop (blocks); exit 0 after a graceful stop. --show-token: print the web token and exit."""
    from controller.scheduling.serve import ServeOptions, Server, configure_logging  # lazy: imports libvirt layers

    if args.show_token:
        return _show_token(args)

    if args.tick <= 0:
        raise InvalidArgument(f"--tick must be positive, got {args.tick}")
    opts = ServeOptions(
        tick_s=args.tick,
        max_jobs=args.max_jobs,
        max_per_host=args.max_per_host,
        grace_s=args.grace,
        prune_every=parse_duration(args.prune_every),
        verify_every=parse_duration(args.verify_every),
        once=args.once,
        metrics=args.metrics,
        http=args.http,
        http_public=args.http_public,
    )
    configure_logging()
    return Server(settings_mod.load(), opts).serve()


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `serve`."""
    p = sub.add_parser(
        "serve",
        help="run due backups, retention pruning and vault verification on schedule (until SIGTERM/SIGINT)",
        epilog=output.examples(
            "vmbackup serve",
            "vmbackup serve --metrics 127.0.0.1:9470 --http 127.0.0.1:8470",
            "vmbackup serve --show-token",
            "vmbackup serve --once --max-jobs 4",
        ),
    )
    p.add_argument("--tick", type=float, default=5.0, help="seconds between planning passes (default 5)")
    p.add_argument("--max-jobs", type=_positive, default=2, help="concurrent tasks overall (default 2)")
    p.add_argument("--max-per-host", type=_positive, default=1, help="concurrent tasks per libvirt host (default 1)")
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="on SIGTERM, seconds jobs may run on before being cancelled (default 60)",
    )
    p.add_argument("--prune-every", default="24h", help="retention prune interval, e.g. 24h; 0s disables (default 24h)")
    p.add_argument("--verify-every", default="24h", help="vault verify interval, e.g. 7d; 0s disables (default 24h)")
    p.add_argument("--once", action="store_true", help="one planning pass: start what is due, wait for it, exit")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9470 (no auth: keep it local; "
        "default: off)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve the read-only web dashboard at http://HOST:PORT/, e.g. 127.0.0.1:8470; a token is required "
        "(--show-token); a loopback address unless --http-public (default: off)",
    )
    p.add_argument(
        "--http-public",
        action="store_true",
        help="allow --http on an address other machines can reach (plain HTTP: put TLS in front; default: off)",
    )
    p.add_argument(
        "--show-token",
        action="store_true",
        help="print the web dashboard's token (created in $VMBACKUP_HOME/web-token, mode 0600, if none) and exit",
    )
    output.add_json_flag(p)
    p.set_defaults(func=run)
