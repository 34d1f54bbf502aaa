"""Following a keyed state topic (each record the whole state of its key, a null value for a key that
is gone) into a table of one's own: read in batches, apply a batch, commit its offsets only after it is
applied. A record applied twice (a crash between applying and committing) is harmless: applying a
state is an upsert or a delete.

A failure (the database down) ends the loop with the error; the service stack restarts its
background tasks, and the follower goes on from the last committed offsets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from libs.kafka import make_consumer
from libs.logs import get_logger
from libs.settings import Settings

log = get_logger(__name__)

BATCH = 500


def state_of(record: ConsumerRecord[bytes, bytes]) -> tuple[str, dict[str, Any] | None]:
    """(key, state) of a record; state None for a tombstone."""
    key = record.key.decode() if record.key else ""
    return key, None if record.value is None else orjson.loads(record.value)


async def follow_state_topic(
    settings: Settings, topic: str, group_id: str,
    apply: Callable[[Sequence[tuple[str, dict[str, Any] | None]]], Awaitable[None]],
) -> None:
    """Forever: hand every batch of (key, state) read from `topic` to `apply`, then commit it. A new
    group starts at the topic's beginning, so it sees the latest state of every key still there."""
    consumer = make_consumer(settings, topic, group_id=group_id, max_poll_records=BATCH)
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            for tp, records in batches.items():
                states = []
                for record in records:
                    try:
                        states.append(state_of(record))
                    except orjson.JSONDecodeError:
                        log.error("unreadable state record skipped", topic=topic, offset=record.offset)
                await apply(states)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()
