"""Settings from the environment: an empty URL is an unset one."""

from __future__ import annotations

import pytest

from libs.settings import Settings

URLS = {"KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers", "CLICKHOUSE_URL": "clickhouse_url",
        "DATABASE_URL": "database_url", "REDIS_URL": "redis_url", "SMTP_URL": "smtp_url"}


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_backing_service_url_means_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    for var in URLS:
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert {field: getattr(settings, field) for field in URLS.values()} == dict.fromkeys(URLS.values())


def test_a_set_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "http://clickhouse:8123")
    assert Settings().clickhouse_url == "http://clickhouse:8123"
