"""`vmbackup serve` runs the notifier: a failed job in the DB reaches the local webhook receiver once, and the
notifier stops with serve; an invalid config stops serve from starting (with the file:line error)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from controller import db, settings
from controller.jobs.store import JobStore
from controller.notify.exceptions import NotifyConfigInvalid
from controller.scheduling.serve import Runners, ServeOptions, Server
from tests.helpers import made_up_registration
from tests.notify.helpers import SECRET, job, webhook_receiver


def _server(home: settings.Settings) -> Server:
    """A serve with housekeeping off (nothing is protected, so it plans nothing)."""
    return Server(home, ServeOptions(prune_every=timedelta(0), verify_every=timedelta(0)), Runners())


def test_serve_sends_incidents_in_the_background(private_settings: settings.Settings) -> None:
    """The notifier's first pass runs at start; its next passes (every 1s here) send nothing new."""
    home = private_settings
    (home.home / "hook.secret").write_bytes(SECRET)
    job(JobStore(db.connect(home.db_path)), made_up_registration("web1").vm_uuid, "web1", fail=True)
    with webhook_receiver() as rec:
        home.config_path.write_text(
            f"notify:\n  every: 1s\n  channels:\n    - {{name: hook, type: webhook, url: '{rec.url}', "
            "secret_file: hook.secret}\n"
        )
        server = _server(home)
        server.start()
        try:
            deadline = time.monotonic() + 10
            while not rec.got and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.2)  # two more passes
        finally:
            server.shutdown()
        assert [b["event"] for b in rec.bodies()] == ["job_failed"]
    assert not any(t.name == "vmbackup-notify" for t in threading.enumerate())


def test_invalid_config_stops_serve_at_start(private_settings: settings.Settings) -> None:
    """A typo in the notify section: serve refuses to start and names the line."""
    private_settings.config_path.write_text("notify:\n  channels:\n    - {name: x, type: pager}\n")
    with pytest.raises(NotifyConfigInvalid, match=r"config.yaml:3: field 'notify.channels\[0\].type'"):
        _server(private_settings).start()
    private_settings.config_path.unlink()
    ok = _server(private_settings)  # the failed start released the serve lock
    ok.start()
    ok.shutdown()
