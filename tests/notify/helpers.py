"""Local receivers for the notification tests: an HTTP server that checks the HMAC, a self-signed certificate,
real vault points and jobs in a private state DB."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller import settings
from controller.errors import VmBackupError
from controller.jobs.store import JobStore, VmRef
from controller.vault import Vault, new_point_id

SECRET = b"test-webhook-secret"


@dataclass
class Receiver:
    """What the local webhook receiver got, and the statuses it answers with (then 200)."""

    url: str = ""
    plan: list[int] = field(default_factory=list)
    got: list[dict[str, Any]] = field(default_factory=list)  # valid signature only
    bad_signatures: int = 0
    hits: int = 0

    def bodies(self, type: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received (of one message type)."""
        return [g["body"] for g in self.got if type is None or g["body"]["type"] == type]


@contextmanager
def webhook_receiver(
    secret: bytes = SECRET, delay_s: float = 0.0, tls: tuple[Path, Path] | None = None
) -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 (ephemeral port) that checks X-Vmbackup-Signature like a real receiver would;
    with tls=(cert, key) it speaks HTTPS."""
    rec = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            """Check the signature, record the body, answer with the planned status."""
            body = self.rfile.read(int(self.headers["Content-Length"]))
            want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            good = hmac.compare_digest(want, self.headers.get("X-Vmbackup-Signature", ""))
            with lock:
                rec.hits += 1
                status = rec.plan.pop(0) if rec.plan else 200
                if good and status == 200:
                    rec.got.append({"headers": dict(self.headers), "body": json.loads(body)})
                elif not good:
                    rec.bad_signatures += 1
                    status = 401
            if delay_s:
                threading.Event().wait(delay_s)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*tls)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    rec.url = f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}/hook"
    try:
        yield rec
    finally:
        srv.shutdown()
        srv.server_close()


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (IP SAN) and its key, as PEM files (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "smtp.crt", tmp / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def point(
    home: settings.Settings,
    tmp: Path,
    vm_uuid: str,
    name: str,
    created: dt.datetime,
    cons: str = "FILE_SYSTEM",
    **fields: Any,
) -> str:
    """Publish a real point (tiny raw disk) through PointWriter; extra manifest fields as keywords; returns its id."""
    src = tmp / "d.raw"
    src.write_bytes(b"\x07" * 4096 + b"\x00" * 4096)
    with Vault(home.vault).new_point(vm_uuid, new_point_id(created)) as w:
        w.copy_disk("vda", src, fmt="raw")
        w.write_domain_xml(f"<domain><name>{name}</name><uuid>{vm_uuid}</uuid></domain>")
        p = w.publish(
            {
                "vm": {"uuid": vm_uuid, "name": name, "host": "qemu:///system"},
                "consistency": cons,
                "created": created.isoformat(timespec="seconds"),
                **fields,
            }
        )
    return p.point_id


def job(jobs: JobStore, vm_uuid: str, name: str, type: str = "backup", fail: bool = False, nbytes: int = 0) -> str:
    """A finished job of a made-up VM (completed, or failed with INTERNAL_ERROR); returns its id."""
    j = jobs.create(type, vm=VmRef(vm_uuid, name, "qemu:///system"))
    try:
        with jobs.run(j.id) as run:
            if nbytes:
                run.add_bytes(nbytes)
            if fail:
                raise VmBackupError("agent did not answer")
    except VmBackupError:
        pass
    return j.id
