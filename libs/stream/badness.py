"""Bad messages counted per app (the Kafka key), over the last `window` messages.

Every bad message is dead-lettered. An app whose own recent messages are mostly bad is reported (once)
and its bad messages keep going to the DLQ while every other app's events are stored. Only when most
recent messages are bad *and* they come from most of the apps sending, at least `min_apps` of them,
does the deployment look broken (e.g. a producer or a decoder of the wrong version), and the consumer
stops rather than dead-letter everyone's traffic: no single app can cause that.
"""

from __future__ import annotations

import collections

NO_KEY = "(no key)"


class BadMessages:
    def __init__(self, max_ratio: float, min_bad: int, min_apps: int, window: int = 1000) -> None:
        self.max_ratio = max_ratio
        self.min_bad = min_bad
        self.min_apps = min_apps
        self.size = window
        self.recent: collections.deque[tuple[str, bool]] = collections.deque()
        self.sent: collections.Counter[str] = collections.Counter()  # per app, in the window
        self.bad: collections.Counter[str] = collections.Counter()
        self.bad_total = 0
        self.reported: set[str] = set()  # apps already reported as misbehaving

    def fresh(self) -> BadMessages:
        """A new counter with the same limits."""
        return BadMessages(self.max_ratio, self.min_bad, self.min_apps, self.size)

    @staticmethod
    def app_of(key: bytes | None) -> str:
        return key.decode("utf-8", errors="replace")[:64] if key else NO_KEY

    def record(self, app: str, bad: bool) -> None:
        """Count one message of `app`."""
        if len(self.recent) >= self.size:
            old, was_bad = self.recent.popleft()
            self.sent[old] -= 1
            if was_bad:
                self.bad[old] -= 1
                self.bad_total -= 1
            if not self.sent[old]:
                del self.sent[old]
                self.bad.pop(old, None)
                self.reported.discard(old)
        self.recent.append((app, bad))
        self.sent[app] += 1
        if bad:
            self.bad[app] += 1
            self.bad_total += 1

    def newly_misbehaving(self, app: str) -> bool:
        """True once when `app`'s recent messages became mostly bad (at least `min_bad` of them)."""
        bad = self.bad[app]
        if app in self.reported or bad < self.min_bad or bad / self.sent[app] <= self.max_ratio:
            return False
        self.reported.add(app)
        return True

    def broken(self) -> str | None:
        """What makes the deployment look broken, or None."""
        total = len(self.recent)
        if self.bad_total < self.min_bad or self.bad_total / total <= self.max_ratio:
            return None
        mostly_bad = sum(1 for app, bad in self.bad.items() if bad / self.sent[app] > self.max_ratio)
        if mostly_bad < self.min_apps or mostly_bad / len(self.sent) <= self.max_ratio:
            return None
        return (f"{self.bad_total} of the last {total} messages were invalid, from {mostly_bad} of the "
                f"{len(self.sent)} apps sending")
