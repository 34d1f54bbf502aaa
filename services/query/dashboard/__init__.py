"""The dashboard at `/dashboard`: a static single-page app (plain JS modules, no build step) that reads
only the public auth and query APIs. Part of the query service, which serves it."""

from __future__ import annotations

import functools
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse

from libs.http import ApiError
from libs.openapi import errors

ASSETS = FilePath(__file__).parent / "assets"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html",
         ".txt": "text/plain", ".png": "image/png", ".ico": "image/x-icon"}
# The page may only load its own files and talk to its own origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
PAGE_HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}

router = APIRouter(tags=["dashboard"], include_in_schema=True)


@functools.cache
def _files() -> dict[str, tuple[bytes, str]]:
    """The assets, read once."""
    return {p.name: (p.read_bytes(), TYPES.get(p.suffix, "application/octet-stream"))
            for p in ASSETS.iterdir() if p.is_file() and p.suffix in TYPES}


@router.get("/dashboard", operation_id="getDashboard", summary="The dashboard (single-page app)", response_class=Response)
async def dashboard() -> Response:
    return Response(_files()["index.html"][0], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/dashboard/share/{token}", operation_id="getSharedDashboard", response_class=Response, responses=errors(422),
            summary="The read-only dashboard of a shared link (stats only, no account)")
async def shared_dashboard(token: Annotated[str, Path(max_length=200)]) -> Response:
    # The token stays in the page's address: the page reads it and sends it to the stats routes only.
    return Response(_files()["share.html"][0], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/", include_in_schema=False)  # a browser pointed at the host lands on the dashboard
async def home() -> Response:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard/", include_in_schema=False)
async def dashboard_slash(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/dashboard/assets/{name}", operation_id="getDashboardAsset", responses=errors(404, 422),
            summary="The dashboard's scripts and styles", response_class=Response)
async def asset(name: str) -> Response:
    found = _files().get(name) if not name.endswith(".html") else None
    if found is None:
        raise ApiError(404, "no such dashboard file")
    body, media_type = found
    return Response(body, media_type=media_type + ("; charset=utf-8" if media_type.startswith("text/") else ""),
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
