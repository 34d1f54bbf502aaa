"""Run a directory's tests once per ClickHouse adapter, with the same assertions.

A conftest.py that sets `pytest_generate_tests = per_adapter` parametrizes the session-scoped `adapter`
fixture (tests/conftest.py) of each of its tests that uses it (through `stack`, `client` or `settings`):
`[chdb]` runs the services on chDB in this process, `[clickhouse-http]` on clickhouse-connect over
ClickHouse's HTTP interface (the embedded server, or the one CLICKHOUSE_URL or a Docker container gives).

The adapter the session's engines give anyway (chDB, unless a ClickHouse server is configured) is the
parameter None, the value the rest of the suite uses: those tests share the session's stack. The other
adapter gets a stack of its own, which replaces the session's for its tests; they run last
(`last_the_other_adapter`), so that happens once.

A test that only means something for one adapter carries `@pytest.mark.adapters("chdb")`, with a
comment saying why.
"""

from __future__ import annotations

import functools
import os

import pytest

from tests.containers import docker_available

ADAPTERS = ("chdb", "clickhouse-http")


@functools.cache
def session_adapter() -> str:
    """The adapter of the session's engines (tests/conftest.py `engines`)."""
    return "clickhouse-http" if os.environ.get("CLICKHOUSE_URL") or docker_available()[0] else "chdb"


def per_adapter(metafunc: pytest.Metafunc) -> None:
    if "adapter" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("adapters")
    params = [pytest.param(None if name == session_adapter() else name, id=name)
              for name in (marker.args if marker else ADAPTERS)]
    metafunc.parametrize("adapter", params, indirect=True, scope="session")


def last_the_other_adapter(items: list[pytest.Item]) -> None:
    """Move the tests of the adapter that needs its own stack to the end, in their order."""
    callspec = lambda item: getattr(item, "callspec", None)  # noqa: E731
    items.sort(key=lambda item: callspec(item) is not None and callspec(item).params.get("adapter") is not None)
