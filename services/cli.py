"""`analytics`: run the services, the embedded infrastructure, or the migrations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import signal
import sys
import time
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from libs import __version__
from libs.embedded import EmbeddedError, EmbeddedStack
from libs.embedded.engines import KAFKA_PORT
from libs.logs import configure_logging
from libs.settings import Settings

app = typer.Typer(help="Self-hostable event analytics: ingest, aggregate, query, notify.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)
EMBEDDED_KAFKA = f"127.0.0.1:{KAFKA_PORT}"  # where `analytics run` and `analytics infra` start Tansu when it is free


def _version(show: bool) -> None:
    if show:
        print(f"analytics {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", callback=_version, is_eager=True)] = False,
) -> None:
    """Self-hostable event analytics: ingest, aggregate, query, notify."""


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else ""  # the field's environment variable
            given = f"={err['input']!r}" if name and isinstance(err.get("input"), str | int | float) else ""
            where = f"{name}{given}: " if name else ""
            console.print(f"[red]configuration error:[/red] {escape(where)}{escape(err['msg'])}; set {name or 'it'} right or unset it")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    return settings


@app.command()
def run(
    services: Annotated[str, typer.Option(help="comma-separated: gateway,auth,query,aggregator,notifier, or all")] = "all",
    port: Annotated[int | None, typer.Option(help=(
        "one port for all selected services; by default all of them share 8000, and a subset listens each on "
        "its own: gateway 8001, auth 8002, query 8003, aggregator 8004, notifier 8005"))] = None,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 in containers)")] = "127.0.0.1",
) -> None:
    """Run services in this process; embedded engines start for every URL that is not set."""
    from services.runner import StartupError, run_services, select_services

    settings = _settings()
    try:
        specs = select_services(services)
        everything = services.strip() in ("", "all")
        with _event_loop_runner() as runner:
            code = runner.run(
                run_services(settings, specs, host=host, port=port, everything=everything, announce=_announce)
            )
    except (StartupError, EmbeddedError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")  # escaped: the hint names `[embedded]`
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _event_loop_runner() -> asyncio.Runner:
    """uvloop when installed (it comes with uvicorn[standard]): the services spend most of their time in
    socket I/O, where it is faster than the default loop (figure: docs/scaling.md). Same loop uvicorn itself would pick."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _announce(text: str) -> None:
    print(text, flush=True)


@app.command()
def infra() -> None:
    """Run only the embedded Kafka, Postgres, Redis, ClickHouse (chDB over ClickHouse's HTTP interface) and SMTP
    sink; print their env vars, so that each service can run in its own process against them."""
    from libs.kafka import ensure_topics

    settings = _settings()
    with console.status("starting embedded Kafka, Postgres, Redis, ClickHouse and the SMTP sink..."):
        try:
            stack = EmbeddedStack.start(settings, ["kafka", "postgres", "redis", "clickhouse", "smtp"])
        except EmbeddedError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
    try:
        asyncio.run(ensure_topics(stack.settings))
        received = _catch_signals()  # before the exports are printed: whoever reads them may stop us at once
        print("# embedded infrastructure is up; in each shell that runs services:", flush=True)
        for line in stack.env_lines():
            print(line, flush=True)
        print(f"export PUBLIC_BASE_URL={shlex.quote(_dashboard_url(settings))}", flush=True)
        print(f"export ANALYTICS_DATA_DIR={settings.data_dir}", flush=True)
        print(
            "# Kafka (Tansu) keeps messages in memory only: Ctrl-C first waits (DRAIN_TIMEOUT_S) until the "
            "aggregator has stored every event and the notifier has sent every mail, then stops everything.",
            flush=True,
        )
        stack.supervise(announce=_announce)  # an engine that dies is restarted, and a line says so
        while not received:
            signal.pause()
        asyncio.run(_wait_for_consumers(stack.settings))
    finally:
        _catch_signals()  # from here on a signal no longer interrupts stopping the engines
        stack.stop()


def _dashboard_url(settings: Settings) -> str:
    """Where mail links lead when each service runs in a process of its own: the query service's
    dashboard on its own port (8003), unless PUBLIC_BASE_URL is set. The notifier writes the links,
    and alone in its process it cannot know where the dashboard is served."""
    from services.query import SERVICE

    if "public_base_url" in settings.model_fields_set:
        return settings.public_base_url
    return f"http://127.0.0.1:{SERVICE.port}"


