"""Verdicts recorded on a recovery point: the last verify and the last boot-check, read back for retention.

``vault verify`` and the scheduler's verify job store each point's outcome in its manifest's ``verify`` field
(``{"ok": bool, "at": "<UTC ISO time>", "errors": ["vda: checksum-mismatch ...", ...]}``); boot-check stores
its verdict in ``boot_check`` (``{"result": "passed" | "failed", ...}``). Usage::

    res = vault.verify(point)
    record_verify(vault, point, res)          # atomic manifest rewrite
    verified_ok(point.manifest)               # True / False / None (never verified)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.vault.manifest import Manifest, RecoveryPoint
from controller.vault.vault import Vault, VerifyResult


def verify_record(res: VerifyResult, at: datetime | None = None) -> dict[str, Any]:
    """The manifest form of one verify outcome."""
    errors = ([res.error] if res.error else []) + res.problems
    errors += [f"{d.target}: {d.status} {d.detail}".strip() for d in res.disks if d.status != "ok"]
    when = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    return {"ok": res.ok, "at": when, "errors": errors}


def record_verify(vault: Vault, point: RecoveryPoint, res: VerifyResult) -> RecoveryPoint:
    """Store the outcome in the point's manifest (``verify`` field); returns the updated point."""
    return vault.update_manifest(point, verify=verify_record(res))


def verified_ok(m: Manifest) -> bool | None:
    """The last recorded verify: True (ok), False (failed) or None (never verified)."""
    return None if not isinstance(m.verify, dict) else m.verify.get("ok") is True


def boot_checked_ok(m: Manifest) -> bool | None:
    """The last recorded boot-check: True (passed), False (failed) or None (never boot-checked)."""
    return None if not isinstance(m.boot_check, dict) else m.boot_check.get("result") == "passed"
