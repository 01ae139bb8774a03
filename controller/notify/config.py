"""The `notify` section of the controller config ($VMBACKUP_HOME/config.yaml), validated with file:line errors.

Example (every field but the channels' own has a default)::

    notify:
      every: 60s                   # how often `vmbackup serve` evaluates incidents
      missed_grace: 10m            # how late a scheduled backup may be before "backup missed"
      vault_full_percent: 90       # vault filesystem use (%) that raises "vault nearly full"
      job_lookback: 7d             # a failed job older than this with nothing after it no longer counts
      digest_at: "08:00"           # daily digest time, UTC
      events: [job_failed, backup_missed, consistency_low, boot_check_failed, vault_full, chain_reset]
      channels:
        - name: oncall
          type: webhook
          url: https://alerts.example.com/vmbackup
          secret_file: /etc/vmbackup/webhook.secret   # or secret: "..."; the HMAC-SHA256 key
          timeout: 10s
          retries: 3                 # after the first try; waits backoff, 2 x backoff, 4 x backoff, ...
          backoff: 1s
        - name: ops-mail
          type: email
          smtp_host: smtp.example.com
          smtp_port: 587
          tls: starttls              # starttls (default) | ssl | none
          username: vmbackup         # optional, with password_file or password
          password_file: /etc/vmbackup/smtp.pass
          from: vmbackup@example.com
          to: [ops@example.com]
          send: digest               # immediate (default) | digest | both
          resolved: false            # also announce resolved incidents (default false)
          events: [backup_missed]    # this channel's events (default: the section's)

Other top-level sections of config.yaml belong to other parts of the controller and are not read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from controller.errors import InvalidArgument
from controller.jobs.model import parse_duration
from controller.notify.exceptions import NotifyConfigInvalid
from controller.policies.parse import TIME_RE
from controller.settings import Settings

#: Every event kind, in the order messages list them.
EVENT_KINDS = ("job_failed", "backup_missed", "consistency_low", "boot_check_failed", "vault_full", "chain_reset")
SEND_MODES = ("immediate", "digest", "both")
TLS_MODES = ("starttls", "ssl", "none")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TOP_FIELDS = ("every", "missed_grace", "vault_full_percent", "job_lookback", "digest_at", "events", "channels")
COMMON_FIELDS = ("name", "type", "send", "resolved", "events", "timeout", "retries", "backoff", "ca_file")
WEBHOOK_FIELDS = (*COMMON_FIELDS, "url", "secret", "secret_file")
EMAIL_FIELDS = (*COMMON_FIELDS, "smtp_host", "smtp_port", "tls", "username", "password", "password_file", "from", "to")


@dataclass(frozen=True)
class Channel:
    """What every channel has: its name, when it is sent to, which events, and its delivery limits."""

    name: str
    send: str = "immediate"
    resolved: bool = False
    events: tuple[str, ...] = EVENT_KINDS
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 1.0
    ca_file: Path | None = None

    @property
    def immediate(self) -> bool:
        """Whether each incident is sent as it opens."""
        return self.send in ("immediate", "both")

    @property
    def digest(self) -> bool:
        """Whether this channel gets the daily digest."""
        return self.send in ("digest", "both")


@dataclass(frozen=True)
class WebhookChannel(Channel):
    """A JSON POST signed with HMAC-SHA256 (header X-Vmbackup-Signature: sha256=<hex>)."""

    url: str = ""
    secret: bytes = b""


@dataclass(frozen=True)
class EmailChannel(Channel):
    """Plain-text mail through an SMTP server (STARTTLS by default)."""

    smtp_host: str = ""
    smtp_port: int = 587
    tls: str = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str = ""
    to: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotifyConfig:
    """The whole notify section (no file, or no section: no channels, nothing is sent)."""

    channels: tuple[Channel, ...] = ()
    every: timedelta = timedelta(seconds=60)
    missed_grace: timedelta = timedelta(minutes=10)
    vault_full_percent: float = 90.0
    job_lookback: timedelta = timedelta(days=7)
    digest_at: tuple[int, int] = (8, 0)
    events: tuple[str, ...] = EVENT_KINDS
    source: str = ""

    def channel(self, name: str) -> Channel | None:
        """The channel called name, if any."""
        return next((c for c in self.channels if c.name == name), None)


@dataclass
class _Src:
    """Where the YAML came from; builds the file:line errors."""

    source: str
    base: Path = field(default_factory=Path)

    def fail(self, node: yaml.Node, where: str, problem: str) -> NotifyConfigInvalid:
        """An error at node's line: 'FILE:LINE: field notify.WHERE: PROBLEM'."""
        line = node.start_mark.line + 1
        return NotifyConfigInvalid(
            f"{self.source}:{line}: field {where!r}: {problem}",
            details={"file": self.source, "line": line, "field": where},
        )

    def mapping(self, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        """A mapping node as {key: value node}; unknown or duplicate keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, f"must be a mapping with keys {', '.join(allowed)}")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = str(k.value)
            if key not in allowed:
                raise self.fail(k, f"{where}.{key}", f"unknown field; allowed: {', '.join(allowed)}")
            if key in out:
                raise self.fail(k, f"{where}.{key}", "given twice")
            out[key] = v
        return out

    def scalar(self, node: yaml.Node, where: str) -> str:
        """A non-empty scalar's source text."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null" or not node.value.strip():
            raise self.fail(node, where, "must be a single value")
        return str(node.value).strip()

    def strings(self, node: yaml.Node, where: str) -> tuple[str, ...]:
        """A list of scalars (a single scalar counts as a list of one)."""
        if isinstance(node, yaml.ScalarNode):
            return (self.scalar(node, where),)
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, where, "must be a non-empty list")
        return tuple(self.scalar(n, where) for n in node.value)

    def choice(self, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> str:
        """One of allowed."""
        text = self.scalar(node, where)
        if text not in allowed:
            raise self.fail(node, where, f"got {text!r}; allowed: {', '.join(allowed)}")
        return text

    def events(self, node: yaml.Node, where: str) -> tuple[str, ...]:
        """A list of event kinds."""
        kinds = self.strings(node, where)
        for k in kinds:
            if k not in EVENT_KINDS:
                raise self.fail(node, where, f"unknown event {k!r}; allowed: {', '.join(EVENT_KINDS)}")
        return kinds

    def duration(self, node: yaml.Node, where: str, minimum_s: float = 1.0) -> timedelta:
        """A duration such as 30s, 10m, 7d, at least minimum_s."""
        text = self.scalar(node, where)
        try:
            td = parse_duration(text)
        except InvalidArgument:
            raise self.fail(node, where, f"got {text!r}; allowed: a number and a unit s/m/h/d/w, e.g. 10m") from None
        if td.total_seconds() < minimum_s:
            raise self.fail(node, where, f"got {text!r}; must be at least {minimum_s:g}s")
        return td

    def integer(self, node: yaml.Node, where: str, lo: int, hi: int) -> int:
        """A whole number in [lo, hi]."""
        text = self.scalar(node, where)
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise self.fail(node, where, f"got {text!r}; allowed: a whole number from {lo} to {hi}")
        return int(text)

    def boolean(self, node: yaml.Node, where: str) -> bool:
        """true or false."""
        text = self.scalar(node, where).lower()
        if text not in ("true", "false", "yes", "no"):
            raise self.fail(node, where, f"got {text!r}; allowed: true, false")
        return text in ("true", "yes")

    def path(self, node: yaml.Node, where: str) -> Path:
        """A file path (relative ones are relative to the config file's directory); it must exist."""
        p = Path(self.scalar(node, where))
        p = p if p.is_absolute() else self.base / p
        if not p.is_file():
            raise self.fail(node, where, f"no such file {str(p)!r}")
        return p

    def secret(self, fields: dict[str, yaml.Node], inline: str, file_key: str, where: str) -> str | None:
        """A secret given inline or (better) in a file of its own; None when neither is given."""
        if inline in fields and file_key in fields:
            raise self.fail(fields[file_key], f"{where}.{file_key}", f"give {inline} or {file_key}, not both")
        if file_key in fields:
            p = self.path(fields[file_key], f"{where}.{file_key}")
            text = p.read_text(encoding="utf-8").strip()
            if not text:
                raise self.fail(fields[file_key], f"{where}.{file_key}", f"{p} is empty")
            return text
        return self.scalar(fields[inline], f"{where}.{inline}") if inline in fields else None


def load(settings: Settings) -> NotifyConfig:
    """The notify section of the settings' config file (a missing file or section: nothing configured)."""
    path = settings.config_path
    if not path.is_file():
        return NotifyConfig(source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise NotifyConfigInvalid(f"cannot read {path}: {e}", details={"file": str(path)}) from e
    return parse_text(text, str(path), path.parent)


def parse_text(text: str, source: str = "<text>", base: Path | None = None) -> NotifyConfig:
    """The notify section of a config YAML text."""
    src = _Src(source, base or Path.cwd())
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise NotifyConfigInvalid(f"{source}{line}: not valid YAML: {e}", details={"file": source}) from e
    if root is None:
        return NotifyConfig(source=source)
    if not isinstance(root, yaml.MappingNode):
        raise src.fail(root, "", "the config must be a mapping (e.g. notify: {...})")
    section = next((v for k, v in root.value if str(k.value) == "notify"), None)
    if section is None or (isinstance(section, yaml.ScalarNode) and section.tag == "tag:yaml.org,2002:null"):
        return NotifyConfig(source=source)
    return _section(src, section)


def _section(src: _Src, node: yaml.Node) -> NotifyConfig:
    """The notify mapping."""
    f = src.mapping(node, "notify", TOP_FIELDS)
    defaults = NotifyConfig()
    events = src.events(f["events"], "notify.events") if "events" in f else EVENT_KINDS
    digest_at = defaults.digest_at
    if "digest_at" in f:
        m = TIME_RE.match(src.scalar(f["digest_at"], "notify.digest_at"))
        if not m:
            raise src.fail(f["digest_at"], "notify.digest_at", "allowed: a time HH:MM (UTC) from 00:00 to 23:59")
        digest_at = (int(m.group(1)), int(m.group(2)))
    channels: list[Channel] = []
    if "channels" in f:
        if not isinstance(f["channels"], yaml.SequenceNode):
            raise src.fail(f["channels"], "notify.channels", "must be a list of channels")
        for i, ch in enumerate(f["channels"].value):
            c = _channel(src, ch, f"notify.channels[{i}]", events)
            if any(o.name == c.name for o in channels):
                raise src.fail(ch, f"notify.channels[{i}].name", f"channel name {c.name!r} given twice")
            channels.append(c)
    pct = defaults.vault_full_percent
    if "vault_full_percent" in f:
        pct = float(src.integer(f["vault_full_percent"], "notify.vault_full_percent", 1, 100))
    return NotifyConfig(
        channels=tuple(channels),
        every=src.duration(f["every"], "notify.every") if "every" in f else defaults.every,
        missed_grace=src.duration(f["missed_grace"], "notify.missed_grace", 0)
        if "missed_grace" in f
        else defaults.missed_grace,
        vault_full_percent=pct,
        job_lookback=src.duration(f["job_lookback"], "notify.job_lookback")
        if "job_lookback" in f
        else defaults.job_lookback,
        digest_at=digest_at,
        events=events,
        source=src.source,
    )


def _channel(src: _Src, node: yaml.Node, where: str, events: tuple[str, ...]) -> Channel:
    """One channel entry (webhook or email)."""
    if not isinstance(node, yaml.MappingNode):
        raise src.fail(node, where, "must be a mapping with name and type")
    kind_node = next((v for k, v in node.value if str(k.value) == "type"), None)
    if kind_node is None:
        raise src.fail(node, f"{where}.type", "missing; allowed: webhook, email")
    kind = src.choice(kind_node, f"{where}.type", ("webhook", "email"))
    f = src.mapping(node, where, WEBHOOK_FIELDS if kind == "webhook" else EMAIL_FIELDS)
    if "name" not in f:
        raise src.fail(node, f"{where}.name", "missing")
    name = src.scalar(f["name"], f"{where}.name")
    if not NAME_RE.match(name):
        raise src.fail(f["name"], f"{where}.name", "letters, digits, '_', '.', '-' (up to 63 characters)")
    common: dict[str, Any] = {
        "name": name,
        "send": src.choice(f["send"], f"{where}.send", SEND_MODES) if "send" in f else "immediate",
        "resolved": src.boolean(f["resolved"], f"{where}.resolved") if "resolved" in f else False,
        "events": src.events(f["events"], f"{where}.events") if "events" in f else events,
        "timeout_s": src.duration(f["timeout"], f"{where}.timeout").total_seconds() if "timeout" in f else 10.0,
        "retries": src.integer(f["retries"], f"{where}.retries", 0, 10) if "retries" in f else 3,
        "backoff_s": src.duration(f["backoff"], f"{where}.backoff").total_seconds() if "backoff" in f else 1.0,
        "ca_file": src.path(f["ca_file"], f"{where}.ca_file") if "ca_file" in f else None,
    }
    if kind == "webhook":
        if "url" not in f:
            raise src.fail(node, f"{where}.url", "missing")
        url = src.scalar(f["url"], f"{where}.url")
        if not re.match(r"^https?://[^/\s]+", url):
            raise src.fail(f["url"], f"{where}.url", f"got {url!r}; allowed: an http:// or https:// URL")
        secret = src.secret(f, "secret", "secret_file", where)
        if secret is None:
            raise src.fail(node, f"{where}.secret_file", "missing: a webhook body is always signed (secret_file)")
        return WebhookChannel(**common, url=url, secret=secret.encode())
    for key in ("smtp_host", "from", "to"):
        if key not in f:
            raise src.fail(node, f"{where}.{key}", "missing")
    tls = src.choice(f["tls"], f"{where}.tls", TLS_MODES) if "tls" in f else "starttls"
    port = (
        src.integer(f["smtp_port"], f"{where}.smtp_port", 1, 65535)
        if "smtp_port" in f
        else (465 if tls == "ssl" else 587)
    )
    username = src.scalar(f["username"], f"{where}.username") if "username" in f else None
    password = src.secret(f, "password", "password_file", where)
    if (username is None) != (password is None):
        raise src.fail(node, f"{where}.username", "username and password (or password_file) go together")
    return EmailChannel(
        **common,
        smtp_host=src.scalar(f["smtp_host"], f"{where}.smtp_host"),
        smtp_port=port,
        tls=tls,
        username=username,
        password=password,
        sender=src.scalar(f["from"], f"{where}.from"),
        to=src.strings(f["to"], f"{where}.to"),
    )
