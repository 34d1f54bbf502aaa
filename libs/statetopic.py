"""Following a keyed state topic (each record the whole state of its key, a null value for a key that
is gone) into a table of one's own, declared on the stream skeleton (libs/stream) as a `Batches`
consumer:

* what one fetch brings is one batch of (key, state), in offset order per partition, handed to
  `apply` at once (one call, e.g. one transaction); its offsets are committed right after `apply`
  returned, never before. A record applied twice (a crash between applying and committing) is
  harmless: applying a state is an upsert or a delete.
* a batch the database refuses (`retry_on`, by default what a down, locked-past-its-statement-timeout
  or closed Postgres raises, and `DependencyUnavailable`, what a pool whose connections are all busy
  past its acquire timeout raises) is retried with exactly the same states, with backoff up to 10 s, while
  the partitions are paused (polling goes on, so the group membership is kept) and nothing later is
  read or committed. Any other error (a bug, a state `apply` cannot use) ends the follower with it;
  the service stack restarts its background tasks, and the follower goes on from the last commit.
* an unreadable record (not a JSON object, a key not UTF-8) is skipped with an error log: state
  topics have no dead-letter topic (the skeleton dead-letters only through a `DeadLetters` with one),
  and the next state of the key, or its owner's republishing at start, replaces it.
* stopping, as for every consumer of the skeleton: `stop()` (or cancelling `follow_state_topic`)
  lets the batch in flight finish, applies what is held if the database takes it at once, and commits
  what was applied; the rest is read again at the next start. (`drain()`, which applies the topic up
  to its end offsets first, is there too; the services do not wire it into their stop, since a state
  left unapplied is read again from the last commit.)
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import orjson
from aiokafka import ConsumerRecord

from libs.http import DependencyUnavailable
from libs.logs import get_logger
from libs.settings import Settings
from libs.stores import PG_ERRORS
from libs.stream import Batches, ConsumerSpec, StreamConsumer

log = get_logger(__name__)

BATCH = 500
RETRY_ON: tuple[type[BaseException], ...] = (*PG_ERRORS, DependencyUnavailable)

State = tuple[str, dict[str, Any] | None]
Apply = Callable[[Sequence[State]], Awaitable[None]]


def state_of(record: ConsumerRecord[bytes, bytes]) -> State:
    """(key, state) of a record; state None for a tombstone. ValueError when it cannot be read."""
    key = record.key.decode() if record.key else ""
    if record.value is None:
        return key, None
    state = orjson.loads(record.value)
    if not isinstance(state, dict):
        raise ValueError(f"a state is a JSON object, not {type(state).__name__}")
    return key, state


class StateFollower(StreamConsumer):
    """One member of `group_id` folding `topic` into its owner's table through `apply`."""

    drain_labels = ("state", "states", "applied")

    def __init__(
        self, settings: Settings, topic: str, group_id: str, apply: Apply,
        retry_on: tuple[type[BaseException], ...] = RETRY_ON,
    ) -> None:
        self.apply = apply
        super().__init__(settings, ConsumerSpec(
            topic=topic,
            group_id=group_id,
            strategy=Batches(
                max_messages=BATCH,
                max_age_s=0,  # a fetch is a batch: a state is applied as soon as it is read
                start=lambda partition, first: [],
                add=self._take,
                step=self._apply,
                retry_on=retry_on,
                close_tries=1,  # on stop, what the database does not take at once is read again at start
            ),
            client_options={"max_poll_records": BATCH},
        ))

    def _take(self, states: list[State], record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            states.append(state_of(record))
        except ValueError as exc:  # JSON and UTF-8 decoding errors are ValueErrors too
            log.error("unreadable state record skipped; the next state of its key replaces it",
                      topic=record.topic, partition=record.partition, offset=record.offset, error=str(exc)[:300])

    async def _apply(self, batches: list[list[State]]) -> None:
        states = [state for batch in batches for state in batch]
        if states:
            await self.apply(states)


def into_table(
    pg: asyncpg.Pool, gone_sql: str, upsert_sql: str, values: Callable[[str, dict[str, Any]], Sequence[Any]],
) -> Apply:
    """An `apply` that folds a batch into a Postgres table of its own in one transaction: a state is
    upserted with `upsert_sql` and `values(key, state)`, a tombstone deletes its key (`gone_sql`, $1 the
    key as a UUID)."""

    async def apply(states: Sequence[State]) -> None:
        async with pg.acquire() as conn, conn.transaction():
            for key, state in states:
                if state is None:
                    await conn.execute(gone_sql, uuid.UUID(key))
                else:
                    await conn.execute(upsert_sql, *values(key, state))

    return apply


async def follow_state_topic(
    settings: Settings, topic: str, group_id: str, apply: Apply,
    retry_on: tuple[type[BaseException], ...] = RETRY_ON,
) -> None:
    """Until cancelled: hand every batch of (key, state) read from `topic` to `apply`, then commit it;
    a batch refused with one of `retry_on` is retried until it goes in. A new group starts at the
    topic's beginning, so it sees the latest state of every key still there."""
    await StateFollower(settings, topic, group_id, apply, retry_on).run()
