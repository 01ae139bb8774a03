"""Errors of policies and protection bindings."""

from __future__ import annotations

from controller.errors import VmBackupError


class PolicyError(VmBackupError):
    """Base of policy errors."""

    code = "POLICY_ERROR"
    operation = "policy"
    remediation = "Check the policy name and definition (`vmbackup policy list`)."


class PolicyInvalid(PolicyError):
    """A policy file or flag set does not validate; the message names file, line, field and what's allowed."""

    code = "POLICY_INVALID"
    remediation = "Fix the field named in the message (file:line) and run the command again."


class PolicyNotFound(PolicyError):
    """No policy of that name."""

    code = "POLICY_NOT_FOUND"
    remediation = (
        "List the policies with `vmbackup policy list`, or create one with `vmbackup policy create`."
    )


class PolicyExists(PolicyError):
    """A policy of that name already exists."""

    code = "POLICY_EXISTS"
    remediation = "Pick another name, or pass --replace to overwrite the existing policy."


class PolicyInUse(PolicyError):
    """The policy still protects VMs, so it cannot be deleted."""

    code = "POLICY_IN_USE"
    remediation = (
        "Move the VMs to another policy (`vmbackup protect VM --policy OTHER`) or unprotect them first."
    )


class ProtectionError(VmBackupError):
    """Base of protection (binding) errors."""

    code = "PROTECTION_ERROR"
    operation = "configure-protection"
    remediation = "See `vmbackup protect --list` for the current protections."


class ProtectRequiresRegistration(ProtectionError):
    """Only registered VMs (with an agent) can be protected."""

    code = "PROTECT_REQUIRES_REGISTRATION"
    remediation = "Register the VM first (`vmbackup register VM`), then protect it."


class NotProtected(ProtectionError):
    """The VM has no protection to change."""

    code = "NOT_PROTECTED"
    operation = "stop-protection"
    remediation = "Nothing to do; `vmbackup protect --list` shows the protected VMs."


class ConfirmationRequired(ProtectionError):
    """A destructive action needs an explicit confirmation."""

    code = "CONFIRMATION_REQUIRED"
    operation = "stop-protection"
    remediation = "Re-run with --yes to confirm deleting the VM's recovery points, or use --retain-data."
