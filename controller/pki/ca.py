"""A small X.509 CA kept in a directory (EC P-256, `cryptography`), created on first use.

Files in the CA dir: ``ca.key`` (0600), ``ca.crt``, ``controller.key`` (0600) + ``controller.crt`` (the
controller's client cert, CN vmbackup-controller), ``revoked.txt`` (one hex serial a line) and
``issued/<serial>.crt``.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.errors import InvalidArgument
from controller.pki.exceptions import CaKeyExposed, ControllerKeyExposed, PkiError

CONTROLLER_CN = "vmbackup-controller"
AGENT_GENERIC_DNS = "vmbackup-agent"
CA_DAYS = 3650
LEAF_DAYS = 825


def agent_dns_name(vm_uuid: str) -> str:
    """The DNS SAN that identifies one VM's agent (and the controller's TLS target name override)."""
    return f"{uuid.UUID(vm_uuid)}.agent.vmbackup"


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, PEM encoded."""

    cert_pem: bytes
    key_pem: bytes
    serial: int

    @property
    def serial_hex(self) -> str:
        """The serial as lower-case hex (how revoked.txt stores it)."""
        return f"{self.serial:x}"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (file mode protects it)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Key usage: cert/CRL signing for the CA, digital signature for leaves."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


class CertificateAuthority:
    """The controller CA stored in ``directory``."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.directory = directory
        self.key = key
        self.cert = cert

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        """Load the CA from ``directory``, creating it (0700 dir, 0600 key) on first use."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, crt_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() != crt_path.exists():
            raise PkiError(f"{directory}: only one of ca.key / ca.crt exists; the CA is incomplete")
        if not key_path.exists():
            return cls._create(directory)
        if os.stat(key_path).st_mode & 0o077:
            raise CaKeyExposed(f"{key_path} is readable by group or others")
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
        except ValueError as exc:
            raise PkiError(f"{directory}: cannot parse the CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path}: not an EC private key")
        return cls(directory, key, cert)

    @classmethod
    def _create(cls, directory: Path) -> CertificateAuthority:
        """Make a new self-signed CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmbackup CA {uuid.uuid4().hex[:8]}")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(directory / "ca.key", _key_pem(key))
        (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, cert)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_agent_cert(self, vm_uuid: str, vm_name: str) -> IssuedCert:
        """A server cert for one VM's agent: SAN <vm-uuid>.agent.vmbackup + vmbackup-agent."""
        try:
            dns = agent_dns_name(vm_uuid)
        except ValueError as exc:
            raise InvalidArgument(f"not a VM uuid: {vm_uuid!r}") from exc
        sans = [x509.DNSName(dns), x509.DNSName(AGENT_GENERIC_DNS)]
        issued = self._issue(f"{vm_name[:40]} agent", sans, ExtendedKeyUsageOID.SERVER_AUTH)
        return issued

    def controller_client_cert(self) -> IssuedCert:
        """The controller's client cert (CN vmbackup-controller), created once and stored.

        A stored key readable by group or others is refused (PKI_CONTROLLER_KEY_EXPOSED), like ca.key.
        """
        crt, key = self.directory / "controller.crt", self.directory / "controller.key"
        if crt.exists() and key.exists():
            if os.stat(key).st_mode & 0o077:
                raise ControllerKeyExposed(f"{key} is readable by group or others")
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            return IssuedCert(crt.read_bytes(), key.read_bytes(), cert.serial_number)
        issued = self._issue(CONTROLLER_CN, [x509.DNSName(CONTROLLER_CN)], ExtendedKeyUsageOID.CLIENT_AUTH)
        _write_private(key, issued.key_pem)
        crt.write_bytes(issued.cert_pem)
        return issued

    def _issue(self, cn: str, sans: Sequence[x509.GeneralName], usage: x509.ObjectIdentifier) -> IssuedCert:
        """Sign a new leaf certificate and keep a copy under issued/."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        issued_dir = self.directory / "issued"
        issued_dir.mkdir(mode=0o700, exist_ok=True)
        (issued_dir / f"{cert.serial_number:x}.crt").write_bytes(pem)
        return IssuedCert(pem, _key_pem(key), cert.serial_number)

    def revoke(self, serial: int) -> None:
        """Add ``serial`` to the revocation list (idempotent)."""
        if self.is_revoked(serial):
            return
        with open(self.directory / "revoked.txt", "a", encoding="ascii") as f:
            f.write(f"{serial:x}\n")

    def is_revoked(self, serial: int) -> bool:
        """True when ``serial`` is on the revocation list."""
        return serial in self.revoked_serials()

    def revoked_serials(self) -> set[int]:
        """Every revoked serial."""
        path = self.directory / "revoked.txt"
        if not path.exists():
            return set()
        return {int(line, 16) for line in path.read_text(encoding="ascii").split() if line}