def _catch_signals() -> list[int]:
    """SIGINT and SIGTERM from now on are noted in the returned list instead of interrupting."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return received


def _say(line: str) -> None:
    print(f"# {line}", flush=True)


async def _wait_for_consumers(settings: Settings) -> None:
    """Before the in-memory Kafka stops: wait until the aggregator's group has committed (stored)
    every event and the notifier's every mail, printing progress, for at most `drain_timeout_s`
    or until a second signal; then say what is lost."""
    from libs.kafka import AGGREGATOR_GROUP, EMAIL_TOPIC, EVENTS_TOPIC, NOTIFIER_GROUP, group_backlog, group_reader

    timeout = settings.drain_timeout_s
    hurry = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, hurry.set)
    _say(
        f"stopping: waiting up to {timeout:g}s (DRAIN_TIMEOUT_S) until the aggregator (group {AGGREGATOR_GROUP}) "
        f"has stored every event of {EVENTS_TOPIC} and the notifier (group {NOTIFIER_GROUP}) "
        f"has sent every mail of {EMAIL_TOPIC}; Ctrl-C again to stop now"
    )
    deadline = time.monotonic() + timeout
    try:
        async with group_reader(settings, AGGREGATOR_GROUP) as events, group_reader(settings, NOTIFIER_GROUP) as mails:
            while True:
                left = await group_backlog(events, EVENTS_TOPIC), await group_backlog(mails, EMAIL_TOPIC)
                if not any(left):
                    _say("nothing left in Kafka: every event stored, every mail sent; stopping")
                    return
                if hurry.is_set() or time.monotonic() >= deadline:
                    why = "second Ctrl-C" if hurry.is_set() else f"gave up after {timeout:g}s"
                    _say(f"{why}; lost: {left[0]} events, {left[1]} mails (the embedded Kafka keeps messages in memory only)")
                    return
                _say(f"waiting: {left[0]} events not yet stored, {left[1]} mails not yet sent "
                     f"({deadline - time.monotonic():.0f}s left)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hurry.wait(), min(1.0, max(0.0, deadline - time.monotonic())))
    except Exception as exc:  # noqa: BLE001 - the engines still stop; say that the loss is unknown
        _say(f"could not read what the consumer groups have left ({exc!r}); stopping, and whatever they had "
             "not stored or sent is lost")


@app.command()
def status(
    kafka: Annotated[str | None, typer.Option(
        metavar="HOST:PORT",
        help="Kafka bootstrap servers; default: KAFKA_BOOTSTRAP_SERVERS, else the one the first service answering uses "
             f"(its /status), else the embedded broker's usual {EMBEDDED_KAFKA}",
    )] = None,
    url: Annotated[list[str] | None, typer.Option(
        "--url",  # named: typer 0.27 names a list option with a metavar after it (--URL)
        metavar="URL",
        help="a service process's base URL, e.g. http://10.0.0.5:8004 (repeat for each); default: http://127.0.0.1 "
             "on ports 8000-8005, leaving out those nothing listens on",
    )] = None,
    group: Annotated[list[str] | None, typer.Option(
        "--group",
        metavar="GROUP",
        help="only this consumer group (repeat for more); default: the platform's groups and every group the broker lists",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document instead of tables")] = False,
) -> None:
    """Show each consumer group's state, members, and per partition its end offset, committed offset,
    lag and owner; then each service's readiness and the consumers it runs (its GET /status).

    Exit code 0 when all is well; 1 when a service is not ready or does not answer (a --url given), a group
    has lag but no member, or Kafka could not be read."""
    from services.runner import ALL_PORT, SERVICES
    from services.status import gather, render

    settings = _settings()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a broker that does not answer is in the report
    if kafka:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": kafka})
    urls = url or [f"http://127.0.0.1:{port}" for port in (ALL_PORT, *sorted(s.port for s in SERVICES.values()))]
    report = asyncio.run(gather(settings, urls, skip_unreachable=not url, groups=group or (), fallback_kafka=EMBEDDED_KAFKA))
    if as_json:
        print(json.dumps(report.as_json(), indent=2), flush=True)
    else:
        # Piped (a script, a file): lines as long as they are, not cut to 80 columns.
        render(report, Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000))
    raise typer.Exit(1 if report.problems else 0)


@app.command()
def migrate() -> None:
    """Apply Postgres and ClickHouse migrations (services also apply them when they start)."""
    from libs.runtime import Runtime
    from services import aggregator, auth

    settings = _settings()
    try:
        stack = EmbeddedStack.start(settings, ["postgres"])
    except EmbeddedError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None

    async def apply() -> None:
        runtime = Runtime(stack.settings)
        try:
            for name in await auth.migrate(runtime):
                console.print(f"postgres: applied {name}")
            for name in await aggregator.migrate(runtime):
                console.print(f"clickhouse: applied {name}")
        finally:
            await runtime.close()

    try:
        asyncio.run(apply())
        console.print("[green]migrations are up to date[/green]")
    finally:
        stack.stop()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
