"""The agent ships alone: importing it must not pull in controller/ or controller-only libraries."""

from __future__ import annotations

import subprocess
import sys


def test_agent_imports_nothing_from_controller() -> None:
    """After importing the whole agent, no controller, cryptography, libvirt or paramiko module is loaded."""
    code = (
        "import sys, agent.main; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('controller', 'cryptography', 'libvirt', 'paramiko', 'rich')); print(bad); "
        "print(sys.dont_write_bytecode)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = proc.stdout.split("\n")
    assert out[0] == "[]", f"agent imported controller-side modules: {out[0]}"
    assert out[1] == "True"  # set by agent.main at import: no .pyc writes while frozen
