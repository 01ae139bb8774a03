"""Fixtures of the policy and protection tests: a private home, a state DB, registered VMs, vault points."""

from tests.fixtures_state import _private_home, add_point, conn, register  # noqa: F401  (fixtures)
