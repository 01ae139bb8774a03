"""Where the controller keeps its state, and the few settings that can be overridden by environment variables.

=====================  ===============================  ==============================================
variable               default                          meaning
=====================  ===============================  ==============================================
VMBACKUP_HOME          /var/lib/vmbackup                state dir: state.db, config.yaml, pki/, lab/, locks
VMBACKUP_VAULT         $VMBACKUP_HOME/vault             vault directory (recovery points)
VMBACKUP_URI           qemu:///system                   default libvirt connection URI
VMBACKUP_VIRT_TYPE     auto                             kvm | qemu | auto (see controller.lab.host)
VMBACKUP_IMAGE_CACHE   $VMBACKUP_HOME/lab/images        cached lab base images (tests share one cache)
VMBACKUP_SOFT_DELETE   14                               days a deleted point is kept (soft_delete_days, 0: at once)
=====================  ===============================  ==============================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Resolved paths and defaults for one controller process."""

    home: Path
    vault: Path
    uri: str
    virt_type: str
    image_cache: Path
    soft_delete_days: int = 14  #: a deleted (or pruned) point is kept this long before it is purged; 0: at once

    @property
    def db_path(self) -> Path:
        """The SQLite state database (jobs, inventory, registrations, policies)."""
        return self.home / "state.db"

    @property
    def config_path(self) -> Path:
        """The controller's config file (YAML; its `notify` section: controller/notify/config.py)."""
        return self.home / "config.yaml"

    @property
    def pki_dir(self) -> Path:
        """The controller's CA and issued agent certificates."""
        return self.home / "pki"

    @property
    def lab_dir(self) -> Path:
        """Lab images, VM overlays, console logs and the lab SSH key."""
        return self.home / "lab"


def load() -> Settings:
    """Settings from the environment, with the documented defaults."""
    home = Path(os.environ.get("VMBACKUP_HOME", "/var/lib/vmbackup"))
    return Settings(
        home=home,
        vault=Path(os.environ.get("VMBACKUP_VAULT", str(home / "vault"))),
        uri=os.environ.get("VMBACKUP_URI", "qemu:///system"),
        virt_type=os.environ.get("VMBACKUP_VIRT_TYPE", "auto"),
        image_cache=Path(os.environ.get("VMBACKUP_IMAGE_CACHE", str(home / "lab" / "images"))),
        soft_delete_days=_days(os.environ.get("VMBACKUP_SOFT_DELETE", "14")),
    )


def _days(text: str) -> int:
    """A whole number of days >= 0 (VMBACKUP_SOFT_DELETE); INVALID_ARGUMENT otherwise."""
    from controller.errors import InvalidArgument

    if not text.strip().isdigit():
        raise InvalidArgument(f"VMBACKUP_SOFT_DELETE={text!r} is not a whole number of days (e.g. 14, or 0)")
    return int(text)
