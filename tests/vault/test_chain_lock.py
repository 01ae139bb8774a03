"""A backup holds its VM's chain still (merge.chain_lock): deleting the newest point meanwhile waits, so the new
incremental never loses its backing file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from controller.vault import merge
from controller.vault.vault import Vault
from tests.vault.chain_helpers import VM, build_chain


def test_delete_waits_for_the_backup_holding_the_chain(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    pts = build_chain(vault, n=2)
    newest = pts[-1]
    done = threading.Event()

    def delete() -> None:
        vault.delete_point(newest)
        done.set()

    with merge.chain_lock(vault, VM):
        t = threading.Thread(target=delete)
        t.start()
        time.sleep(0.5)
        assert not done.is_set(), "a delete went ahead while a backup held the chain"
        assert newest.path.is_dir()
    t.join(timeout=30)
    assert done.is_set() and not newest.path.exists()


def test_chain_lock_of_a_vm_without_points_holds_nothing(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    with merge.chain_lock(vault, VM):
        assert not (tmp_path / "vault" / VM).exists()
