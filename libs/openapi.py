"""What every service's OpenAPI document shares: the error answers (`{"detail": ...}`, with `Retry-After`
where waiting helps), and the pages that read the document, Swagger UI at `/docs` and ReDoc at `/redoc`,
served from the files the fastapi-offline package ships (no CDN: they work on a network without one).

Security schemes are the credentials' own dependencies (libs/access.py): FastAPI lists each in
`components.securitySchemes` and names, per operation, the ones it accepts.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.http import ApiError

DOCS_ASSETS = "/docs/assets"
_ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


class ErrorBody(BaseModel):
    """Every error answer: what went wrong and what to do next."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "invalid, revoked or expired API key"},
        {"detail": [{"loc": ["query", "limit"], "msg": "Input should be less than or equal to 1000", "type": "less_than_equal"}]},
    ]})

    detail: str | list[dict[str, Any]] = Field(
        description="a sentence saying what to do next, or (invalid input) one entry per problem, each with "
                    "`loc` (where), `msg` and `type`")


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before sending again", "schema": {"type": "integer"}}}
ERRORS = {
    400: "the body is not what this route reads (not JSON, empty, wrongly encoded), or a password too weak",
    401: "credentials missing, invalid, revoked or expired",
    403: "these credentials may not do this (another user's app, a write key reading)",
    404: "no such resource (or not yours)",
    409: "it exists already, or a limit on how many is reached",
    413: "the body, or the number of events in it, is over the limit",
    415: "a Content-Encoding other than gzip, deflate or none",
    422: "a parameter or field is invalid",
    410: "it was there, and is no more: a one-time link already used, or expired",
    429: "too many requests; wait `Retry-After` seconds",
    503: "a backing service is down or this one is stopping; wait `Retry-After` seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route or router that may answer these error statuses."""
    return {code: {"model": ErrorBody, "description": ERRORS[code], **({"headers": RETRY_AFTER} if code in (429, 503) else {})}
            for code in codes}


@functools.cache
def _asset(name: str) -> bytes:
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


def document_body_errors(app: FastAPI) -> None:
    """Every operation that reads a JSON body may answer 400 (a body that is not JSON): FastAPI's own
    parsing says so before any route runs, so the document says so for each of them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for item in document.get("paths", {}).values():
                for operation in item.values():
                    if "requestBody" in operation and "400" not in operation["responses"]:
                        operation["responses"]["400"] = {
                            "description": ERRORS[400],
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI, with the Authorize button for every security scheme) and `/redoc`, loading
    only files served here. The app is made with `docs_url=None, redoc_url=None`."""
    document_body_errors(app)
    title = app.title
    spec = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=spec, title=f"{title} - Swagger UI", oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "displayOperationId": True, "validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=spec, title=f"{title} - ReDoc", redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        media_type = _ASSET_TYPES.get(name)
        if media_type is None:
            raise ApiError(404, "no such docs file; the pages are /docs and /redoc")
        return Response(_asset(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
