"""A Python client generated from the stack's OpenAPI document by openapi-python-client, as README.md
("API") says, with docs/openapi-python-client.yaml: the generator reports no warning and no error, and
the client's own functions and typed models carry a whole flow against the running stack: sign up,
log in, register an app (Bearer token), collect an event (the app's x-api-key) and read the event's
summary and the user's export back."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from libs.runtime import Stack
from tests.conftest import PASSWORD, serving, unique
from tests.e2e import ROOT

pytestmark = pytest.mark.engines

CONFIG = ROOT / "docs" / "openapi-python-client.yaml"
PACKAGE = "analytics_client"  # package_name_override in CONFIG


def generate(document: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`openapi-python-client generate` with the venv's tools on PATH (its post-hooks run ruff)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
               "--output-path", str(out), "--meta", "none", "--config", str(CONFIG)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for the generated package; its modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_signs_up_registers_an_app_collects_and_reads_the_summary(stack: Stack, importable: Path) -> None:
    async with serving(stack.app()) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.get("/openapi.json")
        assert r.status_code == 200, r.text
        document = importable / "openapi.json"
        document.write_text(r.text)
        out = await asyncio.to_thread(generate, document, importable / PACKAGE)
        said = out.stdout + out.stderr
        assert out.returncode == 0, said
        assert "warning" not in said.lower() and "error" not in said.lower(), said
        assert out.stdout.split() == ["Generating", str(importable / PACKAGE)], said

        client, models = module("client"), module("models")
        sign_up, log_in = module("api.account.sign_up"), module("api.account.log_in")
        register_app, collect_event = module("api.apps.register_app"), module("api.ingest.collect_event")
        get_event_summary, export_user = module("api.events.get_event_summary"), module("api.privacy.export_user")

        username = unique("gen")
        async with client.Client(base_url=base, raise_on_unexpected_status=True) as anonymous:
            signed_up = await sign_up.asyncio(
                client=anonymous, body=models.SignupIn(username=username, email=f"{username}@example.com", password=PASSWORD))
            assert isinstance(signed_up, models.SignupOut), signed_up
            assert signed_up.email == f"{username}@example.com"
            tokens = await log_in.asyncio(client=anonymous, body=models.LoginIn(username=username, password=PASSWORD))
            assert isinstance(tokens, models.TokenPair), tokens
            assert tokens.token_type == "bearer" and tokens.expires_in > 0

        async with client.AuthenticatedClient(base_url=base, token=tokens.access_token, raise_on_unexpected_status=True) as owner:
            app = await register_app.asyncio(client=owner, body=models.RegisterAppIn(name="generated client"))
            assert isinstance(app, models.RegisterAppOut), app
            assert app.name == "generated client" and app.api_key.startswith("sk_") and app.write_key.startswith("wk_")

        async with client.AuthenticatedClient(base_url=base, token=app.api_key, prefix="", auth_header_name="x-api-key",
                                              raise_on_unexpected_status=True) as keyed:
            event = models.CollectEventCollectEvent(event="signup_clicked", device="mobile", user_id="gen-user-1",
                                                    url="https://example.com/signup")
            accepted = await collect_event.asyncio(client=keyed, body=event)
            assert isinstance(accepted, models.Accepted), accepted
            assert accepted.accepted == 1 and not accepted.errors

            deadline = time.monotonic() + 20  # the aggregator stores the event asynchronously
            while True:
                summary = await get_event_summary.asyncio(client=keyed, event="signup_clicked")
                assert isinstance(summary, models.EventSummary), summary
                if summary.count == 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert summary.count == 1, summary
            assert summary.event == "signup_clicked" and summary.unique_users == 1
            assert summary.device_data.to_dict() == {"mobile": 1}

            # JSON lines, a str through docs/openapi-python-client.yaml's content type override.
            exported = await export_user.asyncio("gen-user-1", client=keyed)
            assert isinstance(exported, str), exported
            rows = [json.loads(line) for line in exported.splitlines()]
            assert [(row["event_name"], row["user_id"], row["device_type"]) for row in rows] == [
                ("signup_clicked", "gen-user-1", "mobile")], rows
