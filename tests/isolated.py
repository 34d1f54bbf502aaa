"""`python -m tests.isolated --topic T --group G [--hold-commits-s S] run ...`: `analytics run ...` with
the aggregator and the notifier reading topic T as members of consumer group G, so that a test's
process consumes only what that test sends. `--hold-commits-s` makes the notifier wait that long after
each mail before its offset may be committed (a kill then lands between the send and the commit).

The services are the real ones (`services.aggregator.service`, `services.notifier.service`) with other
constructor arguments; the command line after the options is `analytics`'s own."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from services import aggregator, notifier, runner
from services.cli import app
from services.notifier.consumer import EmailConsumer


def holding_commits(seconds: float) -> type[EmailConsumer]:
    class HeldCommits(EmailConsumer):
        async def _handle(self, message: Any) -> None:
            await super()._handle(message)
            await asyncio.sleep(seconds)  # done (sent), but its offset is not committable until this returns

    return HeldCommits


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.isolated", add_help=False)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--hold-commits-s", type=float, default=0)
    options, rest = parser.parse_known_args(argv)
    held = holding_commits(options.hold_commits_s) if options.hold_commits_s else None
    runner.SERVICES[aggregator.NAME] = aggregator.service(options.topic, options.group)
    runner.SERVICES[notifier.NAME] = notifier.service(options.topic, options.group, held)
    app(rest, prog_name="analytics")


if __name__ == "__main__":
    main(sys.argv[1:])
