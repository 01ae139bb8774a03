"""The dashboard's HTML pages, rendered on the server from controller.dashboard's data (no build step, no script).

Every value that comes from the state or the vault goes through ``e()`` (html.escape, quotes included); links
quote their path parts. Pages: ``overview`` (``/``), ``vm_page`` (``/vm/<uuid>``), ``job_page`` (``/job/<id>``),
``message`` (401/404 and errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from controller.dashboard import Dashboard, VmRow
from controller.dashboard.model import age_text
from controller.dashboard.queries import JobLine
from controller.jobs.model import Job
from controller.vault import RecoveryPoint
from controller.web.charts import history_chart, human_bytes, human_seconds, phase_timeline

#: VM rows per page of the overview (10,000 VMs are 50 pages, each rendered in a few ms).
PAGE_ROWS = 200

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#1d2733;background:#f7f9fb}
h1{font-size:1.4em;margin:.2em 0} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:.9em} td,th{padding:.25em .6em;border:1px solid #dde3ea}
th{background:#eef2f6;text-align:left} .num{text-align:right} .muted{color:#7a8a99}
.ok{color:#1d7a3e} .bad{color:#c0392b;font-weight:600} .warn{color:#b7791f}
.cards{display:flex;gap:.8em;flex-wrap:wrap} .card{background:#fff;border:1px solid #dde3ea;padding:.5em .9em}
.card b{display:block;font-size:1.4em} svg.chart{background:#fff;border:1px solid #dde3ea}
svg .t{font-size:12px;fill:#1d2733} svg .a{font-size:11px;fill:#7a8a99} svg .ax{stroke:#aab4bf}
nav a{margin-right:1em}
"""


def e(value: Any) -> str:
    """Escaped text of any value ('-' for None)."""
    return "-" if value is None else escape(str(value), quote=True)


def layout(title: str, body: str) -> str:
    """The page around a body."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{e(title)}</title><style>{_CSS}</style></head>'
        f'<body><nav><a href="/">overview</a><a href="/api/dashboard.json">JSON</a></nav>{body}</body></html>'
    )


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape them with e() first)."""
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def vm_link(uuid: str, name: str) -> str:
    """A link to a VM's page."""
    return f'<a href="/vm/{quote(uuid, safe="")}">{e(name or uuid)}</a>'


def job_link(job_id: str) -> str:
    """A link to a job's page."""
    return f'<a href="/job/{quote(job_id, safe="")}">{e(job_id)}</a>'


def _state(state: str | None, error_code: str | None = None) -> str:
    """A job state, coloured, with its error code."""
    cls = {"completed": "ok", "failed": "bad", "cancelled": "muted"}.get(state or "", "warn")
    return f'<span class="{cls}">{e(state)}{" " + e(error_code) if error_code else ""}</span>'


def _boot_check(bc: dict[str, Any] | None) -> str:
    """A point's boot-check verdict."""
    if not bc:
        return '<span class="muted">not checked</span>'
    if bc.get("passed"):
        return f'<span class="ok">passed</span> <span class="muted">{e(bc.get("checked_at"))}</span>'
    return f'<span class="bad">FAILED</span> {e(bc.get("reason"))}'


def _cards(d: Dashboard) -> str:
    """Protection status and vault usage as cards."""
    v, j, vault = d.vms, d.jobs_24h, d.vault
    items = [
        ("VMs known", v["known"]), ("registered", v["registered"]), ("protected", v["protected"]),
        ("unprotected", v["unprotected"]), ("retained", v["retained"]), ("need attention", len(d.attention)),
        ("jobs 24 h ok", j["succeeded"]), ("failed", j["failed"]), ("running", j["in_progress"]),
        ("vault used", human_bytes(vault["total_bytes"])), ("vault free", human_bytes(vault["free_bytes"])),
        ("points", vault["points"]),
    ]  # fmt: skip
    return '<div class="cards">' + "".join(f'<div class="card">{e(k)}<b>{e(n)}</b></div>' for k, n in items) + "</div>"


