"""Config validation: clear errors naming the file and field; key file mode; --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__
from agent.config import MAX_FREEZE_TIMEOUT_S, check_tls_files, config_from_dict, load_config
from agent.exceptions import ConfigInvalid

BASE = {"tls_cert": "/x/agent.crt", "tls_key": "/x/agent.key", "tls_ca": "/x/ca.crt"}


def test_defaults() -> None:
    """Only the TLS paths are required; the rest has the documented defaults."""
    cfg = config_from_dict(dict(BASE))
    assert (cfg.listen_address, cfg.port, cfg.freeze_timeout_s) == ("0.0.0.0", 7470, 10.0)
    assert cfg.max_freeze_timeout_s == MAX_FREEZE_TIMEOUT_S == 60.0 and cfg.vss_backup_type == "COPY"
    assert cfg.expedite_rcu is True
    assert config_from_dict({**BASE, "expedite_rcu": False}).expedite_rcu is False


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("port", 70000, "'port'"),
    ("port", "7470", "'port'"),
    ("listen_address", "example.com", "'listen_address'"),
    ("freeze_timeout_s", 0, "'freeze_timeout_s'"),
    ("freeze_timeout_s", 61, "'freeze_timeout_s'"),
    ("max_freeze_timeout_s", 600, "'max_freeze_timeout_s'"),
    ("allowed_mount_points", ["relative"], "'allowed_mount_points'"),
    ("vss_backup_type", "DIFF", "'vss_backup_type'"),
    ("expedite_rcu", "yes", "'expedite_rcu'"),
    ("bogus", 1, "unknown field"),
])
def test_bad_values_name_the_field(field: str, value: object, needle: str) -> None:
    """Each bad value is refused with the field's name in the message."""
    with pytest.raises(ConfigInvalid) as e:
        config_from_dict({**BASE, field: value}, source="/etc/vmbackup-agent/config.yaml")
    assert needle in str(e.value) and "/etc/vmbackup-agent/config.yaml" in str(e.value)


def test_missing_tls_and_bad_yaml(tmp_path: Path) -> None:
    """A missing TLS field and unparsable YAML are clear errors."""
    with pytest.raises(ConfigInvalid, match="'tls_key' is required"):
        config_from_dict({"tls_cert": "/a", "tls_ca": "/b"})
    bad = tmp_path / "c.yaml"
    bad.write_text("port: [1,\n")
    with pytest.raises(ConfigInvalid, match="not valid YAML"):
        load_config(bad)


def test_key_must_be_0600(tmp_path: Path) -> None:
    """A group/other-readable key refuses to start, with chmod in the remediation."""
    for n in ("a.crt", "a.key", "ca.crt"):
        (tmp_path / n).write_text("x")
    (tmp_path / "a.key").chmod(0o644)
    cfg = config_from_dict({"tls_cert": str(tmp_path / "a.crt"), "tls_key": str(tmp_path / "a.key"),
                            "tls_ca": str(tmp_path / "ca.crt")})
    with pytest.raises(ConfigInvalid) as e:
        check_tls_files(cfg)
    assert "0644" in str(e.value) and "chmod 600" in e.value.remediation
    (tmp_path / "a.key").chmod(0o600)
    check_tls_files(cfg)


def test_cli_version_and_bad_config(tmp_path: Path) -> None:
    """`vmbackup-agent --version` prints the version; a bad config exits 2 with a one-line reason."""
    v = subprocess.run([sys.executable, "-m", "agent.main", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and __version__ in v.stdout
    (tmp_path / "c.yaml").write_text("port: 1\n")
    r = subprocess.run([sys.executable, "-m", "agent.main", "--config", str(tmp_path / "c.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "AGENT_CONFIG_INVALID" in r.stderr and "tls_cert" in r.stderr
