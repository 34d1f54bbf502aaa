"""The ClickHouse tables as a contract between services: the aggregator writes them, the query service
reads them, and both apply these migrations at start (idempotent; recorded under the component
`analytics` in schema_migrations, so a data directory migrated before keeps its history)."""

from __future__ import annotations

from pathlib import Path

from libs.clickhouse import ClickHouse
from libs.migrations import apply_clickhouse
from libs.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
COMPONENT = "analytics"


async def migrate_clickhouse(ch: ClickHouse, settings: Settings) -> list[str]:
    """Apply the pending migrations of the events tables; returns the names applied."""
    context = {"retention_days": settings.clickhouse_retention_days}
    return await apply_clickhouse(ch, COMPONENT, MIGRATIONS, context)
