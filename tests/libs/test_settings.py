"""Settings from the environment: an empty URL is an unset one."""

from __future__ import annotations

import re

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


def test_openid_sign_in_is_off_until_a_client_is_set_and_google_is_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().oidc_enabled
    monkeypatch.setenv("OIDC_CLIENT_ID", "1234.apps.googleusercontent.com")
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "a-secret")
    google = Settings()
    assert google.oidc_enabled and google.oidc_issuer_url == "https://accounts.google.com" and google.oidc_name == "Google"
    monkeypatch.setenv("OIDC_ISSUER", "https://login.example.com/realms/staff/")
    other = Settings()
    assert other.oidc_issuer_url == "https://login.example.com/realms/staff" and other.oidc_name == "login.example.com"
    monkeypatch.setenv("OIDC_PROVIDER_NAME", "Example SSO")
    assert Settings().oidc_name == "Example SSO"


@pytest.mark.parametrize(("env", "says"), [
    ({"OIDC_CLIENT_ID": "client"}, "OIDC_CLIENT_ID needs OIDC_CLIENT_SECRET"),
    ({"OIDC_ISSUER": "https://login.example.com"}, "need OIDC_CLIENT_ID"),
    ({"OIDC_CLIENT_ID": "c", "OIDC_CLIENT_SECRET": "s", "OIDC_ISSUER": "login.example.com"}, "issuer URL"),
    ({"OIDC_CLIENT_ID": "c", "OIDC_CLIENT_SECRET": "s", "OIDC_ISSUER": "http://login.example.com",
      "ANALYTICS_ENV": "production", "JWT_SECRET": "x" * 40}, "https:// OIDC_ISSUER"),
])
def test_an_incomplete_openid_configuration_stops_the_start_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=re.escape(says)):
        Settings()
