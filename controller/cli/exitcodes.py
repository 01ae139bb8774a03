"""The exit codes of the ``vmbackup`` CLI (README "Exit codes"); one definition, used by main.py and the commands.

There is no "done with warnings" code: a warning (a crash-consistent point because no quiescer answered, a skipped
disk) is printed on stderr and listed in ``--json`` under ``warnings``, and the command exits 0, so ``set -e``
scripts and schedulers do not treat a usable point as a failure. Policies that require more consistency raise an
alert instead (notify: consistency below the policy's requirement).
"""

from __future__ import annotations

#: The command did what it was asked (warnings, if any, were printed on stderr).
OK = 0
#: The operation failed: a typed error (``error CODE: ...`` plus ``fix: ...`` on stderr), or some of the items
#: (VMs, hosts, points) of a multi-item command failed.
FAILED = 1
#: Usage error: the command line was not understood (unknown command or option, a missing or malformed argument,
#: options that exclude each other); nothing ran. argparse exits with it.
USAGE = 2
#: Interrupted by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130
