"""Errors of the vault key store and of encrypted points (controller/vault/keys.py)."""

from __future__ import annotations

from controller.errors import InvalidArgument, VmBackupError


class KeyMissing(VmBackupError):
    """A point is encrypted with a vault key this controller does not hold (or no key was given)."""

    code = "KEY_MISSING"
    operation = "restore"
    remediation = (
        "Import the vault key the point names (`vmbackup points --json` shows each disk's key_id): `vmbackup vault "
        "key import FILE` with the text `vmbackup vault key export` printed on the controller that made it; then "
        "retry. Without that key the point cannot be read by anyone."
    )


class KeyWrong(VmBackupError):
    """QEMU refused the key: the stored image's LUKS header does not open with it."""

    code = "KEY_WRONG"
    operation = "restore"
    remediation = (
        "The key file under $VMBACKUP_HOME/pki/vault-keys/ with this id does not open the image: it was replaced "
        "or damaged. Import the exported key again (`vmbackup vault key import FILE`), then retry; nothing was "
        "changed."
    )


class KeyInvalid(InvalidArgument):
    """Text given to `vault key import` is not a vault key."""

    code = "KEY_INVALID"
    operation = "vault"
    remediation = (
        "Give the exact text `vmbackup vault key export` printed: one line of base64 (comments starting with '#' "
        "are ignored)."
    )


class KeyExposed(VmBackupError):
    """A vault key file (or the key directory) is readable by group or others."""

    code = "KEY_EXPOSED"
    operation = "any"
    remediation = (
        "chmod 700 $VMBACKUP_HOME/pki/vault-keys and chmod 600 every file in it (owner root); whoever could read a "
        "key can read every point encrypted with it: consider a new key for new points (`vmbackup vault encryption "
        "enable`, option --new-key)."
    )


class EncryptedPointUnsupported(VmBackupError):
    """An operation that cannot read LUKS-encrypted vault images was asked to use an encrypted point."""

    code = "ENCRYPTED_POINT_UNSUPPORTED"
    operation = "restore"
    remediation = (
        "Restore a copy instead (`vmbackup restore POINT --as NEW_NAME`): a copy is decrypted while it is written."
    )
