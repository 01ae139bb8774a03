"""Errors of the Prometheus metrics endpoint."""

from __future__ import annotations

from controller.errors import VmBackupError


class MetricsListenFailed(VmBackupError):
    """The metrics endpoint cannot listen on the address given (in use, not a local address, no permission)."""

    code = "METRICS_LISTEN_FAILED"
    operation = "serve"
    remediation = (
        "Give `vmbackup serve --metrics` a free HOST:PORT on this machine (e.g. 127.0.0.1:9470); `ss -ltnp` shows "
        "what listens where."
    )
