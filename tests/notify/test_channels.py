"""Delivery against local receivers on 127.0.0.1: a webhook server that checks the HMAC, an aiosmtpd server with
STARTTLS and a self-signed certificate; retries with exponential back-off; timeouts."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from controller.notify import messages
from controller.notify.channels import send, signature
from controller.notify.config import EmailChannel, WebhookChannel
from controller.notify.exceptions import NotifyDeliveryFailed
from tests.notify.helpers import SECRET, self_signed, webhook_receiver


def hook(url: str, **kw: Any) -> WebhookChannel:
    """A webhook channel to url with the test secret and fast back-off."""
    return WebhookChannel(**{"name": "hook", "url": url, "secret": SECRET, "backoff_s": 0.05, "timeout_s": 2.0, **kw})


def test_webhook_body_is_signed_with_hmac_sha256() -> None:
    """The receiver recomputes HMAC-SHA256 of the exact body with the shared secret; a wrong key is refused."""
    msg = messages.test("hook", datetime.now(UTC))
    with webhook_receiver() as rec:
        assert send(hook(rec.url), msg) == 1
        (got,) = rec.got
        assert got["headers"]["X-Vmbackup-Event"] == "test" and got["headers"]["Content-Type"] == "application/json"
        assert got["body"]["type"] == "test" and got["body"]["channel"] == "hook" and got["body"]["version"] == 1
        with pytest.raises(NotifyDeliveryFailed) as e:  # signed with another key: 401, not retried
            send(hook(rec.url, secret=b"wrong", retries=3), msg)
        assert rec.bad_signatures == 1 and e.value.details["attempts"] == 1 and "HTTP 401" in e.value.message
    # RFC 4231 test case 2
    want = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert signature(b"Jefe", b"what do ya want for nothing?") == want


def test_webhook_over_https_verifies_the_certificate(tmp_path: Path) -> None:
    """https: the receiver's self-signed certificate is trusted through ca_file, and refused without it."""
    msg = messages.test("hook", datetime.now(UTC))
    cert, key = self_signed(tmp_path)
    with webhook_receiver(tls=(cert, key)) as rec:
        assert rec.url.startswith("https://") and send(hook(rec.url, ca_file=cert), msg) == 1
        with pytest.raises(NotifyDeliveryFailed) as e:
            send(hook(rec.url, retries=0), msg)
        assert len(rec.got) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in e.value.message


def test_webhook_retries_with_exponential_backoff() -> None:
    """A receiver that fails twice (503, 500): the third try lands; the waits are backoff, 2 x backoff."""
    waits: list[float] = []
    with webhook_receiver() as rec:
        rec.plan = [503, 500]
        assert send(hook(rec.url, backoff_s=0.5), messages.test("hook", datetime.now(UTC)), sleep=waits.append) == 3
        assert rec.hits == 3 and len(rec.got) == 1
    assert waits == [0.5, 1.0]


def test_webhook_gives_up_after_its_retries() -> None:
    """Always 500: 1 + retries attempts, then NOTIFY_DELIVERY_FAILED with every error."""
    waits: list[float] = []
    with webhook_receiver() as rec:
        rec.plan = [500] * 10
        with pytest.raises(NotifyDeliveryFailed) as e:
            send(hook(rec.url, retries=2, backoff_s=1.0), messages.test("hook", datetime.now(UTC)), sleep=waits.append)
        assert rec.hits == 3
    assert waits == [1.0, 2.0] and e.value.details["attempts"] == 3 and "HTTP 500" in e.value.message


def test_webhook_timeout_is_bounded() -> None:
    """A receiver slower than the channel's timeout: each attempt ends at the timeout, not later."""
    with webhook_receiver(delay_s=3.0) as rec:
        t0 = time.monotonic()
        with pytest.raises(NotifyDeliveryFailed) as e:
            send(
                hook(rec.url, timeout_s=0.3, retries=1), messages.test("hook", datetime.now(UTC)), sleep=lambda s: None
            )
        took = time.monotonic() - t0
    assert took < 2.0, took
    assert "timed out" in e.value.message.lower(), e.value.message


class _Sink:
    """aiosmtpd handler: keeps each message and whether the session was under TLS."""

    def __init__(self) -> None:
        self.mails: list[tuple[bytes, bool, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        """Store the message."""
        data = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.mails.append((data, session.ssl is not None, list(envelope.rcpt_tos)))
        return "250 OK"


def _free_port() -> int:
    """A free TCP port on 127.0.0.1 (aiosmtpd's Controller needs a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[int, _Sink, Path]]:
    """An SMTP server on 127.0.0.1 that requires STARTTLS (self-signed cert) and AUTH vmb/pw; (port, sink, cert)."""
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def auth(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"vmb", b"pw")
        return AuthResult(success=ok, handled=False)

    sink = _Sink()
    port = _free_port()
    ctl = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=auth,
        auth_required=True,
        auth_require_tls=True,
    )
    ctl.start()
    try:
        yield port, sink, cert
    finally:
        ctl.stop()


def mail_channel(port: int, cert: Path, **kw: Any) -> EmailChannel:
    """An email channel to the local server."""
    return EmailChannel(
        **{
            "name": "mail",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "ca_file": cert,
            "username": "vmb",
            "password": "pw",
            "sender": "vmbackup@test.local",
            "to": ("ops@test.local", "b@test.local"),
            "timeout_s": 5.0,
            "backoff_s": 0.05,
            **kw,
        }
    )


def test_email_over_starttls_with_a_verified_certificate(smtp: tuple[int, _Sink, Path]) -> None:
    """STARTTLS, the server's certificate verified against ca_file, login, one mail to both recipients."""
    port, sink, cert = smtp
    assert send(mail_channel(port, cert), messages.test("mail", datetime.now(UTC))) == 1
    ((data, tls, rcpts),) = sink.mails
    mail = message_from_bytes(data)
    assert tls and rcpts == ["ops@test.local", "b@test.local"]
    assert mail["Subject"] == "[vmbackup] test message (mail)" and mail["X-Vmbackup-Event"] == "test"
    assert "alerts from this controller reach you" in mail.get_payload()


def test_email_refuses_an_unverified_certificate(smtp: tuple[int, _Sink, Path]) -> None:
    """Without ca_file the self-signed certificate is not trusted: nothing is sent, the error says why."""
    port, sink, _ = smtp
    with pytest.raises(NotifyDeliveryFailed) as e:
        send(mail_channel(port, None, retries=0), messages.test("mail", datetime.now(UTC)))
    assert "CERTIFICATE_VERIFY_FAILED" in e.value.message and sink.mails == []


def test_email_wrong_password_is_not_retried(smtp: tuple[int, _Sink, Path]) -> None:
    """An authentication refusal is permanent: one attempt."""
    port, sink, cert = smtp
    with pytest.raises(NotifyDeliveryFailed) as e:
        send(mail_channel(port, cert, password="nope", retries=3), messages.test("mail", datetime.now(UTC)))
    assert e.value.details["attempts"] == 1 and "login" in e.value.message and sink.mails == []
