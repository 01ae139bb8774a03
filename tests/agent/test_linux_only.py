"""The vmbackup agent is Linux-only and says so: on another OS it exits with a clear error before anything imports
fcntl (which Windows lacks), instead of dying on an ImportError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.exceptions import QuiesceUnavailable
from agent.main import EXIT_UNSUPPORTED_OS
from agent.quiesce import select_quiescer


def test_agent_started_on_windows_exits_with_a_clear_error() -> None:
    """Pretend to be Windows (sys.platform win32, no fcntl module) and start the agent's entry point."""
    code = (
        "import sys; sys.platform = 'win32'; sys.modules['fcntl'] = None; "
        "from agent.main import main; main(['--version'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_UNSUPPORTED_OS == 3
    assert "unsupported OS 'win32'" in proc.stderr and "Linux guests only" in proc.stderr
    assert "--quiescer qga" in proc.stderr
    assert "Traceback" not in proc.stderr and "fcntl" not in proc.stderr


def test_fcntl_missing_really_breaks_the_import_without_the_check() -> None:
    """The check above proves something: without it, importing the freeze code on a fcntl-less OS fails."""
    code = "import sys; sys.modules['fcntl'] = None; import agent.quiesce.fsfreeze"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "fcntl" in proc.stderr


def test_select_quiescer_refuses_other_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the agent too: no quiescer but Linux's."""
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(QuiesceUnavailable, match="Linux guests only"):
        select_quiescer(AgentConfig(tls_cert=Path("c"), tls_key=Path("k"), tls_ca=Path("a")))
