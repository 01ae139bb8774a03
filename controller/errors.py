"""The product's error hierarchy: every failure a user can see has a stable code, a message and a remediation.

Each layer defines its own errors in its ``exceptions.py`` by subclassing :class:`VmBackupError` and setting the
class attributes ``code`` (stable, UPPER_SNAKE, never reused) and ``remediation`` (what the user should do)::

    class VmNotRunning(VmBackupError):
        code = "VM_NOT_RUNNING"
        remediation = "Start the VM (virsh start NAME), then retry."

    raise VmNotRunning(f"VM {name!r} is shut off")

Every subclass is recorded in :data:`ERROR_TABLE` when its module is imported; :func:`load_all` imports every
``exceptions`` (and ``*_exceptions``) module under controller/ so the table ``vmbackup errors`` prints is complete
(tests/test_error_table.py checks that no subclass lives anywhere else).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import controller

#: code -> error class, filled in as subclasses are defined.
ERROR_TABLE: dict[str, type[VmBackupError]] = {}


class VmBackupError(Exception):
    """Base of every error vmbackup reports to a user."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    remediation: ClassVar[str] = "This is a bug or an unexpected condition; retry, and report it with the job id."
    #: The operations (discover, register, backup, ...) this error belongs to, for the error table.
    operation: ClassVar[str] = "any"

    def __init__(self, message: str, *, remediation: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if remediation is not None:
            self.remediation = remediation  # type: ignore[misc]  # per-instance override of the class text
        self.details: dict[str, Any] = dict(details or {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            other = ERROR_TABLE.get(cls.code)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"error code {cls.code} used by both {other.__qualname__} and {cls.__qualname__}")
            ERROR_TABLE[cls.code] = cls

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: what job records and ``--json`` output carry."""
        out: dict[str, Any] = {"code": self.code, "message": self.message, "remediation": self.remediation}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


ERROR_TABLE[VmBackupError.code] = VmBackupError


class InvalidArgument(VmBackupError):
    """A user-supplied value is not acceptable."""

    code = "INVALID_ARGUMENT"
    remediation = "Correct the value as the message says and run the command again."


def is_exceptions_module(name: str) -> bool:
    """Whether a dotted module name is one that defines errors: ``...exceptions`` or ``..._exceptions``."""
    last = name.rsplit(".", 1)[-1]
    return last == "exceptions" or last.endswith("_exceptions")


def load_all() -> dict[str, type[VmBackupError]]:
    """Import every exceptions module under controller/ and return :data:`ERROR_TABLE`, now complete."""
    import pkgutil  # here, not at the top: every command imports this module, only `vmbackup errors` walks

    for mod in pkgutil.walk_packages(controller.__path__, "controller."):
        if is_exceptions_module(mod.name):
            importlib.import_module(mod.name)
    return ERROR_TABLE
