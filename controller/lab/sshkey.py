"""The lab SSH key: an ed25519 key pair generated with cryptography, in OpenSSH format (paramiko loads it).

Its fingerprint: :func:`controller.ssh.client.fingerprint`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def key_path(lab_dir: Path) -> Path:
    """Where the lab private key lives: LAB_DIR/ssh/id_ed25519 (public key beside it, .pub)."""
    return lab_dir / "ssh" / "id_ed25519"


def ensure_key(path: Path) -> str:
    """Create the key pair at path if missing (0600 private key); return the public key line."""
    pub = path.with_name(path.name + ".pub")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        key = Ed25519PrivateKey.generate()
        priv = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        line = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(priv)
        pub.write_text(line.decode() + " vmbackup-lab\n")
        os.replace(tmp, path)
    if not pub.exists():
        loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        line = loaded.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        pub.write_text(line.decode() + " vmbackup-lab\n")
    return pub.read_text().strip()
