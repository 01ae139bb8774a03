"""The web dashboard's HTTP server (stdlib ThreadingHTTPServer), read-only, behind a token.

Usage::

    srv = start(settings, "127.0.0.1:8470")          # a daemon thread; ":0" picks a free port (srv.port)
    srv.url                                          # http://127.0.0.1:8470/
    srv.close()

Access: every request needs the token of ``$VMBACKUP_HOME/web-token`` (controller/web/token.py), given as
``Authorization: Bearer TOKEN``, as the ``vmbackup_token`` cookie, or once as ``?token=TOKEN``: that sets the cookie
(HttpOnly, SameSite=Strict) and redirects to the same page without the token, so it leaves the address bar and the
history. Anything else gets 401. Only GET and HEAD are served; nothing changes state.

Binding: a loopback address (127.0.0.0/8, ::1, localhost) unless ``public=True`` (``--http-public``); any other
address is refused with WEB_BIND_REFUSED before anything listens.

Pages: ``/`` (overview: ``?page=N``, ``?q=NAME``), ``/vm/<uuid>``, ``/job/<id>``, ``/api/dashboard.json`` (what
``vmbackup dashboard --json`` prints). Every request opens its own State (a DB connection per thread); the
dashboard itself is built at most once per ``cache_s`` (5 s) and shared by the requests of that time.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from controller.dashboard import Dashboard, build, queries
from controller.errors import VmBackupError
from controller.jobs.exceptions import JobNotFound
from controller.jobs.store import JobStore
from controller.settings import Settings
from controller.state import State, open_state
from controller.web import pages
from controller.web.exceptions import WebBindRefused, WebListenFailed
from controller.web.token import load_or_create, matches

log = logging.getLogger("vmbackup.web")
COOKIE = "vmbackup_token"
#: Jobs listed on the overview, newest first (the 24 h counts cover all of them).
RECENT_JOBS = 50
#: Backup jobs in a VM's size/duration chart.
HISTORY_JOBS = 60
#: Seconds a built dashboard is reused by the pages (like the metrics endpoint's cache); 0: build per request.
CACHE_S = 5.0
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def parse_listen(address: str) -> tuple[str, int]:
    """'127.0.0.1:8470', 'localhost:8470' or '[::1]:8470' -> (host, port)."""
    from controller.metrics.server import parse_address  # the one HOST:PORT parser

    return parse_address(address, flag="--http", port=8470)


def is_loopback(host: str) -> bool:
    """True if every address host resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


