"""The copy's idle I/O priority: set for the block, inherited by the threads and processes it starts, restored."""

from __future__ import annotations

import subprocess
import threading

from controller.datapath import ioprio


def test_background_is_idle_for_threads_and_children_then_restored() -> None:
    """Inside: the thread, a thread it starts and a child process (ionice) are in the idle class; after: as before."""
    before = ioprio.current()
    with ioprio.background() as lowered:
        assert lowered, "ioprio_set refused on this host"
        assert ioprio.current() == ioprio.IDLE
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(ioprio.current()))
        worker.start()
        worker.join()
        assert seen == [ioprio.IDLE]
        child = subprocess.run(["ionice", "-p", "0"], capture_output=True, text=True, check=True).stdout
        assert child.strip() == "idle", child
    assert ioprio.current() == before
