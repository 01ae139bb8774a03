"""Running host commands and turning their failures into the lab's typed errors."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from controller.lab.exceptions import LabCommandFailed, LabError


def tail(text: str, lines: int = 15) -> str:
    """The last few lines of a command's output."""
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    cmd: Sequence[str],
    *,
    error: type[LabError] = LabCommandFailed,
    what: str = "",
    timeout: float | None = 1800,
    env: dict[str, str] | None = None,
) -> str:
    """Run cmd, return its stdout; on failure raise `error` carrying the stderr tail."""
    label = what or cmd[0]
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except FileNotFoundError as e:
        raise error(f"{label}: {cmd[0]} is not installed", details={"command": list(cmd)}) from e
    except subprocess.TimeoutExpired as e:
        raise error(f"{label}: timed out after {timeout} s", details={"command": list(cmd)}) from e
    if p.returncode != 0:
        err = tail(p.stderr or p.stdout)
        raise error(
            f"{label} failed (exit {p.returncode}): {err.splitlines()[-1] if err else 'no output'}",
            details={"command": list(cmd), "returncode": p.returncode, "stderr_tail": err},
        )
    return p.stdout
