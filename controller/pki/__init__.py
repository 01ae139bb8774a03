"""The controller's certificate authority: agent server certs and the controller's client cert (mTLS)."""

from controller.pki.ca import CertificateAuthority, IssuedCert, agent_dns_name

__all__ = ["CertificateAuthority", "IssuedCert", "agent_dns_name"]
