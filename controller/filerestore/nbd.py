"""Encrypted points for the appliance: a qemu-storage-daemon exports each LUKS-encrypted disk chain, decrypted and
read-only, over NBD on a unix socket in a private directory; libguestfs attaches the export (protocol nbd) instead
of the file, which it could not open (it cannot pass a qcow2 LUKS key to QEMU).

Every layer of a chain is spelled out (``backing`` nested, each encrypted one with its key-secret: one
``--object secret`` per vault key, read by QEMU from the key file, never from argv). The daemon is SIGKILLed by the
kernel if the controller dies and stopped when the appliance is done.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from controller.filerestore.exceptions import FileRestoreFailed
from controller.vault import keys
from controller.vault.qemuimg import die_with_parent

QSD = "qemu-storage-daemon"
#: the drive format Appliance attaches as an NBD export (its path is the unix socket, its target the export name)
NBD = "nbd"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

Layers = Sequence[tuple[Path, str | None]]  #: a disk's chain, top first: (stored file, vault key id or None)


def chain_node(layers: Layers) -> dict[str, Any]:
    """The read-only blockdev of a qcow2 chain (top first), each encrypted layer with its key-secret."""
    path, kid = layers[0]
    node: dict[str, Any] = {"driver": "qcow2", "read-only": True,
                            "file": {"driver": "file", "filename": str(path), "read-only": True}}  # fmt: skip
    if kid is not None:
        node["encrypt"] = {"format": "luks", "key-secret": keys.secret_id(kid)}
    node["backing"] = chain_node(layers[1:]) if len(layers) > 1 else None
    return node


def qsd_args(disks: dict[str, Layers], sock: Path) -> list[str]:
    """The daemon's arguments: the secrets, one node and one read-only export (named by target) per disk."""
    wanted = [kid for layers in disks.values() for _, kid in layers]
    args = [a for k in keys.keys_for(keys.KeyStore(), wanted) for a in ("--object", k.secret_object())]
    for i, layers in enumerate(disks.values()):
        args += ["--blockdev", json.dumps({**chain_node(layers), "node-name": f"d{i}"})]
    args += ["--nbd-server", f"addr.type=unix,addr.path={sock}"]
    for i, target in enumerate(disks):
        args += ["--export", f"type=nbd,id=e{i},node-name=d{i},name={target},writable=off"]
    return args


@contextlib.contextmanager
def exports(disks: dict[str, Layers]) -> Iterator[Path]:
    """Export every disk (target -> its chain) over NBD; yields the unix socket (export names: the targets)."""
    tmp = Path(tempfile.mkdtemp(prefix="vmb-files-nbd-"))
    sock = tmp / "nbd.sock"
    try:
        proc = subprocess.Popen([QSD, *qsd_args(disks, sock)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else "timed out"
                    raise keys.key_error(str(err), "exporting the encrypted disks") or FileRestoreFailed(
                        f"{QSD} could not export the encrypted disks: {str(err).strip()}"
                    )
                time.sleep(0.05)
            yield sock
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
