"""The notify section of config.yaml: defaults, both channel types, and file:line:field errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from controller import settings
from controller.notify import config
from controller.notify.config import EmailChannel, WebhookChannel
from controller.notify.exceptions import NotifyConfigInvalid

FULL = """\
other_section: {ignored: true}
notify:
  every: 30s
  missed_grace: 5m
  vault_full_percent: 85
  digest_at: "07:30"
  events: [job_failed, backup_missed, vault_full]
  channels:
    - name: hook
      type: webhook
      url: https://alerts.example.com/x
      secret_file: hook.secret
      retries: 2
      backoff: 2s
      timeout: 5s
    - name: mail
      type: email
      smtp_host: smtp.example.com
      username: vmb
      password: pw
      from: vmbackup@example.com
      to: ops@example.com
      send: both
      resolved: true
      events: [backup_missed]
"""


def test_full_section(tmp_path: Path) -> None:
    """Every field is read; secrets come from a file next to the config; other sections are not ours."""
    (tmp_path / "hook.secret").write_text("s3cret\n")
    cfg = config.parse_text(FULL, "c.yaml", tmp_path)
    assert cfg.every == timedelta(seconds=30) and cfg.missed_grace == timedelta(minutes=5)
    assert cfg.vault_full_percent == 85 and cfg.digest_at == (7, 30)
    hook, mail = cfg.channels
    assert isinstance(hook, WebhookChannel) and hook.secret == b"s3cret" and hook.retries == 2
    assert hook.backoff_s == 2 and hook.timeout_s == 5 and hook.immediate and not hook.digest
    assert hook.events == ("job_failed", "backup_missed", "vault_full")  # the section's events
    assert isinstance(mail, EmailChannel) and mail.smtp_port == 587 and mail.tls == "starttls"
    assert mail.to == ("ops@example.com",) and mail.immediate and mail.digest and mail.resolved
    assert mail.events == ("backup_missed",)


def test_no_file_or_section_means_nothing_configured(private_settings: settings.Settings) -> None:
    """No config.yaml: no channels; a config without notify: the same."""
    assert config.load(private_settings).channels == ()
    private_settings.config_path.write_text("something_else: 1\n")
    assert config.load(private_settings).channels == ()


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        ("notify:\n  evry: 5s\n", 2, "notify.evry", "unknown field"),
        ("notify:\n  every: soon\n", 2, "notify.every", "a number and a unit"),
        ("notify:\n  vault_full_percent: 120\n", 2, "notify.vault_full_percent", "from 1 to 100"),
        ("notify:\n  digest_at: '25:00'\n", 2, "notify.digest_at", "HH:MM"),
        ("notify:\n  events: [job_failed, bad]\n", 2, "notify.events", "unknown event 'bad'"),
        ("notify:\n  channels:\n    - name: a\n      type: pager\n", 4, "notify.channels[0].type", "webhook, email"),
        (
            "notify:\n  channels:\n    - name: a\n      type: webhook\n      url: ftp://x\n      secret: k\n",
            5,
            "notify.channels[0].url",
            "http:// or https://",
        ),
        (
            "notify:\n  channels:\n    - name: a\n      type: webhook\n      url: http://x\n",
            3,
            "notify.channels[0].secret_file",
            "always signed",
        ),
        (
            "notify:\n  channels:\n    - name: a\n      type: email\n      smtp_host: h\n      from: f\n"
            "      to: t\n      username: u\n",
            3,
            "notify.channels[0].username",
            "go together",
        ),
        (
            "notify:\n  channels:\n    - {name: a, type: webhook, url: 'http://x', secret: k}\n"
            "    - {name: a, type: webhook, url: 'http://y', secret: k}\n",
            4,
            "notify.channels[1].name",
            "twice",
        ),
        (
            "notify:\n  channels:\n    - {name: a, type: email, smtp_host: h, from: f, to: t, tls: maybe}\n",
            3,
            "notify.channels[0].tls",
            "starttls, ssl, none",
        ),
    ],
)
def test_errors_name_file_line_and_field(text: str, line: int, field: str, says: str) -> None:
    """Each mistake is reported at its own line with the field's dotted path and what is allowed."""
    with pytest.raises(NotifyConfigInvalid) as e:
        config.parse_text(text, "config.yaml")
    assert e.value.message.startswith(f"config.yaml:{line}: field {field!r}"), e.value.message
    assert says in e.value.message
    assert e.value.details == {"file": "config.yaml", "line": line, "field": field}


def test_bad_yaml_names_the_line() -> None:
    """Broken YAML: the parser's line."""
    with pytest.raises(NotifyConfigInvalid) as e:
        config.parse_text("notify:\n  every: [1\n", "c.yaml")
    assert e.value.message.startswith("c.yaml:3: not valid YAML"), e.value.message


def test_readme_example_parses(tmp_path: Path) -> None:
    """The config example in the README's 'Alerts and metrics' is valid (its secret files made here)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("### Alerts and metrics", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "webhook.secret").write_text("k")
    (tmp_path / "smtp.pass").write_text("p")
    cfg = config.parse_text(block.replace("/etc/vmbackup/", f"{tmp_path}/"), "README.md")
    hook, mail = cfg.channels
    assert isinstance(hook, WebhookChannel) and hook.resolved and hook.secret == b"k"
    assert isinstance(mail, EmailChannel) and mail.digest and mail.immediate and mail.password == "p"
