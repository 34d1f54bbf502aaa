"""Run a directory's tests once per ClickHouse adapter, with the same assertions.

A conftest.py that sets `pytest_generate_tests = per_adapter` parametrizes the session-scoped `adapter`
fixture (tests/conftest.py) of each of its tests that uses it (through `stack`, `client` or `settings`):
`[chdb]` runs the services on chDB in this process, `[clickhouse-http]` on clickhouse-connect over
ClickHouse's HTTP interface (the embedded server, or CLICKHOUSE_URL's). pytest groups the tests by
adapter, so each adapter's stack starts once.

A test that only means something for one adapter carries `@pytest.mark.adapters("chdb")`, with a
comment saying why.
"""

from __future__ import annotations

import pytest

ADAPTERS = ("chdb", "clickhouse-http")


def per_adapter(metafunc: pytest.Metafunc) -> None:
    if "adapter" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("adapters")
    adapters = marker.args if marker else ADAPTERS
    metafunc.parametrize("adapter", adapters, indirect=True, scope="session")
