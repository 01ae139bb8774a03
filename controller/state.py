"""What a command or job works on: settings, one state-database connection, the vault, libvirt connections.

One :class:`State` is opened per command (or per job of ``vmbackup serve``) and closed when it ends, so every
connection it opened is closed exactly once. Usage::

    with open_state() as st:                        # settings.load() unless settings are given
        jobs = JobStore(st.db)                      # the one connection to state.db (opened on first use)
        st.vault.list_points()                      # Vault(settings.vault)
        dom = lookup(st.libvirt(uri), name)         # opened on first use per URI (default: settings.uri)
    # here the DB and every libvirt connection it opened are closed

The long-lived objects (``Restorer``, ``BootChecker``, ``Registrar``, ``Unregistrar``, ``BackupEngine``,
``ProtectionService``: :class:`StateUser`) take either a State, which they borrow, or Settings, from which they
open a State of their own and close it in their ``close()`` / at the end of their ``with`` block. Functions that
take either (``recover``, ``prune``) use ``with using(source) as st:``, which closes only what it opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cached_property
from typing import TYPE_CHECKING, Self

from controller import db
from controller import settings as settings_mod
from controller.settings import Settings
from controller.vault import Vault

if TYPE_CHECKING:  # libvirt is loaded on first use: commands that only read the state database never import it
    import libvirt


class State:
    """Settings plus the resources opened for them; :meth:`close` closes the DB and the libvirt connections."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._db: sqlite3.Connection | None = None
        self._libvirt: dict[str, libvirt.virConnect] = {}
        self.closed = False

    @property
    def db(self) -> sqlite3.Connection:
        """The one connection to state.db (opened, and the schema migrated, on first use)."""
        if self.closed:
            raise RuntimeError("this State is closed")
        if self._db is None:
            self._db = db.connect(self.settings.db_path)
        return self._db

    @cached_property
    def vault(self) -> Vault:
        """The vault named by the settings."""
        return Vault(self.settings.vault)

    def libvirt(self, uri: str | None = None) -> libvirt.virConnect:
        """A libvirt connection to uri (default: the settings' URI), opened once and closed with the state."""
        if self.closed:
            raise RuntimeError("this State is closed")
        uri = uri or self.settings.uri
        conn = self._libvirt.get(uri)
        if conn is None:
            from controller.virt.connection import open_connection

            conn = self._libvirt[uri] = open_connection(uri)
        return conn

    def close(self) -> None:
        """Close the DB connection and every libvirt connection; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._libvirt:
            import libvirt  # already loaded: it opened these connections

            for conn in self._libvirt.values():
                with suppress(libvirt.libvirtError):
                    conn.close()
            self._libvirt.clear()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_state(settings: Settings | None = None) -> Iterator[State]:
    """``with open_state() as st:`` a State for these settings (default: settings.load()), closed at exit."""
    st = State(settings or settings_mod.load())
    try:
        yield st
    finally:
        st.close()


@contextmanager
def using(source: Settings | State) -> Iterator[State]:
    """``with using(settings_or_state) as st:`` a given State as is (left open), or one opened and closed here."""
    st, owned = borrow(source)
    try:
        yield st
    finally:
        if owned:
            st.close()


def borrow(source: Settings | State) -> tuple[State, bool]:
    """(state, owned): a given State is borrowed (owned False); for Settings a new State is opened (owned True)."""
    if isinstance(source, State):
        return source, False
    return State(source), True


class StateUser:
    """Base of the long-lived objects: they work on a borrowed State, or on one they opened and :meth:`close`."""

    state: State
    _owns_state: bool = False

    def _use_state(self, source: Settings | State) -> State:
        """Borrow source if it is a State, else open one for these Settings (closed by :meth:`close`)."""
        self.state, self._owns_state = borrow(source)
        return self.state

    def close(self) -> None:
        """Close the State this object opened itself; a borrowed one stays open for its owner."""
        if self._owns_state:
            self.state.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
