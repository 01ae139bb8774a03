"""Errors of the web dashboard (`vmbackup serve --http HOST:PORT`)."""

from __future__ import annotations

from controller.errors import VmBackupError


class WebError(VmBackupError):
    """The web dashboard could not start."""

    code = "WEB_FAILED"
    operation = "serve"
    remediation = "Check the --http address and $VMBACKUP_HOME/web-token, then start `vmbackup serve --http` again."


class WebBindRefused(WebError):
    """--http names an address other machines can reach, and --http-public was not given."""

    code = "WEB_BIND_REFUSED"
    remediation = (
        "Serve the dashboard on 127.0.0.1 (e.g. --http 127.0.0.1:8470) and reach it through an SSH tunnel, or, to "
        "serve it on that address on purpose, add --http-public (the token is still required; the traffic is plain "
        "HTTP, so put a TLS proxy in front of it)."
    )


class WebListenFailed(WebError):
    """The dashboard cannot listen on the address given (in use, not an address of this machine, no permission)."""

    code = "WEB_LISTEN_FAILED"
    remediation = (
        "Give `vmbackup serve --http` a free HOST:PORT on this machine (e.g. 127.0.0.1:8470); `ss -ltnp` shows what "
        "listens where."
    )


class WebTokenInsecure(WebError):
    """$VMBACKUP_HOME/web-token is readable by other users, a symlink, or not a token."""

    code = "WEB_TOKEN_INSECURE"
    remediation = (
        "Remove $VMBACKUP_HOME/web-token; `vmbackup serve --show-token` writes a new one (mode 0600). Anyone who read "
        "the old one could see the dashboard."
    )
