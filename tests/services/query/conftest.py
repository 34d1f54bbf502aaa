"""Every test here runs with each ClickHouse adapter (tests/adapters.py)."""

from tests.adapters import per_adapter

pytest_generate_tests = per_adapter
