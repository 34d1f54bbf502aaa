"""Every email template renders a subject, a plain-text part and an HTML part from the data its
producers send (auth's key mails and expiry reminders, the report scheduler), and refuses missing data."""

from __future__ import annotations

from typing import Any

import pytest

from libs.notifications import EmailMessage
from services.notifier.mailer import TEMPLATES, PermanentFailure, render

KEYS = [{"kind": "secret", "prefix": "sk_live_abc", "expires_at": "2027-01-01T00:00:00+00:00"},
        {"kind": "write", "prefix": "wk_live_def", "expires_at": None}]
DATA: dict[str, dict[str, Any]] = {
    "welcome": {"username": "ada"},
    "api_key_created": {"username": "ada", "app_name": "Shop", "keys": KEYS},
    "api_key_revoked": {"username": "ada", "app_name": "Shop", "keys": KEYS},
    "api_key_expiring": {"username": "ada", "app_name": "Shop", "expires_at": "2027-01-01T00:00:00+00:00",
                         "keys": KEYS},
    "notification": {"username": "ada", "subject": "Build <done>", "body": "All <b>green</b>."},
    "report": {"username": "ada", "app_name": "Shop", "app_id": "a1", "frequency": "weekly", "subscription_id": "s1",
               "start": "", "end": "", "period": "16 Nov to 22 Nov 2026", "events": 40, "visitors": 7,
               "events_change": 25, "visitors_change": None,
               "top_events": [{"name": "pageview", "count": 30, "visitors": 7}],
               "devices": [{"name": "mobile", "count": 30}]},
    "password_reset": {"username": "ada", "token": "t0k-en_1", "valid_minutes": 60},
    "alert": {"username": "ada", "app_name": "Shop", "app_id": "a1", "alert_id": "x1", "name": "Signups <up>",
              "label": "events", "metric": "events", "window": "1d", "condition": "spike", "threshold": 40.0,
              "value": 50.0, "current": 30.0, "baseline": 20.0, "fired_at": "2026-12-03T12:00:00+00:00"},
}


@pytest.mark.parametrize("template", sorted(DATA))
def test_every_template_has_a_subject_text_and_html(template: str) -> None:
    assert (TEMPLATES / f"{template}.txt").exists() and (TEMPLATES / f"{template}.html").exists()
    mime = render(EmailMessage(to="ada@example.com", template=template, data=DATA[template]),  # type: ignore[arg-type]
                  "Analytics <no-reply@example.org>", "https://analytics.example.org")
    assert mime["Subject"] and "{{" not in mime["Subject"]
    text = mime.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mime.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "{{" not in text + html and "https://analytics.example.org" in html
    assert mime["From"] == "Analytics <no-reply@example.org>" and mime["To"] == "ada@example.com"


def test_html_is_escaped_and_text_is_not() -> None:
    mime = render(EmailMessage(to="ada@example.com", template="notification", data=DATA["notification"]),
                  "a@example.org", "http://x")
    assert mime["Subject"] == "Build <done>"
    assert "All <b>green</b>." in mime.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "All &lt;b&gt;green&lt;/b&gt;." in mime.get_body(("html",)).get_content()  # type: ignore[union-attr]


def test_a_report_shows_changes_and_keys_show_only_prefixes() -> None:
    text = render(EmailMessage(to="ada@example.com", template="report", data=DATA["report"]), "a@example.org",
                  "http://x").get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Events: 40 (+25% vs the period before)" in text and "Unique visitors: 7\n" in text.replace("\r", "")


def test_missing_template_data_is_a_permanent_failure() -> None:
    with pytest.raises(PermanentFailure, match="api_key_created"):
        render(EmailMessage(to="ada@example.com", template="api_key_created", data={"username": "ada"}),
               "a@example.org", "http://x")


def test_the_password_reset_mail_links_to_the_dashboard_reset_page_with_the_token() -> None:
    mime = render(EmailMessage(to="ada@example.com", template="password_reset", data=DATA["password_reset"]),
                  "a@example.org", "https://analytics.example.org")
    link = "https://analytics.example.org/dashboard#/reset?token=t0k-en_1"
    assert link in mime.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f'href="{link}"' in mime.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert mime["Subject"] == "Reset your Analytics password"


def test_an_alert_says_what_it_saw() -> None:
    spike = render(EmailMessage(to="ada@example.com", template="alert", data=DATA["alert"]), "a@example.org", "http://x")
    assert spike["Subject"] == 'Alert "Signups <up>" for Shop: events +50.0%'
    text = spike.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "events over the last 1d: 30.0, against 20.0 in the same window a week before: +50.0% (threshold 40.0%)." in text
    assert "DELETE http://x/api/auth/apps/a1/alerts/x1" in text
    assert "Signups &lt;up&gt;" in spike.get_body(("html",)).get_content()  # type: ignore[union-attr]
    below = {**DATA["alert"], "condition": "below", "threshold": 5.0, "value": 3.0, "current": 3.0, "baseline": None}
    mime = render(EmailMessage(to="ada@example.com", template="alert", data=below), "a@example.org", "http://x")
    assert mime["Subject"] == 'Alert "Signups <up>" for Shop: events 3.0'
    assert "events over the last 1d: 3.0, below the threshold of 5.0." in mime.get_body(("plain",)).get_content()  # type: ignore[union-attr]
