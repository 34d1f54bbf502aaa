"""Schemathesis over the whole OpenAPI document of the one-process stack: every operation, fed valid
and invalid input with valid credentials, against the real engines, never answers 5xx, and answers only
as the document says (a documented status, content type, headers and body schema).

The stack is served by uvicorn on this test's event loop (its connections belong to that loop), and
schemathesis sends its requests from a worker thread. Examples per operation are bounded and
derandomized, so a run is reproducible and takes about a minute and a half; to hunt locally, set
SCHEMATHESIS_EXAMPLES to try more and SCHEMATHESIS_RANDOM=1 for new inputs on each run.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from libs.runtime import Stack
from tests.conftest import PASSWORD, register_app, serving, signup_login

pytestmark = pytest.mark.engines

FRAMING_HEADERS = ("content-length", "transfer-encoding", "host", "connection", "expect", "upgrade")
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "20"))  # per operation and generation mode
INGEST_POSTS = {"/api/analytics/collect", "/api/analytics/events", "/api/analytics/metrics"}
# Operations that end what they are given (a session, an app's keys) get a throwaway user and app, so
# the other operations keep valid credentials.
THROWAWAY = {("POST", "/api/user/logout"), ("POST", "/api/auth/revoke"), ("POST", "/api/auth/regenerate")}


@dataclass
class Credentials:
    """What a signed-in user with one registered app holds, and a second user/app for the operations
    that revoke keys or end sessions."""

    token: str
    app_id: str
    secret_key: str
    write_key: str
    throwaway_token: str
    throwaway_app_id: str
    fresh_token: Callable[[], str]  # a new session of the throwaway user, for each logout

    def headers(self, op: APIOperation, example: int) -> dict[str, str]:
        method, path = op.method.upper(), op.path
        if path.startswith("/v1/"):  # Segment: the write key as the Basic username
            return {"authorization": "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()}
        if method == "POST" and path in INGEST_POSTS:
            return {"x-api-key": self.write_key}
        if (method, path) == ("POST", "/api/user/logout"):
            return {"authorization": f"Bearer {self.fresh_token()}"}
        if (method, path) in THROWAWAY:
            return {"authorization": f"Bearer {self.throwaway_token}"}
        if path.startswith("/api/analytics/") and example % 2:  # reads: the secret key, or a Bearer token
            return {"x-api-key": self.secret_key}
        return {"authorization": f"Bearer {self.token}"}

    def apply(self, case: Case, example: int) -> None:
        """Valid credentials and the app's id wherever the operation takes one."""
        op = case.operation
        # Generated credentials (the documented x-api-key header) would take the place of these. Generated
        # framing headers (a `content-length: _ke,...` on a GET) make no HTTP message at all: uvicorn's
        # parser answers them 400 "Invalid HTTP request received." before any route runs, so they test
        # the HTTP server, not an operation; they are left out.
        generated = {k: v for k, v in (case.headers or {}).items()
                     if k.lower() not in ("x-api-key", "authorization", *FRAMING_HEADERS)}
        case.headers = {**generated, **self.headers(op, example)}
        if any(p.name == "app_id" and p.location == "query" for p in op.iter_parameters()):
            case.query = {**(case.query or {}), "app_id": self.app_id}
        if isinstance(case.body, dict) and "app_id" in case.body:  # revoke, regenerate, report subscriptions
            throwaway = (op.method.upper(), op.path) in THROWAWAY
            case.body = {**case.body, "app_id": self.throwaway_app_id if throwaway else self.app_id}


def with_event_shapes(document: dict[str, Any]) -> dict[str, Any]:
    """The ingest routes' bodies, one event or a batch of at most 5 (the document allows 2000), with the
    Segment calls' `type` in the body, so most generated events get past validation into enrichment and
    publishing, quickly."""
    from services.gateway.schemas import COLLECT_EVENT, MetricIn, NamedEvent, inlined
    from services.gateway.segment import SegmentMessage

    def one_or_batch(event: dict[str, Any], key: str) -> dict[str, Any]:
        batch = {"type": "object", "properties": {key: {"type": "array", "items": event, "maxItems": 5}},
                 "required": [key]}
        return {"anyOf": [event, batch]}

    call = inlined(SegmentMessage.model_json_schema())
    shapes = {
        "/api/analytics/collect": one_or_batch(inlined(COLLECT_EVENT.json_schema()), "events"),
        "/api/analytics/events": one_or_batch(inlined(NamedEvent.model_json_schema()), "events"),
        "/api/analytics/metrics": one_or_batch(inlined(MetricIn.model_json_schema()), "events"),
        "/v1/batch": {"type": "object", "properties": {"batch": {"type": "array", "items": call, "maxItems": 5}},
                      "required": ["batch"]},
    }
    needs = {"track": ["event"], "group": ["groupId"], "alias": ["previousId"]}  # SegmentMessage's own checks
    for name in ("track", "page", "screen", "identify", "group", "alias"):
        shapes[f"/v1/{name}"] = {**call, "properties": {**call["properties"], "type": {"const": name}},
                                 "required": ["type", "userId", *needs.get(name, [])]}
    for path, shape in shapes.items():
        document["paths"][path]["post"]["requestBody"] = {"required": True, "content": {"application/json": {"schema": shape}}}
    return document


