"""controller.key (the controller's TLS client key) with group/other bits is refused, like ca.key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.pki.ca import CertificateAuthority
from controller.pki.exceptions import ControllerKeyExposed


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_exposed_controller_key_refused(tmp_path: Path, mode: int) -> None:
    """Loading the stored client pair refuses a readable key with the code and a chmod remediation."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    first = ca.controller_client_cert()
    key = tmp_path / "controller.key"
    key.chmod(mode)
    with pytest.raises(ControllerKeyExposed) as ei:
        ca.controller_client_cert()
    assert ei.value.code == "PKI_CONTROLLER_KEY_EXPOSED" and str(key) in ei.value.message
    assert "chmod 600 $VMBACKUP_HOME/pki/controller.key" in ei.value.remediation
    # the key was neither replaced nor re-moded behind the user's back
    assert stat.S_IMODE(os.stat(key).st_mode) == mode and key.read_bytes() == first.key_pem
    key.chmod(0o600)
    assert ca.controller_client_cert().serial == first.serial
