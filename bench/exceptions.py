"""Typed errors of the benchmark harness."""

from __future__ import annotations

from controller.errors import VmBackupError


class BenchError(VmBackupError):
    """A benchmark could not run."""

    code = "BENCH_FAILED"
    operation = "benchmark"
    remediation = "Read the message; rerun one benchmark with `python -m bench.run --only NAME`."


class BenchSetupFailed(BenchError):
    """The harness could not prepare a VM, disk or contender."""

    code = "BENCH_SETUP_FAILED"
    operation = "prepare benchmark"
    remediation = "Check `df`, libvirtd (`bash scripts/host-setup.sh`) and the lab image (`vmbackup lab image`)."


class GuestCommandFailed(BenchError):
    """A command run in a lab VM over SSH failed."""

    code = "BENCH_GUEST_COMMAND_FAILED"
    operation = "run a command in the benchmark VM"
    remediation = "Look at the VM's console log; the guest may be out of space or still booting."
