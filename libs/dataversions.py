"""Per-app data versions in Redis: how the query cache knows that new events were stored.

The aggregator bumps them after each insert that succeeded, before it commits the offsets
(services/aggregator/versions.py); the query service puts them into its cache keys
(services/query/cache.py), so a cached answer is never older than the newest write of its app:

* `query:live:<app>` is bumped on every write that holds an event (or metric) of the app. Answers
  over a range that reaches now (`reaches_now`) are keyed by it.
* `query:late:<app>` is bumped only when such a write holds an event whose timestamp is older than
  LATE_AFTER at the time of the write (an offline client, a replay after an outage). Answers over a
  closed range are keyed by it, so they stay cached while live traffic flows. Why that is enough: an
  answer over a range ending at e was cached at c with e < c - LIVE_WINDOW. An event written later, at
  w > c, that is not late has a timestamp t >= w - LATE_AFTER > c - LIVE_WINDOW > e, so it is not in
  the range (the minute between LATE_AFTER and LIVE_WINDOW absorbs clock skew between the machines).
* `query:gen:<app>` is bumped by a privacy deletion (services/query/routes/users.py); every answer is keyed by it.

A version only grows. The keys have no TTL: Redis must not evict keys without one (its default
`noeviction`, or a `volatile-*` policy), or a version could start again at a number already used.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

GENERATION = "query:gen:"
LIVE = "query:live:"
LATE = "query:late:"

LIVE_WINDOW = timedelta(minutes=5)
LATE_AFTER = timedelta(minutes=4)


def reaches_now(end: datetime) -> bool:
    """Whether a range ending at `end` is live: its answers may change with any new event."""
    return end >= datetime.now(UTC) - LIVE_WINDOW
