"""The messages: an incident opened or resolved, the daily digest, a test message (text and JSON body).

Webhook body (JSON, keys sorted; ``version`` changes only when a field's meaning does)::

    {"version": 1, "type": "incident" | "resolved" | "digest" | "test", "event": "<kind>" | "digest" | "test",
     "controller": "<host name>", "sent_at": "<UTC ISO 8601>",
     "incident": {"id": 7, "kind": "job_failed", "subject": "<vm uuid>/backup", "vm_name": "web1",
                  "state": "open", "severity": "critical", "summary": "...", "opened_at": "...",
                  "resolved_at": null, "details": {..., "remediation": "..."}},     # incident / resolved
     "incidents": [<incident>, ...], "open": 2}                                    # digest
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from controller.notify.channels import Message
from controller.notify.incidents import Incident

PAYLOAD_VERSION = 1
_TITLES = {
    "job_failed": "job failed",
    "backup_missed": "backup missed",
    "consistency_low": "consistency below the policy",
    "boot_check_failed": "boot-check failed",
    "vault_full": "vault nearly full",
    "chain_reset": "chain reset to full",
}


def _envelope(type: str, event: str, now: datetime) -> dict[str, Any]:
    """The fields every webhook body has."""
    return {
        "version": PAYLOAD_VERSION,
        "type": type,
        "event": event,
        "controller": socket.gethostname(),
        "sent_at": now.isoformat(timespec="seconds"),
    }


def _describe(inc: Incident) -> str:
    """An incident as text lines: summary, what to do, when, the details."""
    lines = [inc.summary, ""]
    fix = inc.details.get("remediation")
    if fix:
        lines += [f"What to do: {fix}", ""]
    lines.append(f"Opened: {inc.opened_at}" + (f"   Resolved: {inc.resolved_at}" if inc.resolved_at else ""))
    lines.append(f"Incident {inc.id}: {inc.kind} / {inc.subject} ({inc.severity})")
    for k, v in sorted(inc.details.items()):
        if k != "remediation" and v not in (None, ""):
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def incident(inc: Incident, what: str, now: datetime) -> Message:
    """The message of an incident that opened (what='opened') or resolved."""
    resolved = what == "resolved"
    title = _TITLES.get(inc.kind, inc.kind)
    who = f": {inc.vm_name}" if inc.vm_name else ""
    subject = f"[vmbackup] {'RESOLVED ' if resolved else ''}{title}{who}"
    head = "This incident is resolved.\n\n" if resolved else ""
    payload = {**_envelope("resolved" if resolved else "incident", inc.kind, now), "incident": inc.to_dict()}
    return Message(payload["type"], inc.kind, subject, head + _describe(inc), payload)


def digest(incidents: list[Incident], since: str | None, now: datetime) -> Message:
    """The daily digest: what is open, and what opened or resolved since the last digest."""
    still = [i for i in incidents if i.state == "open"]
    subject = f"[vmbackup] daily digest: {len(still)} open incident(s)"
    lines = [f"vmbackup on {socket.gethostname()}, {now.isoformat(timespec='minutes')}", ""]
    if not incidents:
        lines.append("Nothing needs attention: no open incident, none opened or resolved in the last day.")
    if still:
        lines.append(f"Open ({len(still)}):")
        lines += [f"  - [{i.severity}] {i.summary} (since {i.opened_at[:16]})" for i in still]
    done = [i for i in incidents if i.state != "open"]
    if done:
        lines += ["", f"Resolved since the last digest ({len(done)}):"]
        lines += [f"  - {i.summary} ({i.opened_at[:16]} - {(i.resolved_at or '')[:16]})" for i in done]
    payload = {
        **_envelope("digest", "digest", now),
        "since": since,
        "open": len(still),
        "incidents": [i.to_dict() for i in incidents],
    }
    return Message("digest", "digest", subject, "\n".join(lines), payload)


def test(channel: str, now: datetime) -> Message:
    """The message `vmbackup notify test` sends."""
    text = (
        f"This is a test message from vmbackup on {socket.gethostname()} to channel {channel!r}.\n"
        "If you read it, alerts from this controller reach you."
    )
    payload = {**_envelope("test", "test", now), "channel": channel, "text": text}
    return Message("test", "test", f"[vmbackup] test message ({channel})", text, payload)
