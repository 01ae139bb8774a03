"""Incidents from a real state DB and vault, sent to a local webhook receiver: one message per incident (no
storm), re-armed once resolved, every event kind, retries on a later pass, the daily digest, `notify test`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller import db, settings
from controller.cli.main import main
from controller.jobs.store import JobStore, VmRef
from controller.notify import incidents
from controller.notify.events import rpo, vault_use_percent
from controller.notify.notifier import Notifier
from controller.policies.model import Schedule
from controller.policies.parse import parse_text, to_yaml
from controller.policies.store import bind, save_policy
from controller.vault import Vault
from tests.helpers import made_up_registration
from tests.notify.helpers import SECRET, Receiver, job, point, webhook_receiver

Configure = Callable[..., None]


@pytest.fixture
def rec() -> Iterator[Receiver]:
    """The local webhook receiver."""
    with webhook_receiver() as r:
        yield r


@pytest.fixture
def configure(private_settings: settings.Settings, rec: Receiver) -> Configure:
    """configure(notify_extra_yaml, channel_extra_yaml): a config.yaml with one webhook channel to rec."""
    (private_settings.home / "hook.secret").write_bytes(SECRET)

    def write(extra: str = "", channel: str = "") -> None:
        private_settings.config_path.write_text(
            "notify:\n"
            + extra
            + "  channels:\n    - name: hook\n      type: webhook\n"
            + f"      url: {rec.url}\n      secret_file: hook.secret\n      retries: 0\n      backoff: 1s\n"
            + channel
        )

    return write


def test_failed_job_is_one_message_and_rearms_when_resolved(configure: Configure, rec: Receiver) -> None:
    """The same failing state evaluated twice sends one message; success resolves it; a new failure re-arms."""
    configure(channel="      resolved: true\n")
    home = settings.load()
    conn = db.connect(home.db_path)
    jobs = JobStore(conn)
    vm = made_up_registration("web1").vm_uuid
    failed = job(jobs, vm, "web1", fail=True)
    n = Notifier(home)
    first = n.run_once()
    assert [i["kind"] for i in first.opened] == ["job_failed"] and first.sent
    n.run_once()
    Notifier(home).run_once()  # another notifier (own connection), same DB: still one incident, one message
    (body,) = rec.bodies()
    inc = body["incident"]
    assert body["type"] == "incident" and body["event"] == "job_failed" and inc["vm_name"] == "web1"
    assert inc["subject"] == f"{vm}/backup" and inc["details"]["job_id"] == failed
    assert inc["summary"] == "backup of web1 failed: INTERNAL_ERROR: agent did not answer"
    assert inc["details"]["remediation"]
    assert len(incidents.open_incidents(conn)) == 1

    job(jobs, vm, "web1")  # the next backup succeeds: resolved, announced once
    assert [i["id"] for i in n.run_once().resolved] == [inc["id"]]
    n.run_once()
    assert [b["type"] for b in rec.bodies()] == ["incident", "resolved"]
    assert incidents.open_incidents(conn) == []

    job(jobs, vm, "web1", fail=True)  # re-armed: a new incident, a new message
    again = n.run_once().opened
    assert len(again) == 1 and again[0]["id"] != inc["id"]
    assert [b["type"] for b in rec.bodies()] == ["incident", "resolved", "incident"]


def test_protection_events(configure: Configure, rec: Receiver, tmp_path: Path) -> None:
    """backup missed (with the RPO), consistency below the policy, chain reset with its reason, boot-check failed;
    all resolved by a good new point."""
    configure()
    home = settings.load()
    conn = db.connect(home.db_path)
    pol = parse_text("name: often\nschedule: {every_minutes: 5}\nconsistency: APPLICATION\n")[0]
    save_policy(conn, pol, to_yaml(pol))
    web, other = made_up_registration("web1").vm_uuid, made_up_registration("db1").vm_uuid
    bind(conn, web, "web1", "often")
    now = datetime.now(UTC)
    conn.execute("UPDATE protections SET since = ?", ((now - timedelta(hours=1)).isoformat(),))
    old = point(
        home,
        tmp_path,
        web,
        "web1",
        now - timedelta(minutes=40),
        "CRASH",
        full_reason="checkpoint vmb-1 is gone from the VM",
    )
    point(
        home,
        tmp_path,
        other,
        "db1",
        now - timedelta(minutes=3),
        boot_check={"result": "failed", "reason": "no console login prompt", "checked_at": now.isoformat()},
    )
    point(home, tmp_path, other, "db1", now - timedelta(minutes=2))  # newer, never boot-checked

    rep = Notifier(home).run_once()
    by_kind = {i["kind"]: i for i in rep.opened}
    assert set(by_kind) == {"backup_missed", "consistency_low", "chain_reset", "boot_check_failed"}, by_kind
    missed = by_kind["backup_missed"]
    assert missed["subject"] == web and missed["details"]["rpo_s"] == 300 and missed["details"]["point_id"] == old
    assert "RPO 5m" in missed["summary"] and missed["details"]["late_s"] > 30 * 60
    low = by_kind["consistency_low"]["details"]
    assert (low["consistency"], low["required"], low["policy"]) == ("CRASH", "APPLICATION", "often")
    assert by_kind["chain_reset"]["summary"].endswith("checkpoint vmb-1 is gone from the VM")
    assert by_kind["boot_check_failed"]["subject"] == other
    assert "no console login prompt" in by_kind["boot_check_failed"]["summary"]
    assert sorted(b["event"] for b in rec.bodies()) == sorted(by_kind)

    point(home, tmp_path, web, "web1", datetime.now(UTC), "APPLICATION", full_reason="--full requested")
    point(home, tmp_path, other, "db1", datetime.now(UTC), boot_check={"result": "passed", "reason": ""})
    rep = Notifier(home).run_once()
    assert rep.opened == [] and {i["kind"] for i in rep.resolved} == set(by_kind)


def test_backup_missed_waits_for_a_running_backup_and_the_grace(configure: Configure, tmp_path: Path) -> None:
    """No point yet: missed only after the first slot + missed_grace; never while a backup of the VM runs."""
    configure(extra="  missed_grace: 10m\n")
    home = settings.load()
    conn = db.connect(home.db_path)
    pol = parse_text("name: hourly\nschedule: {hourly: 1}\n")[0]
    save_policy(conn, pol, to_yaml(pol))
    vm = made_up_registration("web1").vm_uuid
    bind(conn, vm, "web1", "hourly")
    now = datetime.now(UTC).replace(minute=30)
    conn.execute("UPDATE protections SET since = ?", ((now - timedelta(minutes=25)).isoformat(),))
    assert Notifier(home, clock=lambda: now).run_once().opened == []  # the slot at :00 is 30 min ahead
    later = now + timedelta(minutes=45)  # slot :00 passed 15 min ago (> 10 min grace)
    JobStore(conn).create("backup", vm=VmRef(vm, "web1", "qemu:///system"))
    assert Notifier(home, clock=lambda: later).run_once().opened == []  # it is running
    conn.execute("UPDATE jobs SET state = 'cancelled'")
    assert [i["kind"] for i in Notifier(home, clock=lambda: later).run_once().opened] == ["backup_missed"]


def test_rpo_is_the_longest_slot_interval() -> None:
    """daily 24 h, weekly mon+thu 4 days, hourly 4 4 h, every_minutes 5 5 min."""
    assert rpo(Schedule("daily", 22, 0)) == timedelta(hours=24)
    assert rpo(Schedule("weekly", 6, 0, days=(0, 3))) == timedelta(days=4)
    assert rpo(Schedule("hourly", minute=15, every=4)) == timedelta(hours=4)
    assert rpo(Schedule("every_minutes", every=5)) == timedelta(minutes=5)


def test_vault_nearly_full_with_hysteresis(configure: Configure, rec: Receiver) -> None:
    """Threshold 1 %: open (the test filesystem is used); back at 100 %: resolved unless >= 98 % used."""
    home = settings.load()
    Vault(home.vault)._ensure_root()
    pct = vault_use_percent(home.vault)
    assert pct is not None and 1 <= pct < 98, pct
    configure(extra="  vault_full_percent: 1\n")
    (opened,) = Notifier(home).run_once().opened
    assert opened["kind"] == "vault_full" and opened["details"]["used_percent"] == pytest.approx(pct, abs=1)
    configure(extra="  vault_full_percent: 100\n")
    assert [i["kind"] for i in Notifier(home).run_once().resolved] == ["vault_full"]
    assert [b["event"] for b in rec.bodies()] == ["vault_full"]


def test_failed_delivery_is_retried_on_a_later_pass(configure: Configure, rec: Receiver) -> None:
    """The receiver is down for the first pass: the message waits and goes out once on a later pass."""
    configure(extra="  every: 30s\n")
    home = settings.load()
    conn = db.connect(home.db_path)
    job(JobStore(conn), made_up_registration("web1").vm_uuid, "web1", fail=True)
    rec.plan = [500]
    t = datetime.now(UTC)
    first = Notifier(home, clock=lambda: t).run_once()
    assert first.failed and not first.sent and rec.got == []
    assert Notifier(home, clock=lambda: t + timedelta(seconds=5)).run_once().sent == []  # not due yet
    assert len(Notifier(home, clock=lambda: t + timedelta(minutes=2)).run_once().sent) == 1
    Notifier(home, clock=lambda: t + timedelta(minutes=10)).run_once()
    assert len(rec.bodies("incident")) == 1
    (inc,) = incidents.open_incidents(conn)
    (d,) = incidents.deliveries(conn, inc.id)
    assert d["state"] == "sent" and d["attempts"] == 2


def test_daily_digest(configure: Configure, rec: Receiver) -> None:
    """A digest channel gets no immediate message, and one digest a day at digest_at with what is open."""
    configure(extra="  digest_at: '08:00'\n", channel="      send: digest\n")
    home = settings.load()
    job(JobStore(db.connect(home.db_path)), made_up_registration("web1").vm_uuid, "web1", fail=True)
    day = datetime.now(UTC).replace(hour=7, minute=0, second=0, microsecond=0)
    assert Notifier(home, clock=lambda: day).run_once().opened  # incident, but no message: digest only
    assert rec.got == []
    assert Notifier(home, clock=lambda: day + timedelta(minutes=30)).run_once().digests == []  # 07:30
    assert Notifier(home, clock=lambda: day + timedelta(hours=1, minutes=1)).run_once().digests == ["hook"]
    assert Notifier(home, clock=lambda: day + timedelta(hours=5)).run_once().digests == []  # once a day
    (body,) = rec.bodies()
    assert body["type"] == "digest" and body["open"] == 1 and body["incidents"][0]["kind"] == "job_failed"
    assert Notifier(home, clock=lambda: day + timedelta(days=1, hours=1)).run_once().digests == ["hook"]


def test_notify_test_cli(configure: Configure, rec: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    """`vmbackup notify test --json` sends the test message; an unknown channel is an error; a dead one exit 1."""
    configure()
    assert main(["notify", "test", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["channel"] == "hook" and r["ok"] and rec.bodies()[0]["type"] == "test"
    assert main(["notify", "test", "--channel", "nope", "--json"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "NOTIFY_CHANNEL_UNKNOWN"
    rec.plan = [500]
    assert main(["notify", "test", "--channel", "hook"]) == 1
    assert "FAILED NOTIFY_DELIVERY_FAILED" in capsys.readouterr().out


def test_notify_check_and_list_cli(configure: Configure, rec: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    """`notify check` opens and sends; `notify list` shows the open incident with its sent delivery."""
    configure()
    job(JobStore(db.connect(settings.load().db_path)), made_up_registration("web1").vm_uuid, "web1", fail=True)
    assert main(["notify", "check", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [i["kind"] for i in rep["opened"]] == ["job_failed"] and len(rep["sent"]) == 1
    assert main(["notify", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "job_failed" and row["state"] == "open"
    assert [(d["channel"], d["what"], d["state"]) for d in row["deliveries"]] == [("hook", "opened", "sent")]
    assert main(["notify", "check"]) == 0
    assert "0 incident(s) opened" in capsys.readouterr().out and len(rec.got) == 1


def test_notify_test_without_config(private_settings: settings.Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """No config: NOTIFY_NOT_CONFIGURED with what to add."""
    assert main(["notify", "test"]) == 1
    assert "NOTIFY_NOT_CONFIGURED" in capsys.readouterr().err


def test_delivery_to_a_removed_channel_is_given_up(
    private_settings: settings.Settings, configure: Configure, rec: Receiver
) -> None:
    """A pending message whose channel left the config is marked failed at once, not retried forever."""
    configure()
    home = settings.load()
    conn = db.connect(home.db_path)
    job(JobStore(conn), made_up_registration("web1").vm_uuid, "web1", fail=True)
    rec.plan = [500]
    t = datetime.now(UTC)
    assert Notifier(home, clock=lambda: t).run_once().failed
    private_settings.config_path.write_text(private_settings.config_path.read_text().replace("name: hook", "name: h2"))
    (inc,) = incidents.open_incidents(conn)
    rep = Notifier(home, clock=lambda: t + timedelta(hours=1)).run_once()
    assert rep.failed == [f"hook: incident {inc.id} opened: channel no longer configured"]
    (d,) = incidents.deliveries(conn, inc.id)
    assert d["state"] == "failed" and rec.got == []
    assert Notifier(home, clock=lambda: t + timedelta(hours=2)).run_once().failed == []
