"""The metrics HTTP endpoint `vmbackup serve --metrics HOST:PORT` starts (prometheus_client's WSGI server).

Usage::

    srv = start(settings, "127.0.0.1:9470")     # a daemon thread; srv.port is the bound port (":0" picks one)
    ...                                         # GET http://127.0.0.1:9470/metrics
    srv.close()

The endpoint has no authentication: bind it to 127.0.0.1 (the default in the docs) or a management network only.
Its own registry holds the vmbackup collector and the process collector (the serve process' CPU, memory, fds).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from controller.errors import InvalidArgument
from controller.metrics.collector import VmBackupCollector
from controller.metrics.exceptions import MetricsListenFailed
from controller.settings import Settings

_ADDR_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


def parse_address(text: str, flag: str = "--metrics", port: int = 9470) -> tuple[str, int]:
    """'127.0.0.1:9470' or '[::1]:9470' -> (host, port); INVALID_ARGUMENT (naming flag) otherwise."""
    m = _ADDR_RE.match(text.strip())
    if not m or int(m.group("port")) > 65535:
        raise InvalidArgument(f"{flag} {text!r}: use HOST:PORT, e.g. 127.0.0.1:{port} (or [::1]:{port})")
    return m.group("v6") or m.group("host"), int(m.group("port"))


@dataclass
class MetricsServer:
    """A running endpoint: where it listens and how to stop it."""

    host: str
    port: int
    collector: VmBackupCollector
    httpd: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def start(settings: Settings, address: str, cache_s: float = 5.0) -> MetricsServer:
    """Serve the metrics of settings' state DB and vault on address (HOST:PORT) in a daemon thread."""
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    collector = VmBackupCollector(settings, cache_s=cache_s)
    registry.register(collector)
    registry.register(ProcessCollector(registry=None))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise MetricsListenFailed(
            f"--metrics {address}: cannot listen there: {e.strerror or e}", details={"address": address}
        ) from e
    return MetricsServer(host, int(httpd.server_port), collector, httpd, thread)
