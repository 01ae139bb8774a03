"""Delivering one message to one channel: a signed webhook POST or an SMTP mail, with retries and back-off.

Usage::

    msg = Message("incident", "job_failed", "[vmbackup] job failed: web1 backup", "text...", {...})
    attempts = send(channel, msg)       # NotifyDeliveryFailed after the channel's retries

Webhook: ``POST url`` with the JSON body ``msg.payload``; headers ``Content-Type: application/json``,
``X-Vmbackup-Event: <event>`` and ``X-Vmbackup-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body bytes
keyed with the channel's secret (:func:`signature`; a receiver recomputes it and compares in constant time; the
body's ``sent_at`` lets it refuse old replays). Any 2xx is success; a connection error, a timeout, 408, 429 or 5xx
is retried after ``backoff``, ``2 x backoff``, ``4 x backoff``, ... (``retries`` times); another 4xx is not retried
(the receiver refused the message as such).

Email: ``smtplib`` with STARTTLS (default; ``tls: ssl`` for implicit TLS on 465, ``none`` only for a local relay),
the certificate verified against the system's CAs or the channel's ``ca_file``, login when a username is set; a
plain-text message from ``msg.subject`` and ``msg.text``. Failures are retried the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from controller.notify.config import Channel, EmailChannel, WebhookChannel
from controller.notify.exceptions import NotifyDeliveryFailed

SIGNATURE_HEADER = "X-Vmbackup-Signature"
EVENT_HEADER = "X-Vmbackup-Event"
#: HTTP answers worth another try (besides 5xx): request timeout, too many requests.
_RETRY_STATUS = (408, 429)


@dataclass(frozen=True)
class Message:
    """One message: its type (incident, resolved, digest, test), the event kind, subject, text and JSON body."""

    type: str
    event: str
    subject: str
    text: str
    payload: dict[str, Any] = field(default_factory=dict)


class _Permanent(Exception):
    """A failure another try cannot fix (e.g. HTTP 400, SMTP authentication refused)."""


def signature(secret: bytes, body: bytes) -> str:
    """The X-Vmbackup-Signature value: 'sha256=' + hex HMAC-SHA256 of body keyed with secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def send(ch: Channel, msg: Message, sleep: Callable[[float], None] = time.sleep) -> int:
    """Deliver msg to ch with the channel's retries and back-off; returns the attempts it took."""
    if isinstance(ch, WebhookChannel):
        once: Callable[[], None] = lambda: _post(ch, msg)  # noqa: E731
    elif isinstance(ch, EmailChannel):
        once = lambda: _mail(ch, msg)  # noqa: E731
    else:
        raise TypeError(f"unknown channel type {type(ch).__name__}")
    errors: list[str] = []
    for attempt in range(ch.retries + 1):
        try:
            once()
            return attempt + 1
        except _Permanent as e:
            errors.append(str(e))
            break
        except (OSError, smtplib.SMTPException, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
        if attempt < ch.retries:
            sleep(ch.backoff_s * 2**attempt)
    raise NotifyDeliveryFailed(
        f"channel {ch.name!r}: {msg.type} message not delivered after {len(errors)} attempt(s): {errors[-1]}",
        details={"channel": ch.name, "attempts": len(errors), "errors": errors},
    )


def _tls_context(ch: Channel) -> ssl.SSLContext:
    """Certificate-verifying TLS: the system's CAs, or only the channel's ca_file."""
    return ssl.create_default_context(cafile=str(ch.ca_file) if ch.ca_file else None)


def _post(ch: WebhookChannel, msg: Message) -> None:
    """One signed POST; raises on anything but a 2xx (_Permanent for a refusal retrying cannot change)."""
    body = json.dumps(msg.payload, sort_keys=True, default=str).encode()
    req = urllib.request.Request(
        ch.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "vmbackup-notify/1",
            EVENT_HEADER: msg.event,
            SIGNATURE_HEADER: signature(ch.secret, body),
        },
    )
    ctx = _tls_context(ch) if ch.url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=ch.timeout_s, context=ctx) as resp:
            resp.read(65536)
    except urllib.error.HTTPError as e:
        text = f"HTTP {e.code} {e.reason} from {ch.url}"
        if 400 <= e.code < 500 and e.code not in _RETRY_STATUS:
            raise _Permanent(text) from e
        raise OSError(text) from e


def _mail(ch: EmailChannel, msg: Message) -> None:
    """One SMTP session: connect (TLS as configured), log in if asked, send."""
    mail = EmailMessage()
    mail["From"] = ch.sender
    mail["To"] = ", ".join(ch.to)
    mail["Subject"] = msg.subject
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = make_msgid(domain="vmbackup")
    mail["X-Vmbackup-Event"] = msg.event
    mail.set_content(msg.text)
    ctx = _tls_context(ch)
    smtp: smtplib.SMTP
    if ch.tls == "ssl":
        smtp = smtplib.SMTP_SSL(ch.smtp_host, ch.smtp_port, timeout=ch.timeout_s, context=ctx)
    else:
        smtp = smtplib.SMTP(ch.smtp_host, ch.smtp_port, timeout=ch.timeout_s)
    with smtp:
        smtp.ehlo()
        if ch.tls == "starttls":
            smtp.starttls(context=ctx)  # raises SMTPNotSupportedError if the server offers no STARTTLS
            smtp.ehlo()
        if ch.username is not None and ch.password is not None:
            try:
                smtp.login(ch.username, ch.password)
            except smtplib.SMTPAuthenticationError as e:
                raise _Permanent(f"SMTP login as {ch.username!r} refused: {e.smtp_code} {e.smtp_error!r}") from e
        try:
            smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as e:
            raise _Permanent(f"SMTP server refused the recipients {sorted(e.recipients)}") from e
