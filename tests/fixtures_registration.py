"""Session fixture ``registered_vm``: the shared lab VM with the agent installed over SSH, for real.

Import it from tests/conftest.py with ``pytest_plugins = ["tests.fixtures_registration"]``. It needs the lab
engineer's session fixture ``lab_vm`` and the private ``VMBACKUP_HOME`` the suite sets up.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller import settings
from controller.registration.register import RegisterOptions, RegisterResult, Registrar


def lab_vm_name(lab_vm: Any) -> str:
    """The libvirt name of whatever the ``lab_vm`` fixture yields (a LabVm-like object or a plain name)."""
    return str(getattr(lab_vm, "name", lab_vm))


@pytest.fixture(scope="session")
def registered_vm(lab_vm: Any) -> RegisterResult:
    """Register ``lab_vm`` once per session; backup/restore tests read the registration from state.db."""
    result = Registrar(settings.load()).register(lab_vm_name(lab_vm), RegisterOptions(ssh_wait_s=120))
    print(f"\nregistered {result.registration.vm_name}: timings {result.timings}")
    return result