def _attention(d: Dashboard, limit: int = PAGE_ROWS) -> str:
    """What needs attention, with what to do about it."""
    att = d.attention
    if not att:
        return '<p class="ok" id="attention">nothing needs attention</p>'
    rows = [
        [vm_link(a["vm_uuid"], a["vm_name"]), "<br>".join(e(r) for r in a["reasons"]),
         "<br>".join(e(f) for f in a["remediation"])]
        for a in att[:limit]
    ]  # fmt: skip
    more = f'<p class="muted">and {len(att) - limit} more</p>' if len(att) > limit else ""
    return '<div id="attention">' + table(["VM", "why", "what to do"], rows) + more + "</div>"


def _vm_rows(rows: Sequence[VmRow]) -> list[list[str]]:
    """The overview's VM table cells."""
    out = []
    for r in rows:
        lp, lb = r.last_point, r.last_backup
        out.append([
            vm_link(r.vm_uuid, r.vm_name),
            e(r.protection or ("registered" if r.registered else "-")),
            e(r.policy),
            e(lp["point_id"]) if lp else "-",
            e(lp["consistency"]) if lp else "-",
            e(age_text(lp["age_s"])) if lp else "-",
            _boot_check(lp.get("boot_check")) if lp else "-",
            (job_link(lb["job_id"]) + " " + _state(lb["state"], lb["error_code"])) if lb else "-",
            e(r.next_run),
            '<span class="bad">yes</span>' if r.attention else "",
        ])  # fmt: skip
    return out


