"""The dashboard at `/dashboard`: a static single-page app (plain JS modules, no build step) that reads
only the public auth and query APIs. Mounted by the query service (`dashboard_router()`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from libs.http import ApiError

ASSETS = Path(__file__).parent / "assets"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html",
         ".txt": "text/plain", ".png": "image/png", ".ico": "image/x-icon"}
# The page may only load its own files and talk to its own origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _files() -> dict[str, tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), TYPES.get(p.suffix, "application/octet-stream"))
            for p in ASSETS.iterdir() if p.is_file() and p.suffix in TYPES}


def dashboard_router() -> APIRouter:
    router = APIRouter(tags=["dashboard"], include_in_schema=True)
    files = _files()
    index = files.pop("index.html")[0]
    page_headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}

    @router.get("/dashboard", summary="The dashboard (single-page app)", response_class=Response)
    async def dashboard() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=page_headers)

    @router.get("/dashboard/", include_in_schema=False)
    async def dashboard_slash(request: Request) -> Response:
        return RedirectResponse("/dashboard", status_code=308)

    @router.get("/dashboard/assets/{name}", summary="The dashboard's scripts and styles", response_class=Response)
    async def asset(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise ApiError(404, "no such dashboard file")
        body, media_type = found
        return Response(body, media_type=media_type + ("; charset=utf-8" if media_type.startswith("text/") else ""),
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    return router
