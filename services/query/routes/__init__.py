"""The query service's HTTP routes, by area, in the order they are matched (`/events/{event_id}` after
every other `/events/<name>`)."""

from services.query.routes import (
    annotations,
    definitions,
    events,
    journeys,
    metrics,
    paths,
    realtime,
    saved_funnels,
    users,
    web_stats,
)

ROUTERS = [events.router, metrics.router, web_stats.router, journeys.router, paths.router, annotations.router,
           realtime.router, users.router, definitions.router, saved_funnels.router]
