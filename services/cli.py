"""`analytics`: run the services, the embedded infrastructure, or the migrations."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from libs.embedded import DataDirBusy, EmbeddedStack
from libs.logs import configure_logging
from libs.settings import Settings

app = typer.Typer(help="Self-hostable event analytics: ingest, aggregate, query, notify.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]configuration error:[/red] {err['msg']}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    return settings


@app.command()
def run(
    services: Annotated[str, typer.Option(help="comma-separated: gateway,auth,query,aggregator,notifier, or all")] = "all",
    port: Annotated[int | None, typer.Option(help="one port for all selected services")] = None,
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
    except (StartupError, DataDirBusy) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _event_loop_runner() -> asyncio.Runner:
    """uvloop when installed (it comes with uvicorn[standard]): the services spend most of their time in
    socket I/O, where it is about twice as fast as the default loop. Same loop uvicorn itself would pick."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _announce(text: str) -> None:
    print(text, flush=True)


@app.command()
def infra() -> None:
    """Run only the embedded Kafka, Postgres, Redis and SMTP sink; print their env vars."""
    from libs.kafka import ensure_topics

    settings = _settings()
    with console.status("starting embedded Kafka, Postgres, Redis and the SMTP sink..."):
        try:
            stack = EmbeddedStack.start(settings, ["kafka", "postgres", "redis", "smtp"])
        except DataDirBusy as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    try:
        asyncio.run(ensure_topics(stack.settings))
        print("# embedded infrastructure is up; in each shell that runs services:", flush=True)
        for line in stack.env_lines():
            print(line, flush=True)
        print(f"export ANALYTICS_DATA_DIR={settings.data_dir}", flush=True)
        print("# Kafka (Tansu) keeps messages in memory only. Ctrl-C stops everything.", flush=True)
        stack.supervise(announce=_announce)  # an engine that dies is restarted, and a line says so
        _wait_for_signal()
    finally:
        stack.stop()


def _wait_for_signal() -> None:
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not received:
        signal.pause()


@app.command()
def migrate() -> None:
    """Apply Postgres and ClickHouse migrations (services also apply them when they start)."""
    from libs.runtime import Runtime
    from services import aggregator, auth

    settings = _settings()
    try:
        stack = EmbeddedStack.start(settings, ["postgres"])
    except DataDirBusy as exc:
        console.print(f"[red]error:[/red] {exc}")
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
