"""The dashboard: one snapshot of protection health, built from state.db and the vault (no CLI needed).

Usage::

    from controller.dashboard import build
    d = build(settings)                  # Dashboard; d.to_dict() is what `vmbackup dashboard --json` prints

JSON shape (``to_dict()``; times are UTC ISO 8601, ages and durations in seconds)::

    {
      "generated_at": "2026-11-25T10:15:00+00:00",
      "vms": {"known": 5,            # in the inventory (vms table, gone excluded) or registered or in the vault
              "registered": 3, "protected": 2,
              "unprotected": 1,      # registered but not protected (or unprotected with data retained)
              "retained": 0},        # unprotected --retain-data
      "jobs_24h": {"succeeded": 7, "failed": 1, "in_progress": 1, "cancelled": 0,
                   "by_type": {"backup": {"succeeded": 6, "failed": 1, ...}, ...}},
      "vault": {"path": "...", "total_bytes": 123, "free_bytes": 456, "points": 9, "partial_bytes": 0},
      "rows": [                      # one per VM that is registered, protected, or has points; by name
        {"vm_uuid": "...", "vm_name": "web1", "registered": true, "protection": "protected|unprotected-retain|null",
         "policy": "gold", "schedule": "every 1 min",
         "last_point": null | {"point_id": "...", "created": "...", "age_s": 42.0, "consistency": "FILE_SYSTEM",
                               "boot_check": null | {"passed": true, "checked_at": "...", "reason": ""}},
         "points": 3,
         "last_backup": null | {"job_id": "...", "state": "completed|failed|cancelled|in-progress|queued",
                                "created_at": "...", "ended_at": "...", "error_code": null},
         "next_run": "..." | null,   # protected VMs: the next slot after the last run
         "attention": ["last backup failed: AGENT_UNREACHABLE", ...]}
      ],
      "attention": [{"vm_uuid": "...", "vm_name": "web1", "reasons": ["..."],
                     "remediation": ["..."]}]   # what to do, one per reason (a failed job's own remediation)
    }

Attention rules: the last finished backup job failed; or (protected VMs) the slot after the newest recovery point
(or after protection began, if there is none) passed more than ``grace`` ago (default 10 min, the time a run
may take), i.e. the VM's newest point is older than its schedule allows.

Speed: a handful of aggregated SQL statements whatever the number of VMs (queries.py), each policy's schedule
slots computed once (slots.py); 10,000 VMs build in ~0.1 s (bench/scale.py measures `dashboard --json`).
"""

from controller.dashboard.model import Dashboard, VmRow, build

__all__ = ["Dashboard", "VmRow", "build"]