@dataclass
class Failures:
    found: list[str] = field(default_factory=list)
    per_operation: dict[str, int] = field(default_factory=dict)

    def add(self, label: str, text: str) -> None:
        self.per_operation[label] = self.per_operation.get(label, 0) + 1
        if self.per_operation[label] <= 3:  # the first few of each operation are enough to debug it
            self.found.append(f"{label}: {text}")


def fuzz_operation(op: APIOperation, mode: GenerationMode, base_url: str, creds: Credentials,
                   session: requests.Session, failures: Failures) -> int:
    """Sends EXAMPLES generated cases of `op`; each 5xx (or dropped answer) is recorded, none raised,
    so hypothesis never shrinks and every example runs."""
    sent = 0

    @settings(max_examples=EXAMPLES, derandomize=not os.environ.get("SCHEMATHESIS_RANDOM"), database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case: Case) -> None:
        nonlocal sent
        creds.apply(case, sent)
        sent += 1
        try:
            response = case.call(base_url=base_url, session=session, timeout=30)
        except requests.RequestException as exc:
            failures.add(op.label, f"no complete answer ({exc!r}); {case.as_curl_command(base_url=base_url)}")
            return
        if response.status_code >= 500:
            failures.add(op.label, f"{response.status_code} {response.text[:300]}; "
                                   f"{case.as_curl_command(base_url=base_url)}")
            return
        try:  # the answer is one the document describes: its status, content type, headers and body
            case.validate_response(response, checks=CONFORMANCE)
        except BaseExceptionGroup as exc:  # schemathesis raises its failures as one group
            failures.add(op.label, f"{response.status_code} not as documented: {str(exc)[:600]}; "
                                   f"{case.as_curl_command(base_url=base_url)}")

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # No input of this operation can break its schema (nothing to send, or any string fits).
    return sent


def fuzz_all(operations: list[APIOperation], base_url: str, creds: Credentials) -> tuple[Failures, dict[str, int]]:
    failures, sent = Failures(), {}
    with requests.Session() as session:
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                sent[f"{op.label} {mode}"] = fuzz_operation(op, mode, base_url, creds, session, failures)
    return failures, sent


async def test_no_operation_answers_a_server_error(stack: Stack, client: httpx.AsyncClient, caplog) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner)
    throwaway = await signup_login(client)
    throwaway_app = await register_app(client, throwaway, "doomed")
    loop = asyncio.get_running_loop()

    async def login() -> str:
        r = await client.post("/api/user/login", json={"username": throwaway["username"], "password": PASSWORD})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def fresh_token() -> str:  # called from the worker thread: the login runs on the stack's loop
        done: Future[str] = asyncio.run_coroutine_threadsafe(login(), loop)
        return done.result(timeout=30)

    creds = Credentials(owner["access_token"], app["app_id"], app["api_key"], app["write_key"],
                        throwaway["access_token"], throwaway_app["app_id"], fresh_token)
    document = (await client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(with_event_shapes(document))
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert {(op.method.upper(), op.path) for op in operations} == documented  # nothing left out

    with caplog.at_level(logging.ERROR):
        async with serving(stack.app()) as base_url:
            failures, sent = await asyncio.to_thread(fuzz_all, operations, base_url, creds)
    idle = [label for label, n in sent.items() if not n and label.endswith(str(GenerationMode.POSITIVE))]
    assert not idle, f"operations that sent nothing: {idle}"
    assert not failures.found, f"server errors per operation {failures.per_operation}:\n" + "\n".join(failures.found)
    bugs = [r.msg for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bugs, f"errors logged while fuzzing: {bugs[:5]}"
