"""The controller CA: created once, 0600 keys, agent SANs, controller client cert, revocation."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.errors import InvalidArgument
from controller.pki import CertificateAuthority
from controller.pki.exceptions import CaKeyExposed, PkiError


def _eku(cert: x509.Certificate) -> x509.ExtendedKeyUsage:
    """The certificate's extended key usage."""
    return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_created_once_and_reloaded(tmp_path: Path) -> None:
    """First use creates ca.key (0600) + ca.crt; the second load returns the same CA."""
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    assert stat.S_IMODE(os.stat(tmp_path / "pki" / "ca.key").st_mode) == 0o600
    again = CertificateAuthority.load_or_create(tmp_path / "pki")
    assert again.cert.serial_number == ca.cert.serial_number
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_agent_cert_sans_and_signature(tmp_path: Path) -> None:
    """The agent cert names <uuid>.agent.vmbackup and vmbackup-agent, is a server cert signed by the CA."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    vm = str(uuid.uuid4())
    issued = ca.issue_agent_cert(vm, "web01")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert sans == [f"{vm}.agent.vmbackup", "vmbackup-agent"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in _eku(cert)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.serial_number == issued.serial
    assert (tmp_path / "issued" / f"{issued.serial:x}.crt").exists()
    with pytest.raises(InvalidArgument):
        ca.issue_agent_cert("not-a-uuid", "x")


def test_controller_client_cert_is_stable(tmp_path: Path) -> None:
    """CN vmbackup-controller, client auth, created once and reused, key 0600."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    a, b = ca.controller_client_cert(), ca.controller_client_cert()
    assert a.serial == b.serial and a.key_pem == b.key_pem
    cert = x509.load_pem_x509_certificate(a.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vmbackup-controller"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _eku(cert)
    assert stat.S_IMODE(os.stat(tmp_path / "controller.key").st_mode) == 0o600


def test_revocation_persists(tmp_path: Path) -> None:
    """revoke() is recorded on disk and seen by a fresh load; other serials are unaffected."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    one, two = ca.issue_agent_cert(str(uuid.uuid4()), "a"), ca.issue_agent_cert(str(uuid.uuid4()), "b")
    ca.revoke(one.serial)
    ca.revoke(one.serial)
    fresh = CertificateAuthority.load_or_create(tmp_path)
    assert fresh.is_revoked(one.serial) and not fresh.is_revoked(two.serial)
    assert (tmp_path / "revoked.txt").read_text().count("\n") == 1


def test_exposed_or_incomplete_ca_refused(tmp_path: Path) -> None:
    """A world-readable ca.key or a missing ca.crt is a clear error, not a silent new CA."""
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(CaKeyExposed):
        CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").chmod(0o600)
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(PkiError, match="incomplete"):
        CertificateAuthority.load_or_create(tmp_path)


def test_keys_are_p256(tmp_path: Path) -> None:
    """EC P-256 keys."""
    issued = CertificateAuthority.load_or_create(tmp_path).issue_agent_cert(str(uuid.uuid4()), "x")
    key = x509.load_pem_x509_certificate(issued.cert_pem).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
