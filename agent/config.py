"""The agent's YAML config: load, validate (file, field, what is allowed), and the documented limits.

Example (all keys optional except the three TLS paths)::

    listen_address: 0.0.0.0          # where the gRPC server listens
    port: 7470                       # 0 = any free port (tests)
    tls_cert: /etc/vmbackup-agent/tls/agent.crt
    tls_key: /etc/vmbackup-agent/tls/agent.key    # must be mode 0600 (no group/other access)
    tls_ca: /etc/vmbackup-agent/tls/ca.crt        # the controller CA: only clients it signed may connect
    hooks_dir: /etc/vmbackup-agent/hooks.d
    freeze_timeout_s: 10             # default watchdog: auto-thaw when Thaw does not come
    max_freeze_timeout_s: 60         # the largest timeout a Freeze may ask for (hard ceiling 60)
    hook_timeout_s: 30               # a hook running longer is killed (its whole process group)
    allowed_mount_points: []         # non-empty: only these may ever be frozen (tests, cautious setups)
    vss_backup_type: COPY            # Windows only: COPY (keeps in-guest backup chains) or FULL
    expedite_rcu: true               # /sys/kernel/rcu_expedited on while the FIFREEZEs run (quiesce/rcu.py)
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.contract import AGENT_PORT
from agent.exceptions import ConfigInvalid

DEFAULT_CONFIG_PATH = Path("/etc/vmbackup-agent/config.yaml")
DEFAULT_PORT = AGENT_PORT
#: The watchdog default when neither config nor request sets one.
DEFAULT_FREEZE_TIMEOUT_S = 10.0
#: Hard ceiling for any freeze: a guest is never frozen longer than this.
MAX_FREEZE_TIMEOUT_S = 60.0
MAX_HOOK_TIMEOUT_S = 300.0
VSS_BACKUP_TYPES = ("COPY", "FULL")


@dataclass(frozen=True)
class AgentConfig:
    """Validated agent settings."""

    tls_cert: Path
    tls_key: Path
    tls_ca: Path
    listen_address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    hooks_dir: Path = Path("/etc/vmbackup-agent/hooks.d")
    freeze_timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S
    max_freeze_timeout_s: float = MAX_FREEZE_TIMEOUT_S
    hook_timeout_s: float = 30.0
    allowed_mount_points: tuple[str, ...] = field(default_factory=tuple)
    vss_backup_type: str = "COPY"
    expedite_rcu: bool = True  # expedited RCU grace periods while the FIFREEZEs run (agent/quiesce/rcu.py)


_KEYS = {
    "listen_address", "port", "tls_cert", "tls_key", "tls_ca", "hooks_dir", "freeze_timeout_s",
    "max_freeze_timeout_s", "hook_timeout_s", "allowed_mount_points", "vss_backup_type", "expedite_rcu",
}


def load_config(path: Path) -> AgentConfig:
    """Read and validate the YAML file at ``path``; raise ConfigInvalid naming the file and field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigInvalid(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigInvalid(f"{path}: must be a mapping of settings, got {type(raw).__name__}")
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> AgentConfig:
    """Validate a parsed config mapping."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigInvalid(f"{source}: unknown field(s) {unknown}; allowed: {sorted(_KEYS)}")
    for key in ("tls_cert", "tls_key", "tls_ca"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigInvalid(f"{source}: field {key!r} is required: the path of a PEM file")
    max_timeout = _number(raw, "max_freeze_timeout_s", MAX_FREEZE_TIMEOUT_S, source, 1.0,
                          MAX_FREEZE_TIMEOUT_S)
    cfg = AgentConfig(
        tls_cert=Path(raw["tls_cert"]),
        tls_key=Path(raw["tls_key"]),
        tls_ca=Path(raw["tls_ca"]),
        listen_address=_address(raw.get("listen_address", "0.0.0.0"), source),
        port=_port(raw.get("port", DEFAULT_PORT), source),
        hooks_dir=Path(_string(raw, "hooks_dir", "/etc/vmbackup-agent/hooks.d", source)),
        freeze_timeout_s=_number(raw, "freeze_timeout_s", DEFAULT_FREEZE_TIMEOUT_S, source, 1.0, max_timeout),
        max_freeze_timeout_s=max_timeout,
        hook_timeout_s=_number(raw, "hook_timeout_s", 30.0, source, 0.1, MAX_HOOK_TIMEOUT_S),
        allowed_mount_points=_mount_list(raw.get("allowed_mount_points", []), source),
        vss_backup_type=_vss_type(raw.get("vss_backup_type", "COPY"), source),
        expedite_rcu=_bool(raw, "expedite_rcu", True, source),
    )
    return cfg


def check_tls_files(cfg: AgentConfig) -> None:
    """Refuse to start when a TLS file is missing or the key is readable by group/other."""
    for name in ("tls_cert", "tls_key", "tls_ca"):
        p: Path = getattr(cfg, name)
        if not p.is_file():
            raise ConfigInvalid(f"{name}: {p} does not exist or is not a file")
    mode = stat.S_IMODE(os.stat(cfg.tls_key).st_mode)
    if mode & 0o077:
        raise ConfigInvalid(
            f"tls_key: {cfg.tls_key} has mode {mode:04o}; it must be 0600",
            remediation=f"chmod 600 {cfg.tls_key}, then restart vmbackup-agent.",
        )


def _bool(raw: dict[str, Any], key: str, default: bool, source: str) -> bool:
    """A true/false field."""
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigInvalid(f"{source}: field {key!r} must be true or false, got {value!r}")
    return value


def _string(raw: dict[str, Any], key: str, default: str, source: str) -> str:
    """A non-empty string field."""
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigInvalid(f"{source}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _number(raw: dict[str, Any], key: str, default: float, source: str, lo: float, hi: float) -> float:
    """A number field within [lo, hi]."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigInvalid(
            f"{source}: field {key!r} must be a number of seconds in [{lo:g}, {hi:g}], got {value!r}"
        )
    return float(value)


def _address(value: Any, source: str) -> str:
    """An IPv4/IPv6 literal to listen on."""
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError) as exc:
        raise ConfigInvalid(f"{source}: field 'listen_address' must be an IP address, got {value!r}") from exc


def _port(value: Any, source: str) -> int:
    """A TCP port (0 = any free port)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigInvalid(f"{source}: field 'port' must be an integer in [0, 65535], got {value!r}")
    return value


def _mount_list(value: Any, source: str) -> tuple[str, ...]:
    """A list of absolute mount point paths."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("/") for v in value):
        raise ConfigInvalid(f"{source}: field 'allowed_mount_points' must be a list of absolute paths")
    return tuple(os.path.normpath(v) for v in value)


def _vss_type(value: Any, source: str) -> str:
    """COPY or FULL."""
    if value not in VSS_BACKUP_TYPES:
        raise ConfigInvalid(
            f"{source}: field 'vss_backup_type' must be one of {VSS_BACKUP_TYPES}, got {value!r}"
        )
    return str(value)
