"""The web dashboard's access token: generated once into ``$VMBACKUP_HOME/web-token`` (mode 0600), then reused.

Usage::

    token = load_or_create(settings)       # the token text (32 random bytes, urlsafe base64)
    matches(given, token)                  # constant-time comparison
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from controller.settings import Settings
from controller.web.exceptions import WebTokenInsecure

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def token_path(settings: Settings) -> Path:
    """Where the token lives."""
    return settings.home / "web-token"


def load_or_create(settings: Settings) -> str:
    """The token, created (O_EXCL, mode 0600) if there is none; WEB_TOKEN_INSECURE if the file is unsafe."""
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return _read(path)


def _read(path: Path) -> str:
    """Read an existing token file, refusing a symlink, group/other permissions, or a malformed token."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise WebTokenInsecure(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise WebTokenInsecure(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: other users may read it")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not _TOKEN_RE.match(text):
        raise WebTokenInsecure(f"{path} does not hold a token")
    return text


def matches(given: str | None, token: str) -> bool:
    """True if given is the token (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