@dataclass
class WebServer:
    """A running dashboard: where it listens and how to stop it."""

    host: str
    port: int
    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """The dashboard's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with the settings, token and dashboard cache the handlers share (IPv6 if the host is)."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], settings: Settings, token: str, cache_s: float):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.settings, self.token, self.cache_s = settings, token, cache_s
        self._lock = threading.Lock()
        self._built: tuple[float, Dashboard] | None = None
        super().__init__(addr, Handler)

    def dashboard(self, st: State) -> Dashboard:
        """The dashboard, rebuilt when older than cache_s (10,000 VMs take ~0.1 s to build; pages are ~10 ms)."""
        with self._lock:
            if self._built is None or time.monotonic() - self._built[0] >= self.cache_s:
                self._built = (time.monotonic(), build(st))
            return self._built[1]


def start(settings: Settings, address: str, public: bool = False, cache_s: float = CACHE_S) -> WebServer:
    """Serve the dashboard of settings' state DB and vault on address (HOST:PORT) in a daemon thread."""
    host, port = parse_listen(address)
    if not public and not is_loopback(host):
        raise WebBindRefused(
            f"--http {address}: {host} is not a loopback address, so other machines could reach the dashboard",
            details={"address": address},
        )
    token = load_or_create(settings)
    try:
        httpd = _Server((host, port), settings, token, cache_s)
    except OSError as e:
        raise WebListenFailed(f"--http {address}: cannot listen there: {e.strerror or e}") from e
    thread = threading.Thread(target=httpd.serve_forever, name="vmbackup-web", daemon=True)
    thread.start()
    return WebServer(host, int(httpd.server_address[1]), httpd, thread)


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD of the dashboard's pages, after the token check."""

    server: _Server
    server_version = "vmbackup-web"

    def log_message(self, format: str, *args: object) -> None:
        """Access log through logging (debug), not stderr."""
        log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        self.do_GET()

    def do_GET(self) -> None:
        """Check the token, then route."""
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        given = params.get("token", [None])[0]
        if given is not None:
            if not matches(given, self.server.token):
                self._send(HTTPStatus.UNAUTHORIZED, pages.message("401 unauthorized", "wrong token"))
                return
            rest = urlencode([(k, v) for k, vs in params.items() if k != "token" for v in vs], doseq=True)
            self._redirect(url.path + (f"?{rest}" if rest else ""))
            return
        if not matches(self._token(), self.server.token):
            self._send(
                HTTPStatus.UNAUTHORIZED,
                pages.message("401 unauthorized", "a token is required: open this page with ?token=TOKEN "
                              "(`vmbackup serve --show-token` prints it) or send Authorization: Bearer TOKEN"),
                {"WWW-Authenticate": 'Bearer realm="vmbackup"'},
            )  # fmt: skip
            return
        try:
            self._route(url.path, params)
        except VmBackupError as e:
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, pages.message(f"error {e.code}", f"{e.message} {e.remediation}")
            )
        except Exception as e:  # a page must not kill the thread silently: log it, answer 500
            log.exception("web: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, pages.message("500 internal error", str(e)))

    def _token(self) -> str | None:
        """The token of the Authorization header or the cookie, if any."""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
        except CookieError:
            return None
        return morsel.value if morsel else None

    def _route(self, path: str, params: dict[str, list[str]]) -> None:
        """Render the page the path names."""
        settings = self.server.settings
        with open_state(settings) as st:
            if path == "/":
                page = params.get("page", ["0"])[0]
                d = self.server.dashboard(st)
                since = (datetime.fromisoformat(d.generated_at) - timedelta(hours=24)).astimezone(UTC)
                jobs = queries.recent_jobs(st.db, since.isoformat(timespec="microseconds"), RECENT_JOBS)
                page_no = int(page) if page.isdigit() else 0
                self._send(HTTPStatus.OK, pages.overview(d, jobs, page_no, params.get("q", [""])[0]))
            elif path == "/api/dashboard.json":
                self._send(
                    HTTPStatus.OK,
                    json.dumps(self.server.dashboard(st).to_dict(), sort_keys=True),
                    ctype="application/json",
                )
            elif path.startswith("/vm/"):
                uuid = unquote(path[4:])
                row = next((r for r in self.server.dashboard(st).rows if r.vm_uuid == uuid), None)
                if row is None:
                    self._send(HTTPStatus.NOT_FOUND, pages.message("404 not found", f"no VM {uuid}"))
                    return
                points = st.vault.list_points(uuid)
                history = queries.backup_history(st.db, uuid, HISTORY_JOBS)
                self._send(HTTPStatus.OK, pages.vm_page(row, points, history))
            elif path.startswith("/job/"):
                try:
                    job = JobStore(st.db).get(unquote(path[5:]))
                except JobNotFound as e:
                    self._send(HTTPStatus.NOT_FOUND, pages.message("404 not found", e.message))
                    return
                self._send(HTTPStatus.OK, pages.job_page(job))
            else:
                self._send(HTTPStatus.NOT_FOUND, pages.message("404 not found", f"no page {path}"))

    def _redirect(self, location: str) -> None:
        """303 to location, setting the token cookie."""
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Set-Cookie", f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Length", "0")
        for k, v in _HEADERS.items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, status: HTTPStatus, body: str, extra: dict[str, str] | None = None, ctype: str = "") -> None:
        """Answer with an HTML (or ctype) body."""
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", (ctype or "text/html") + "; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
