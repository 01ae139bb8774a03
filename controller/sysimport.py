"""Import a Python binding that only Debian packages (python3-guestfs, python3-libnbd) into the project's venv.

The venv is CPython 3.11 like Debian's and has no system site-packages; Debian's dist-packages is appended to
sys.path (after the venv's own packages) only when the plain import fails::

    guestfs = import_system_module("guestfs")     # ImportError if neither works
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

DEBIAN_DIST = "/usr/lib/python3/dist-packages"


def import_system_module(name: str) -> ModuleType:
    """The module, importable directly or from Debian's dist-packages; ImportError if neither."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    if DEBIAN_DIST not in sys.path:
        sys.path.append(DEBIAN_DIST)
    return importlib.import_module(name)
