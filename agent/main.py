"""`vmbackup-agent --config PATH`: thaw what a dead predecessor left frozen, start the thaw guard, serve gRPC over
mTLS, thaw everything on SIGTERM/SIGINT.

Everything the freeze/thaw path needs is imported here at startup and bytecode writing is off, so nothing
lazily writes a .pyc (or a log file) to a filesystem the agent froze. Logs go to stderr (journald).

The agent is Linux-only (FIFREEZE/FITHAW through fcntl): on any other OS it says so and exits with
:data:`EXIT_UNSUPPORTED_OS` before importing anything Linux-specific. Windows guests are quiesced by the QEMU guest
agent's VSS provider instead: `vmbackup register VM --quiescer qga`.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True

#: exit status of the agent started on an OS other than Linux
EXIT_UNSUPPORTED_OS = 3


def require_linux(platform: str = sys.platform) -> None:
    """Exit with EXIT_UNSUPPORTED_OS and a clear error unless ``platform`` is Linux."""
    if not platform.startswith("linux"):
        print(
            f"vmbackup-agent: error: unsupported OS {platform!r}: the vmbackup agent runs in Linux guests only\n"
            "  remediation: back up this VM through the QEMU guest agent instead (Windows: install the virtio-win "
            "guest tools, which include qemu-guest-agent and its VSS provider), then on the controller: "
            "vmbackup register VM --quiescer qga",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_UNSUPPORTED_OS)


require_linux()  # before the imports below: they need fcntl, which only exists on POSIX

import argparse  # noqa: E402
import atexit  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402

from agent import __version__  # noqa: E402
from agent.config import DEFAULT_CONFIG_PATH, check_tls_files, load_config  # noqa: E402
from agent.exceptions import AgentError  # noqa: E402
from agent.freeze import FreezeManager  # noqa: E402
from agent.info import read_host_facts  # noqa: E402
from agent.quiesce import select_quiescer  # noqa: E402
from agent.server import build_server  # noqa: E402
from agent.service import AgentService  # noqa: E402
from agent.thawguard import ThawGuard, thaw_all_eligible  # noqa: E402

log = logging.getLogger("vmbackup.agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: --config, --version."""
    p = argparse.ArgumentParser(prog="vmbackup-agent", description="vmbackup guest agent")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                   help="YAML config (default: %(default)s)")
    p.add_argument("--version", action="version", version=f"vmbackup-agent {__version__}")
    return p.parse_args(argv)


def thaw_at_start() -> None:
    """Thaw whatever a killed predecessor left frozen, before this process writes anything."""
    was_frozen, errors = thaw_all_eligible()
    if was_frozen:
        log.warning("thawed at start (left frozen by an agent that died): %s", was_frozen)
    for e in errors:
        log.error("thaw at start: %s", e)


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; exit 2 on a bad config."""
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="vmbackup-agent %(levelname)s %(message)s")
    thaw_at_start()
    guard = ThawGuard()
    try:
        cfg = load_config(args.config)
        check_tls_files(cfg)
        manager = FreezeManager(select_quiescer(cfg, guard), cfg.freeze_timeout_s, cfg.max_freeze_timeout_s)
        server, port = build_server(cfg, AgentService(manager, read_host_facts()))
    except AgentError as exc:
        print(f"vmbackup-agent: error: {exc}\n  remediation: {exc.remediation}", file=sys.stderr)
        return 2
    try:
        guard.start()
    except OSError as exc:  # each Freeze starts it again or is refused
        log.error("thaw guard did not start: %s", exc)
    atexit.register(guard.close)
    stop = threading.Event()
    atexit.register(manager.shutdown, "exit")  # runs before guard.close (atexit is LIFO)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        """Ask the main loop to thaw and stop."""
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("listening on %s:%d (version %s, quiescer %s)", cfg.listen_address, port, __version__,
             manager.quiescer.name)
    while not stop.wait(0.5):
        pass
    log.info("stopping: thawing first")
    manager.shutdown("signal")
    server.stop(grace=2).wait(5)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