def _pager(total: int, page: int, q: str) -> str:
    """Links to the other pages of the VM table."""
    pages = max(1, -(-total // PAGE_ROWS))
    if pages == 1:
        return ""
    links = []
    for p in range(pages):
        query = urlencode({"page": p, **({"q": q} if q else {})})
        links.append(f"<b>{p + 1}</b>" if p == page else f'<a href="/?{query}">{p + 1}</a>')
    return f'<p class="muted">page {page + 1} of {pages}: ' + " ".join(links) + "</p>"


def overview(d: Dashboard, jobs: Sequence[JobLine], page: int = 0, q: str = "") -> str:
    """`/`: status cards, attention with remediation, the VM table (one page, filtered by name), jobs of 24 h."""
    rows = [r for r in d.rows if q.lower() in r.vm_name.lower()] if q else d.rows
    page = min(max(page, 0), max(0, (len(rows) - 1) // PAGE_ROWS))
    shown = rows[page * PAGE_ROWS : (page + 1) * PAGE_ROWS]
    by_type = ", ".join(
        f"{t}: {c['succeeded']} ok, {c['failed']} failed" for t, c in sorted(d.jobs_24h["by_type"].items())
    )
    job_rows = [
        [job_link(j.id), e(j.type), vm_link(j.vm_uuid, j.vm_name or "") if j.vm_uuid else "-",
         _state(j.state, j.error_code), e(j.created_at[:19].replace("T", " ")),
         f'<span class="num">{e(human_seconds(j.duration_s))}</span>', e(human_bytes(j.bytes_total))]
        for j in jobs
    ]  # fmt: skip
    body = [
        f'<h1>vmbackup dashboard</h1><p class="muted">as of {e(d.generated_at)} - vault {e(d.vault["path"])}</p>',
        _cards(d),
        "<h2>Needs attention</h2>",
        _attention(d),
        f"<h2>VMs ({len(rows)})</h2>",
        f'<form method="get" action="/"><input name="q" value="{e(q)}" placeholder="filter by name">'
        '<button type="submit">filter</button></form>',
        table(
            [
                "VM",
                "protection",
                "policy",
                "last point",
                "consistency",
                "age",
                "boot-check",
                "last backup",
                "next run",
                "attention",
            ],
            _vm_rows(shown),
            "vms",
        ),
        _pager(len(rows), page, q),
        f'<h2>Jobs of the last 24 h</h2><p class="muted">{e(by_type or "none")}</p>',
        table(["job", "type", "VM", "state", "created (UTC)", "duration", "bytes"], job_rows, "jobs"),
    ]
    return layout("vmbackup dashboard", "".join(body))


def vm_page(row: VmRow, points: Sequence[RecoveryPoint], history: Sequence[JobLine]) -> str:
    """`/vm/<uuid>`: the VM's status, size/duration chart, recovery points and backup jobs."""
    point_rows = [
        [e(p.point_id), e(p.manifest.created), e(p.manifest.consistency),
         _boot_check(p.manifest.boot_check), e(human_bytes(sum(d.stored_bytes or 0 for d in p.manifest.disks))),
         e(", ".join(f"{d.target} ({d.kind})" for d in p.manifest.disks))]
        for p in points
    ]  # fmt: skip
    job_rows = [
        [job_link(j.id), _state(j.state, j.error_code), e(j.created_at[:19].replace("T", " ")),
         e(human_seconds(j.duration_s)), e(human_bytes(j.bytes_total))]
        for j in reversed(history)
    ]  # fmt: skip
    attention = "".join(f"<li>{e(r)}: {e(f)}</li>" for r, f in zip(row.attention, row.remediation, strict=False))
    body = [
        f"<h1>{e(row.vm_name)}</h1><p class='muted'>{e(row.vm_uuid)}</p>",
        table(
            ["protection", "policy", "schedule", "points", "next run"],
            [
                [
                    e(row.protection or ("registered" if row.registered else "-")),
                    e(row.policy),
                    e(row.schedule),
                    e(row.points),
                    e(row.next_run),
                ]
            ],
        ),
        f'<h2>Needs attention</h2><ul class="bad">{attention}</ul>' if attention else "",
        "<h2>Backup size and duration</h2>",
        history_chart(history),
        f"<h2>Recovery points ({len(points)})</h2>",
        table(["point", "created", "consistency", "boot-check", "stored", "disks"], point_rows, "points"),
        "<h2>Backup jobs</h2>",
        table(["job", "state", "created (UTC)", "duration", "copied"], job_rows, "jobs"),
    ]
    return layout(f"{row.vm_name} - vmbackup", "".join(body))


def job_page(job: Job) -> str:
    """`/job/<id>`: the job's phase timeline, phases, details and error with its remediation."""
    phases = [
        [e(p.name), _state(p.state), e(p.started_at), e(human_seconds(p.duration_s)), e(human_bytes(p.bytes))]
        for p in job.phases
    ]
    vm = vm_link(job.vm.uuid, job.vm.name) if job.vm else "-"
    err = ""
    if job.error:
        err = (
            f'<h2>Error</h2><p class="bad">{e(job.error.get("code"))}: {e(job.error.get("message"))}</p>'
            f"<p>What to do: {e(job.error.get('remediation'))}</p>"
        )
    details = [[e(k), e(v)] for k, v in sorted(job.details.items())]
    body = [
        f"<h1>{e(job.type)} job {e(job.id)}</h1>",
        table(
            ["VM", "state", "created", "started", "ended", "duration", "bytes"],
            [
                [
                    vm,
                    _state(job.state),
                    e(job.created_at),
                    e(job.started_at),
                    e(job.ended_at),
                    e(human_seconds(job.duration_s)),
                    e(human_bytes(job.bytes_total)),
                ]
            ],
        ),
        err,
        "<h2>Phase timeline</h2>",
        phase_timeline(job),
        table(["phase", "state", "started", "duration", "bytes"], phases, "phases"),
        "<h2>Details</h2>" + table(["key", "value"], details) if details else "",
    ]
    return layout(f"job {job.id} - vmbackup", "".join(body))


def message(title: str, text: str) -> str:
    """A short page for 401, 404 and errors."""
    return layout(title, f"<h1>{e(title)}</h1><p>{e(text)}</p>")
