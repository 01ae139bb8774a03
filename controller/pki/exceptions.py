"""Errors of the controller's certificate authority."""

from __future__ import annotations

from controller.errors import VmBackupError


class PkiError(VmBackupError):
    """The CA directory or a certificate in it cannot be used."""

    code = "PKI_ERROR"
    operation = "register"
    remediation = (
        "Check $VMBACKUP_HOME/pki/ (owner root, ca.key mode 0600); restore it from backup if damaged."
    )


class CaKeyExposed(PkiError):
    """ca.key is readable by group or others."""

    code = "PKI_KEY_EXPOSED"
    remediation = "chmod 600 $VMBACKUP_HOME/pki/ca.key, and consider re-issuing agent certificates."


class ControllerKeyExposed(PkiError):
    """controller.key (the controller's TLS client key) is readable by group or others."""

    code = "PKI_CONTROLLER_KEY_EXPOSED"
    operation = "any"
    remediation = (
        "chmod 600 $VMBACKUP_HOME/pki/controller.key (owner root), then run the command again; whoever could "
        "read it can call the agents as this controller until its certificate expires."
    )
