"""Fixtures of the retention, prune and schedule tests: the policy tests' state fixtures (tests/fixtures_state.py)."""

from tests.fixtures_state import _private_home, add_point, conn, register  # noqa: F401  (fixtures)
