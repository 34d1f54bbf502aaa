"""What an alert may watch, shared by auth (which validates and stores alerts) and the query service
(which checks them): the web stats metrics and filters of services/query/stats.py (a test keeps the
two lists equal), a custom metric's statistics, and the windows."""

from __future__ import annotations

from typing import Literal

STATS_METRICS = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration", "events")
STATS_FILTERS = ("page", "event_name", "entry_page", "exit_page", "source", "referrer", "utm_source", "utm_medium",
                 "utm_campaign", "utm_term", "utm_content", "device", "browser", "os", "country")
AlertMetric = Literal["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration", "events",
                      "custom"]
CustomStat = Literal["avg", "sum", "count", "min", "max"]
Condition = Literal["above", "below", "spike"]
Channel = Literal["email", "webhook"]
WindowName = Literal["5m", "15m", "1h", "6h", "1d", "7d"]
WINDOWS: dict[str, int] = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400, "7d": 604800}
SPIKE_BASELINE_S = 7 * 86400  # a spike compares the window with the same window a week before


def window_name(seconds: int) -> str:
    return next((name for name, s in WINDOWS.items() if s == seconds), f"{seconds}s")
