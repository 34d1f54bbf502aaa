"""services/runner.py: which services may share, or not share, a process."""

from __future__ import annotations

import pytest

from libs.settings import Settings
from services.runner import StartupError, check_chdb_placement, select_services


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_clickhouse_url_is_unset_so_query_alone_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """`CLICKHOUSE_URL=` (as `export CLICKHOUSE_URL=` or an empty line of an env file leaves it) means
    chDB in this process, as an unset one does: query alone would read a chDB no aggregator writes to."""
    monkeypatch.setenv("CLICKHOUSE_URL", value)
    settings = Settings()
    assert settings.clickhouse_url is None
    for names in ("query", "aggregator", "aggregator,gateway"):
        with pytest.raises(StartupError, match="CLICKHOUSE_URL"):
            check_chdb_placement(settings, select_services(names))
    check_chdb_placement(settings, select_services("aggregator,query"))


def test_with_a_clickhouse_url_every_service_may_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "http://127.0.0.1:8123/analytics")
    settings = Settings()
    for name in ("query", "aggregator", "gateway", "auth", "notifier"):
        check_chdb_placement(settings, select_services(name))
