"""The OpenAPI documents, each service's and the one-process stack's: valid OpenAPI 3 (openapi-spec-validator),
one short, stable operationId per operation, a declared tag on each, the credentials each operation accepts
as security schemes, and its error answers as `{"detail": ...}`. Built without starting anything: the
document and the docs pages need no engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from libs.runtime import Stack
from libs.settings import Settings
from services.runner import SERVICES

SCHEMES = {"apiKey", "bearerAuth", "writeKeyBasic"}
# What an operation accepts, by the start of its path (None: no credentials).
PUBLIC = {("POST", "/api/user/signup"), ("POST", "/api/user/login"), ("POST", "/api/user/refresh"),
          ("POST", "/api/user/password-reset"), ("POST", "/api/user/password-reset/confirm")}


def stack() -> Stack:
    built = Stack(Settings(), list(SERVICES.values()))
    built.build()
    return built


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items() for method, op in item.items()]


async def openapi(app: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analytics.test") as http:
        r = await http.get("/openapi.json")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
async def documents() -> dict[str, dict[str, Any]]:
    built = stack()
    found = {spec.name: await openapi(built.app([spec])) for spec in built.specs}
    found["stack"] = await openapi(built.app())
    return found


@pytest.mark.parametrize("name", [*SERVICES, "stack"])
def test_each_document_is_valid_openapi_with_unique_short_operation_ids_and_tags(documents, name: str) -> None:
    document = documents[name]
    validate(document)  # raises on the first problem, naming it
    ids = [op.get("operationId") for _, _, op in operations(document)]
    assert all(ids), [f"{m} {p}" for m, p, op in operations(document) if not op.get("operationId")]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    long_or_odd = [i for i in ids if not re.fullmatch(r"[a-z][A-Za-z]{2,24}", i)]
    assert not long_or_odd, long_or_odd
    declared = {tag["name"] for tag in document.get("tags", [])}
    untagged = [f"{m} {p}" for m, p, op in operations(document) if len(op.get("tags", [])) != 1 or op["tags"][0] not in declared]
    assert not untagged, untagged


def test_operation_ids_name_what_each_operation_does(documents) -> None:
    by_route = {f"{m} {p}": op["operationId"] for m, p, op in operations(documents["stack"])}
    assert by_route["POST /api/analytics/collect"] == "collectEvent"
    assert by_route["GET /api/analytics/event-summary"] == "getEventSummary"
    assert by_route["POST /api/user/signup"] == "signUp"
    assert by_route["POST /api/auth/register"] == "registerApp"
    assert by_route["GET /js/script.js"] == "getSnippet" and by_route["HEAD /js/script.js"] == "headSnippet"
    assert by_route["POST /v1/batch"] == "segmentBatch"
    # The stack's document is the union of the services' own: same ids for the same operations.
    for name in SERVICES:
        for m, p, op in operations(documents[name]):
            assert by_route[f"{m} {p}"] == op["operationId"], (name, m, p)


def test_each_operation_names_the_credentials_it_accepts(documents) -> None:
    document = documents["stack"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key", "description": schemes["apiKey"]["description"]}
    assert schemes["bearerAuth"]["scheme"] == "bearer" and schemes["bearerAuth"]["bearerFormat"] == "JWT"
    assert schemes["writeKeyBasic"]["scheme"] == "basic"
    accepts = {f"{m} {p}": {name for requirement in op.get("security", []) for name in requirement}
               for m, p, op in operations(document)}
    for route, names in accepts.items():
        method, path = route.split(" ", 1)
        if path.startswith("/v1/"):
            expected = {"writeKeyBasic"}
        elif method == "POST" and path in ("/api/analytics/collect", "/api/analytics/events", "/api/analytics/metrics"):
            expected = {"apiKey"}
        elif path.startswith("/api/analytics/"):
            expected = {"apiKey", "bearerAuth"}  # a secret key, or a signed-in owner with app_id
        elif path.startswith("/api/") and (method, path) not in PUBLIC:
            expected = {"bearerAuth"}
        else:
            expected = set()
        assert names == expected, (route, names)
    # Requirements are alternatives (any one of them), never all at once.
    assert all(len(req) == 1 for _, _, op in operations(document) for req in op.get("security", []))


def test_error_answers_are_documented_with_the_detail_schema(documents) -> None:
    document = documents["stack"]
    error_ref = "#/components/schemas/ErrorBody"
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]
    for method, path, op in operations(document):
        responses = op["responses"]
        for status, response in responses.items():
            if status.startswith("4") or (status == "503" and path != "/readyz"):  # /readyz: which check failed
                assert response["content"]["application/json"]["schema"] == {"$ref": error_ref}, (method, path, status)
            if status in ("429", "503"):
                assert "Retry-After" in response["headers"], (method, path, status)
        if op.get("security"):
            assert "401" in responses, (method, path)
        if path.startswith(("/api/", "/v1/")):
            assert "503" in responses and "422" in responses, (method, path)
    ingest = document["paths"]["/api/analytics/collect"]["post"]["responses"]
    assert {"400", "401", "413", "415", "422", "429", "503"} <= set(ingest)
    assert {"409", "400"} <= set(document["paths"]["/api/user/signup"]["post"]["responses"])
    assert "429" in document["paths"]["/api/user/login"]["post"]["responses"]


def test_the_readme_api_section_names_every_route(documents) -> None:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("\n## API\n"):text.index("\n### Email delivery\n")]
    prefixes = ("/api/analytics/", "/api/user/", "/api/auth/", "/api/email/", "/v1/")
    missing = []
    for path in documents["stack"]["paths"]:
        short = next((path.removeprefix(p) for p in prefixes if path.startswith(p)), path)
        pattern = re.escape(short).replace(r"\{", "{").replace(r"\}", "}")
        if not re.search(re.sub(r"\{\w+\}", r"\\{\\w+\\}", pattern), section):
            missing.append(path)
    assert not missing, missing


async def test_the_host_root_takes_a_browser_to_the_dashboard() -> None:
    app = stack().app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analytics.test") as http:
        r = await http.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/dashboard"
        assert (await http.get("/", follow_redirects=True)).headers["content-type"].startswith("text/html")


def test_every_api_body_in_and_out_has_a_schema_with_an_example(documents) -> None:
    document = documents["stack"]
    schemas = document["components"]["schemas"]

    def has_example(media: dict[str, Any]) -> bool:
        if "example" in media or "examples" in media:
            return True
        schema = media.get("schema", {})
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref", "")  # an object, or a list of them
        return bool(ref) and "examples" in schemas[ref.rsplit("/", 1)[1]]

    bare = []
    for method, path, op in operations(document):
        if not path.startswith(("/api/", "/v1/")):
            continue
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            if body.get("schema") in (None, {}, {"type": "object"}) or not has_example(body):
                bare.append(f"{method} {path} request")
            if "400" not in op["responses"]:  # a body that is not JSON
                bare.append(f"{method} {path} 400")
        for status, response in op["responses"].items():
            if not status.startswith("2") or status == "204":
                continue
            media = response.get("content", {})
            answer = media.get("application/json") or media.get("application/x-ndjson")
            if answer is None or answer.get("schema") in (None, {}) or not has_example(answer):
                bare.append(f"{method} {path} {status}")
    assert not bare, bare
